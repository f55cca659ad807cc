"""Sample a model's own calibration text once and save the ids, so that several
runs (or another machine) read the same windows: ``--self-ids FILE`` of
``bench/quality.py`` and ``bench/dev_sweep.py``.

    python bench/sample_self_ids.py qwen2.5-coder-0.5b --num-samples 512 --device cuda --out ids.pt

The first n windows of a longer stream are the n-window set (the stream is cut
in order), so one 512-window file serves runs at 128, 256 and 512 samples.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from olica_prune.io.selfcal import choose_engine, self_calibration  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model directory, .gguf file or alias")
    ap.add_argument("--num-samples", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (sampled in bfloat16 there)")
    ap.add_argument("--engine", default="auto", choices=["auto", "vllm", "transformers"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", default=None, help="also record the timing (with the commit) in this JSON file")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    src = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(str(src))
    t = time.perf_counter()
    ids = self_calibration(src, tok, num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed,
                           device=args.device, progress=True, use_cache=False, engine=args.engine)
    seconds = time.perf_counter() - t
    print(f"sampled {tuple(ids.shape)} in {seconds:.1f} s", flush=True)
    if args.json:
        import json
        import os

        from bench.common import commit_hash

        record = {"commit": commit_hash(), "model": args.model, "engine": choose_engine(args.engine),
                  "device": args.device, "shape": list(ids.shape), "seconds": round(seconds, 1),
                  "tokens_per_s": round(ids.numel() / seconds, 1), "cpu_count": os.cpu_count()}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(ids, tmp)  # then renamed: an interrupted save leaves no half-written --out
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
