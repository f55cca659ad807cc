"""Olica: structured pruning of LLaMA-family LLMs without retraining.

    from olica_prune import prune, PruneConfig
    prune("smollm2-135m", output="out/", config=PruneConfig(sparsity=0.2))

    from olica_prune import OlicaForCausalLM
    model = OlicaForCausalLM.from_pretrained("out/")
    # or, after ``import olica_prune``: transformers.AutoModelForCausalLM.from_pretrained("out/")
"""

__version__ = "0.1.0"

_LAZY = {
    "prune": "method.pruner",
    "PruneConfig": "method.pruner",
    "OlicaForCausalLM": "model.modeling",
    "load_causal_lm": "model.modeling",
    "OlicaSpec": "contract",
    "LayerSpec": "contract",
}


from .model import automodel as _automodel  # noqa: E402

_automodel.install()  # AutoModelForCausalLM loads Olica checkpoints (see olica_prune.model.automodel)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = list(_LAZY)
