"""Choose the recovery settings on the DEV domains only.

    python bench/dev_recover.py --sparsity 0.2 --self-ids ids.pt --variants none,outputs,all

Prunes the model once per sparsity with the default settings (calibration: the
first --prune-samples rows of --self-ids), then recovers that checkpoint with
each variant (calibration: the first --recover-samples rows; the last 32 of them
held out) and scores every checkpoint by perplexity on the dev domains
(``olica_prune.eval.suite.DEV_DOMAINS``), as ``bench/dev_sweep.py`` does. The report
domains are never loaded. Rows (with the commit) go to --out after each one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import commit_hash  # noqa: E402
from olica_prune.eval import suite  # noqa: E402
from olica_prune.io.data import eval_chunks  # noqa: E402
from olica_prune.eval.evaluate import geometric_mean, perplexity  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402
from olica_prune.method.pruner import PruneConfig, prune  # noqa: E402
from olica_prune.method.recover import RecoverConfig, recover  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402

# name -> RecoverConfig overrides ("none": the retraining-free prune alone)
VARIANTS: dict[str, dict | None] = {
    "none": None,
    "norms-cal": dict(params="norms+calibration", lr=1e-3),
    "outputs": dict(params="norms+calibration+down+o", lr=1e-4),
    "outputs-lr3e-4": dict(params="norms+calibration+down+o", lr=3e-4),
    "ffn": dict(params="norms+ffn", lr=1e-4),
    "all": dict(params="all", lr=5e-5),
    "all-lr2e-5": dict(params="all", lr=2e-5),
    "all-1024": dict(params="all", lr=5e-5, num_samples=1024),
    "all-hid1": dict(params="all", lr=5e-5, hidden_weight=1.0),
    "all-b4": dict(params="all", lr=5e-5, batch_size=4),
    "all-lr1e-4": dict(params="all", lr=1e-4),
    "all-2ep": dict(params="all", lr=5e-5, epochs=2.0),
}


def dev_score(path: Path, chunks: dict, dense_ppl: dict) -> dict:
    model = load_causal_lm(path)
    with torch.no_grad():
        ppl = {d: perplexity(model, c, progress=False) for d, c in chunks.items()}
    return {"ppl": ppl, "geomean_ratio_to_dense": geometric_mean([ppl[d] / dense_ppl[d] for d in ppl])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.2])
    ap.add_argument("--self-ids", required=True, help="a .pt file of self-sampled ids (bench/sample_self_ids.py)")
    ap.add_argument("--prune-samples", type=int, default=128)
    ap.add_argument("--recover-samples", type=int, default=1024)
    ap.add_argument("--variants", default="none,outputs")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-chunks", type=int, default=60)
    ap.add_argument("--keep", default=None, help="keep the checkpoints in this directory")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dev" / "recover.json"))
    ap.add_argument("--merge", action="store_true")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    src = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(str(src))
    ids = torch.load(args.self_ids)
    if ids.shape[0] < max(args.prune_samples, args.recover_samples):
        raise SystemExit(f"{args.self_ids} holds {ids.shape[0]} rows, fewer than asked for")
    chunks = {d: eval_chunks(tok, str(suite.text_dir() / f"{d}.txt"), seq_len=128, max_chunks=args.max_chunks)
              for d in suite.DEV_DOMAINS}
    out = Path(args.out)
    result = {"commit": commit_hash(), "model": args.model, "max_chunks": args.max_chunks,
              "dev_domains": list(suite.DEV_DOMAINS), "self_ids": str(args.self_ids), "rows": []}
    if args.merge and out.is_file():
        result["rows"] = json.loads(out.read_text())["rows"]
    dense = load_causal_lm(src)
    with torch.no_grad():
        result["dense"] = {d: perplexity(dense, c, progress=False) for d, c in chunks.items()}
    del dense
    work = Path(args.keep or "/tmp/olica-dev-recover")
    for s in args.sparsity:
        pruned = work / f"{args.model}-{round(s * 100)}"
        if not pruned.is_dir():
            prune(str(src), output=pruned, progress=False, calibration_ids=ids[:args.prune_samples],
                  config=PruneConfig(sparsity=s))
        for name in args.variants.split(","):
            row = {"variant": name, "sparsity": s, "commit": commit_hash()}
            path = pruned
            if VARIANTS[name] is not None:
                path = work / f"{pruned.name}-{name}"
                cfg = RecoverConfig(**{"epochs": args.epochs, "num_samples": args.recover_samples, **VARIANTS[name]})
                t = time.perf_counter()
                section = recover(pruned, output=path, reference=str(src), config=cfg, overwrite=True,
                                  calibration_ids=ids[:cfg.num_samples], progress=False)
                row.update(recover_s=round(time.perf_counter() - t, 1), config=VARIANTS[name], epochs=cfg.epochs,
                           recover_samples=cfg.num_samples,
                           applied=section["applied"], heldout_kl=section["heldout_kl"],
                           best_step=section["best_step"], steps=section["steps"])
            row.update(dev_score(path, chunks, result["dense"]))
            print(json.dumps({k: row[k] for k in row if k not in ("ppl",)}), flush=True)
            result["rows"].append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".tmp").write_text(json.dumps(result, indent=1))
            out.with_suffix(".tmp").replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
