"""Is the linear-calibration branch worth its parameters? Olica with its
default branches against the same checkpoint widths with no branch.

The bench's olica-nocal row plans its own widths (the budget no longer pays
for the branches, so they shift by a few FFN chunks). Here the no-branch
model reuses the per-layer widths of the calibrated one, so only the branch
differs.

    python bench/calibration_same_widths.py [--sparsity 0.2] [--max-chunks 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olica_prune.contract import LayerSpec  # noqa: E402
from olica_prune.io.data import calibration_batches, eval_chunks  # noqa: E402
from olica_prune.eval.evaluate import perplexity  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402
from olica_prune.method.pruner import PruneConfig, prune  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--max-chunks", type=int, default=40, help="evaluation chunks per seq-len (as bench/quality.py)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from transformers import AutoTokenizer

    src = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(str(src))
    calib = calibration_batches(tok, "pydoc", num_samples=128, seq_len=128, seed=0)
    chunks = {n: eval_chunks(tok, "pydoc", seq_len=n, max_chunks=args.max_chunks) for n in (128, 512)}
    work = Path(tempfile.mkdtemp(prefix="olica-calwidths-"))
    try:
        prune(str(src), output=work / "branch", calibration_ids=calib, progress=False,
              config=PruneConfig(sparsity=args.sparsity))
        olica = json.loads((work / "branch" / "config.json").read_text())["olica"]
        specs = [dataclasses.replace(LayerSpec.from_dict(d, index=i), calibration_rank=0)
                 for i, d in enumerate(olica["layers"])]
        prune(str(src), output=work / "no-branch", calibration_ids=calib, progress=False,
              config=PruneConfig(sparsity=args.sparsity, calibration=False), layer_specs=specs)
        print(f"| {args.model} at {args.sparsity:.0%}, same widths | PPL@128 | PPL@512 |\n|---|---|---|")
        for name in ("branch", "no-branch"):
            model = load_causal_lm(work / name)
            ppl = [perplexity(model, chunks[n], progress=False) for n in (128, 512)]
            print(f"| {name} | {ppl[0]:.2f} | {ppl[1]:.2f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
