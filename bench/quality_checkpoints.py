"""Report-domain quality of existing checkpoints, scored as ``bench/quality.py`` scores its prunes.

    python bench/quality_checkpoints.py dense=smollm2-135m olica=runs/smol-20 recovered=runs/smol-20-rec \
        --out bench/results/quality_recover.json

For checkpoints that take longer to make than a grid run should (recovered ones):
perplexity per REPORT domain (non-overlapping 128-token chunks, at most
--max-chunks per domain), their geometric mean and top-1 agreement with
--reference, the same numbers ``bench/quality.py`` writes. A recovered
checkpoint's row also carries what recovery fitted and on how many tokens.
Nothing is chosen here: the checkpoints' settings were chosen on the dev domains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import commit_hash  # noqa: E402
from bench.quality import evaluate  # noqa: E402
from olica_prune.eval import suite  # noqa: E402
from olica_prune.io.data import eval_chunks  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402


def _provenance(path: Path) -> dict:
    report = path / "olica_report.json"
    if not report.is_file():
        return {}
    rep = json.loads(report.read_text())
    out = {"sparsity": rep.get("sparsity"), "prune_config": rep.get("config")}
    if "recovery" in rep:
        rec = rep["recovery"]
        out["recovery"] = {k: rec[k] for k in ("applied", "config", "trained_parameters", "tokens", "heldout_kl",
                                                "calibration_kl", "best_step", "steps", "timings")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL (an alias, HF dir or Olica checkpoint)")
    ap.add_argument("--reference", default="smollm2-135m", help="the dense model (top-1 agreement)")
    ap.add_argument("--max-chunks", type=int, default=40)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    from transformers import AutoTokenizer

    ref = resolve_model(args.reference)
    tok = AutoTokenizer.from_pretrained(str(ref))
    chunks = {d: {128: eval_chunks(tok, str(suite.text_dir() / f"{d}.txt"), seq_len=128,
                                   max_chunks=args.max_chunks)} for d in suite.REPORT_DOMAINS}
    dense = load_causal_lm(ref)
    result = {"commit": commit_hash(), "reference": args.reference, "max_chunks": args.max_chunks, "seq_len": 128,
              "report_domains": list(suite.REPORT_DOMAINS), "rows": {}}
    for spec in args.models:
        name, _, model = spec.partition("=")
        path = resolve_model(model)
        row = evaluate(path, dense, chunks)
        row.update(model=model, **_provenance(Path(path)))
        result["rows"][name] = row
        print(f"{name}: geomean {row['geomean_128']:.2f}, agreement {row['agreement']:.3f}", flush=True)
        out = Path(args.out)
        out.with_suffix(".tmp").write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".tmp").replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
