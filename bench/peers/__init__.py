"""Retraining-free structured-pruning peers of Olica, implemented for the benches
from their papers: FLAP (``flap``) and SliceGPT (``slicegpt``).

Each ``prune(src, sparsity=..., calibration_ids=..., device=...)`` loads the dense
model at ``src``, prunes it to ``sparsity`` of ALL its parameters (embeddings
included, tied ones once, as Olica counts, within 0.5 pp) on the given calibration
windows, and returns ``(model, report)``: an in-memory transformers model and a
report with ``sparsity`` (target, achieved, parameter counts) and ``peer`` (the
method's own settings and outcome). ``bench/quality.py --methods flap slicegpt``
scores them with the same evaluator and calibration windows as Olica.
"""

from . import flap, slicegpt

PEERS = {"flap": flap.prune, "slicegpt": slicegpt.prune}

__all__ = ["PEERS", "flap", "slicegpt"]
