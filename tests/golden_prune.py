"""Per-layer results of small prunes, recorded before the pruner's speed work and
compared by tests/test_prune_golden.py: speed changes must not change what is pruned.

    python tests/golden_prune.py      # rewrite tests/data/prune_golden.json (only when the METHOD changes)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from olica_prune.contract import LayerSpec  # noqa: E402
from olica_prune.method.pruner import PruneConfig, prune  # noqa: E402
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "prune_golden.json"
MODELS = {
    "llama-gqa": dict(family="llama", num_heads=4, num_kv_heads=2),
    "qwen2-bias": dict(family="qwen2", num_heads=6, num_kv_heads=2, head_dim=8),
    "mistral-tied": dict(family="mistral", num_heads=4, num_kv_heads=1, tie_word_embeddings=True),
}
# allocation pinned: the recorded runs predate the kl default, and what they guard is
# that speed work leaves a given plan's prune unchanged.
BASE = dict(allocation="uniform", sparsity=0.25, align=4, v_align=2, calibration_layers=2, calibration_rank=8, batch_size=8)
CONFIGS = {
    "olica": {},
    "olica-pruned-ranking": dict(calibration_ranking="pruned"),
    "olica-adaptive": dict(allocation="adaptive"),
    "paper": dict(preset="paper"),
    "wanda-sp": dict(method="wanda-sp"),
    # the default allocation; 12 probe sequences span one and a half batches of 8
    "olica-kl": dict(allocation="kl", kl_samples=12),
}


def ids() -> torch.Tensor:
    return torch.randint(0, 256, (32, 48), generator=torch.Generator().manual_seed(0))


# The width fields of a layer's plan, from the contract (not a hand-written list).
WIDTHS = tuple(f.name for f in dataclasses.fields(LayerSpec))

def run(model: str, config: str, workdir: Path) -> dict:
    src = workdir / f"src-{model}"
    if not src.exists():
        cfg = tiny_config(num_layers=8, intermediate_size=128, **MODELS[model])
        save_model_checkpoint(random_dense_model(cfg, seed=1), src)
    rep = prune(str(src), output=workdir / f"out-{model}-{config}", overwrite=True, progress=False,
                calibration_ids=ids(), config=PruneConfig(**{**BASE, **CONFIGS[config]}))
    return {"achieved": rep["sparsity"]["achieved"],
            "layers": [{k: r[k] for k in WIDTHS} | {k: r[k] for k in ("attn_rel_error", "ffn_rel_error",
                                                                    "calibration_explained") if k in r}
                       for r in rep["layers"]]}


def main() -> None:
    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            for config in CONFIGS:
                out[f"{model}/{config}"] = run(model, config, Path(tmp))
                print(model, config, out[f"{model}/{config}"]["achieved"], flush=True)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
