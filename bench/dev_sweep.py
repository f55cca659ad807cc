"""Choose settings on the DEV domains only: prune with each variant, score each on dev.

    python bench/dev_sweep.py --sparsity 0.2 --calibration pydoc,self --variants all
    python bench/dev_sweep.py --list

Every variant is pruned from the same calibration windows (one set per
calibration source) and scored by perplexity on the dev domains of the
evaluation suite (``olica_prune.eval.suite.DEV_DOMAINS``, non-overlapping chunks);
the summary is the geometric mean over dev domains of PPL / dense PPL. The
report domains are never loaded here: what is chosen on this file's output is
then measured on them by ``bench/quality.py``. Results (with the commit) go to
``bench/results/dev_sweep.json`` (``--merge`` adds rows to it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from olica_prune.io.data import eval_chunks  # noqa: E402
from olica_prune.eval.evaluate import geometric_mean, perplexity  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402
from olica_prune.method.pruner import PruneConfig, calibration_mix, prune  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402
from bench.common import commit_hash  # noqa: E402
from olica_prune.eval import suite  # noqa: E402

# name -> PruneConfig overrides. "s" in a value means the target sparsity.
VARIANTS: dict[str, dict] = {
    "wanda-sp": dict(method="wanda-sp"),
    "olica-v0": dict(preset="olica", qk_sparsity=0.0, vo_sparsity=None, calibration=True, refit_down=True,
                     vo_stats="context", ffn_score="contribution"),  # the defaults before this sweep
    "paper": dict(preset="paper"),
    "paper-nocal": dict(preset="paper", calibration=False),
    "paper-ctx": dict(preset="paper", vo_stats="context"),
    "paper-contrib": dict(preset="paper", ffn_score="contribution"),
    "paper-refit": dict(preset="paper", refit_down=True),
    "paper-refit-r1e-1": dict(preset="paper", refit_down=True, ridge=1e-1),
    "paper-cal-r1e-1": dict(preset="paper", ridge=1e-1),
    "paper-noends": dict(preset="paper", spare_ends=False),
    "paper-qk1s": dict(preset="paper", qk_sparsity="1s"),
    "paper-qk3s": dict(preset="paper", qk_sparsity="3s"),
    "paper-vo0": dict(preset="paper", vo_sparsity=0.0),
    "paper-vo1s": dict(preset="paper", vo_sparsity="1s"),
    "paper-ctx-contrib": dict(preset="paper", vo_stats="context", ffn_score="contribution"),
    "paper-ctx-contrib-refit": dict(preset="paper", vo_stats="context", ffn_score="contribution", refit_down=True),
    "paper-wanda": dict(preset="paper", ffn_score="wanda"),
    "paper-exact": dict(preset="paper", ond="exact"),
    # second round (after the first sweep): V/O pruned less or not at all, context
    # statistics, exact OND, Q/K share, refit shrunk towards the original columns
    "vo0": dict(preset="paper", vo_sparsity=0.0),
    "vo0-qk1s": dict(preset="paper", vo_sparsity=0.0, qk_sparsity="1s"),
    "vo0-qk1.5s": dict(preset="paper", vo_sparsity=0.0, qk_sparsity="1.5s"),
    "vo0-qk0": dict(preset="paper", vo_sparsity=0.0, qk_sparsity=0.0),
    "vo0-nocal": dict(preset="paper", vo_sparsity=0.0, calibration=False),
    "vo0-refit1e-2": dict(preset="paper", vo_sparsity=0.0, refit_down=True, refit_ridge=1e-2),
    "vo0-refit1e-1": dict(preset="paper", vo_sparsity=0.0, refit_down=True, refit_ridge=1e-1),
    "vo0-refit1": dict(preset="paper", vo_sparsity=0.0, refit_down=True, refit_ridge=1.0),
    "ctx-exact": dict(preset="paper", vo_stats="context", ond="exact"),
    "ctx-exact-vo.25s": dict(preset="paper", vo_stats="context", ond="exact", vo_sparsity="0.25s"),
    "ctx-exact-nocal": dict(preset="paper", vo_stats="context", ond="exact", calibration=False),
    "ctx-vo.25s": dict(preset="paper", vo_stats="context", vo_sparsity="0.25s"),
    # the default preset, and the default with branches ranked on the pruned stream (no dense pass)
    "default": dict(preset="olica"),  # the olica preset as it is now (kl allocation since the fourth round)
    "uniform": dict(preset="olica", allocation="uniform"),  # the olica preset with uniform allocation
    "default-rank-pruned": dict(preset="olica", calibration_ranking="pruned"),
    # why wanda-sp collapses on Qwen2.5-Coder (a diagnosis, not a choice of defaults)
    "wanda-sp-vo0": dict(method="wanda-sp", vo_sparsity=0.0),  # V/O untouched, all of the budget from the FFN
    "wanda-sp-ends": dict(method="wanda-sp", spare_ends=True),  # first and last layer kept dense
    "wanda-sp-paper-ffn": dict(method="wanda-sp", ffn_score="paper"),
    # third round (CPU): the second round's winners combined
    "ctx-exact-refit1": dict(preset="paper", vo_stats="context", ond="exact", refit_down=True, refit_ridge=1.0),
    "ctx-exact-refit1-qk1.5s": dict(preset="paper", vo_stats="context", ond="exact", refit_down=True,
                                    refit_ridge=1.0, qk_sparsity="1.5s"),
    # fourth round: the defaults with the FFN budget spread over layers by measured output KL
    "kl-a0.25": dict(preset="olica", allocation="kl", kl_alpha=0.25),
    "kl-a0.5": dict(preset="olica", allocation="kl", kl_alpha=0.5),
    "kl-a1": dict(preset="olica", allocation="kl", kl_alpha=1.0),
    "kl-a1-noends": dict(preset="olica", allocation="kl", kl_alpha=1.0, spare_ends=False),
    "kl-a2": dict(preset="olica", allocation="kl", kl_alpha=2.0),
    "kl-a1-vo.25s": dict(preset="olica", allocation="kl", kl_alpha=1.0, vo_sparsity="0.25s"),
    "kl-a1-qk1s": dict(preset="olica", allocation="kl", kl_alpha=1.0, qk_sparsity="1s"),
    "kl-a1-nocal": dict(preset="olica", allocation="kl", kl_alpha=1.0, calibration=False),
    "kl-a3": dict(preset="olica", allocation="kl", kl_alpha=3.0),
    "kl-a4": dict(preset="olica", allocation="kl", kl_alpha=4.0),
    "kl-a2-vo.25s": dict(preset="olica", allocation="kl", kl_alpha=2.0, vo_sparsity="0.25s"),
    "kl-a2-s32": dict(preset="olica", allocation="kl", kl_alpha=2.0, kl_samples=32),
    "kl-a3-vo": dict(preset="olica", allocation="kl", kl_alpha=3.0, kl_vo=True),
    "kl-a2-vo": dict(preset="olica", allocation="kl", kl_alpha=2.0, kl_vo=True),
    "kl-a3-s4": dict(preset="olica", allocation="kl", kl_alpha=3.0, kl_samples=4),
    "kl-a1-vo": dict(preset="olica", allocation="kl", kl_alpha=1.0, kl_vo=True),
    "kl-a1-s4": dict(preset="olica", allocation="kl", kl_alpha=1.0, kl_samples=4),
}


def _resolve(overrides: dict, s: float) -> dict:
    out = {}
    for k, v in overrides.items():
        if isinstance(v, str) and v.endswith("s") and k.endswith("sparsity"):
            v = float(v[:-1] or 1) * s
        out[k] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.2])
    ap.add_argument("--calibration", default=PruneConfig(sparsity=0.2).dataset,
                    help="calibration sources, each pruned and scored on its own, separated by commas "
                         "(self,pydoc = two runs). Within one entry '+' mixes sources into one "
                         "calibration set, as `olica prune --calibration self+FILE` does. "
                         "Default: the pruner's default source")
    ap.add_argument("--self-ids", default=None, help="a .pt file of self-sampled calibration ids to use for 'self'")
    ap.add_argument("--variants", default="all")
    ap.add_argument("--num-samples", type=int, default=128, help="calibration windows of 128 tokens")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-chunks", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dev_sweep.json"))
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for k, v in VARIANTS.items():
            print(f"{k:28s} {v}")
        return 0
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_grad_enabled(False)
    from transformers import AutoTokenizer

    src = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(str(src))
    chunks = {d: eval_chunks(tok, str(suite.text_dir() / f"{d}.txt"), seq_len=args.seq_len,
                             max_chunks=args.max_chunks) for d in suite.DEV_DOMAINS}
    out_path = Path(args.out)
    result = {"commit": commit_hash(), "model": args.model, "device": device, "seq_len": args.seq_len,
              "max_chunks": args.max_chunks, "dev_domains": list(suite.DEV_DOMAINS), "rows": []}
    if args.merge and out_path.is_file():
        result["rows"] = json.loads(out_path.read_text())["rows"]
        result["commits"] = sorted(set(json.loads(out_path.read_text()).get("commits", [])) | {result["commit"]})

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out_path)

    dense = load_causal_lm(src, device=device)
    dense_ppl = {d: perplexity(dense, c, progress=False) for d, c in chunks.items()}
    del dense
    print("dense", {d: round(v, 2) for d, v in dense_ppl.items()}, flush=True)
    result["dense"] = dense_ppl
    work = Path(tempfile.mkdtemp(prefix="olica-sweep-"))
    try:
        for cal in args.calibration.split(","):
            ids = calibration_mix(src, tok, cal, num_samples=args.num_samples, seq_len=128, seed=0, device=device,
                                  progress=False, self_ids=torch.load(args.self_ids) if args.self_ids else None)
            for s in args.sparsity:
                for name in names:
                    overrides = _resolve(VARIANTS[name], s)
                    t = time.perf_counter()
                    try:
                        cfg = PruneConfig(sparsity=s, device=device, dataset=cal, num_samples=args.num_samples, **overrides)
                        path = work / f"{name}-{s}-{cal}"
                        prune(args.model, output=path, config=cfg, calibration_ids=ids, progress=False)
                    except Exception as exc:  # record and go on: one failing variant must not end a sweep
                        print(f"{name} s={s} cal={cal}: FAILED {type(exc).__name__}: {exc}", flush=True)
                        result["rows"].append({"variant": name, "sparsity": s, "calibration": cal,
                                               "error": f"{type(exc).__name__}: {exc}"})
                        save()
                        continue
                    prune_s = time.perf_counter() - t
                    model = load_causal_lm(path, device=device)
                    ppl = {d: perplexity(model, c, progress=False) for d, c in chunks.items()}
                    del model
                    shutil.rmtree(path, ignore_errors=True)
                    rel = geometric_mean([ppl[d] / dense_ppl[d] for d in ppl])
                    row = {"variant": name, "sparsity": s, "calibration": cal, "overrides": VARIANTS[name],
                           "ppl": ppl, "geomean_ratio_to_dense": rel, "prune_s": round(prune_s, 1),
                           "commit": result["commit"]}
                    result["rows"] = [r for r in result["rows"] if not (
                        r["variant"] == name and r["sparsity"] == s and r["calibration"] == cal)] + [row]
                    save()
                    print(f"{name:28s} s={s} cal={cal:6s} dev geomean ratio {rel:.3f}  "
                          + " ".join(f"{d} {v:.1f}" for d, v in ppl.items()) + f"  ({prune_s:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
