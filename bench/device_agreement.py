"""Does a prune on the GPU give the CPU's result? The same small random source
(Llama with GQA, and Qwen2 with Q/K/V biases) and the same calibration ids are
pruned with the default settings on two devices; the run compares

- the width plan (every layer's ranks and widths, which layers are calibrated):
  must be identical;
- every layer's reported relative output error (attention and FFN): the largest
  absolute difference, against the tolerance ``--tol``;
- the two written checkpoints, loaded on the CPU in transformers: relative L2
  difference of their logits and top-1 agreement on held-out random ids.

    python bench/device_agreement.py                        # cpu vs cuda
    python bench/device_agreement.py --devices cpu cpu      # a smoke test without a GPU

Results: bench/results/device_agreement.json, with the commit. Exit 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import commit_hash  # noqa: E402
from olica_prune.contract import LayerSpec  # noqa: E402
from olica_prune.eval.suite import _write_atomic  # noqa: E402

MODELS = {
    "llama-gqa": dict(family="llama", hidden_size=256, num_heads=8, num_kv_heads=2, head_dim=32,
                      intermediate_size=768, num_layers=8, vocab_size=512),
    "qwen2-bias": dict(family="qwen2", hidden_size=256, num_heads=8, num_kv_heads=2, head_dim=32,
                       intermediate_size=768, num_layers=8, vocab_size=512),
}


def _widths(report: dict) -> list[tuple]:
    """Every layer's LayerSpec fields, as the report records them."""
    keys = [f.name for f in dataclasses.fields(LayerSpec)]
    return [tuple(r[k] for k in keys) for r in report["layers"]]


def compare(name: str, shape: dict, devices: tuple[str, str], work: Path, *, sparsity: float) -> dict:
    import torch

    from olica_prune.model.modeling import OlicaForCausalLM
    from olica_prune.method.pruner import PruneConfig, prune
    from tests.tinymodels import random_checkpoint, tiny_config

    src = random_checkpoint(tiny_config(**shape), work / f"src-{name}", seed=1)
    ids = torch.randint(0, shape["vocab_size"], (64, 64), generator=torch.Generator().manual_seed(0))
    reports, outs, seconds = [], [], []
    for k, dev in enumerate(devices):
        out = work / f"out-{name}-{k}"
        t = time.perf_counter()
        reports.append(prune(str(src), output=out, overwrite=True, calibration_ids=ids, progress=False,
                             config=PruneConfig(sparsity=sparsity, device=dev)))
        seconds.append(round(time.perf_counter() - t, 2))
        outs.append(out)
    a, b = reports
    err_diff = max(abs(x[key] - y[key]) for x, y in zip(a["layers"], b["layers"])
                   for key in ("attn_rel_error", "ffn_rel_error"))
    test_ids = torch.randint(0, shape["vocab_size"], (8, 64), generator=torch.Generator().manual_seed(1))
    logits = []
    with torch.no_grad():
        for out in outs:
            model = OlicaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
            logits.append(model(test_ids).logits.double())
    rel = float((logits[0] - logits[1]).norm() / logits[0].norm())
    top1 = float((logits[0].argmax(-1) == logits[1].argmax(-1)).double().mean())
    return {
        "devices": list(devices),
        "device_reported": [a["device"], b["device"]],
        "prune_s": seconds,
        "widths_identical": _widths(a) == _widths(b),
        "calibration_layers": [a["calibration_layers"], b["calibration_layers"]],
        "max_layer_error_diff": err_diff,
        "layer_errors": [[(r["attn_rel_error"], r["ffn_rel_error"]) for r in rep["layers"]] for rep in reports],
        "logits_rel_diff": rel,
        "top1_agreement": top1,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", nargs=2, default=["cpu", "cuda"])
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="largest allowed absolute difference of a layer's relative error (default 1e-3)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "device_agreement.json"))
    args = ap.parse_args(argv)
    import torch

    result = {"commit": commit_hash(), "torch": torch.__version__, "sparsity": args.sparsity, "tol": args.tol,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "models": {}}
    ok = True
    with tempfile.TemporaryDirectory(prefix="olica-device-agreement-") as tmp:
        for name, shape in MODELS.items():
            row = compare(name, shape, tuple(args.devices), Path(tmp), sparsity=args.sparsity)
            row["pass"] = row["widths_identical"] and row["max_layer_error_diff"] <= args.tol
            ok &= row["pass"]
            result["models"][name] = row
            print(name, json.dumps({k: v for k, v in row.items() if k != "layer_errors"}), flush=True)
    _write_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
