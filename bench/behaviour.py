"""Behaviour of dense vs pruned checkpoints, one run: chat exact-match and zero-shot MC.

    python bench/behaviour.py dense=smollm2-135m wanda-sp=DIR olica=DIR [--enforce-eager]

Each NAME=MODEL is loaded in vLLM in turn (the Olica plugin registered), scored
on the package's hand-written sets (``olica_prune.eval.behaviour``: 150 chat
prompts with short checkable answers through the chat template, greedy; 105
multiple-choice items by choice log-likelihood from prompt logprobs) and
released before the next. Results (summary per model and per category, with
the commit) go to ``bench/results/behaviour.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import commit_hash  # noqa: E402
from olica_prune.eval import behaviour  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL (an alias, HF dir or Olica checkpoint)")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "behaviour.json"))
    args = ap.parse_args(argv)
    chat_items, mc_items = behaviour.load_chat_set(), behaviour.load_mc_set()
    result = {"commit": commit_hash(), "enforce_eager": args.enforce_eager, "dtype": "bfloat16",
              "chat_items": len(chat_items), "mc_items": len(mc_items), "models": {}}
    for spec in args.models:
        name, _, model = spec.partition("=")
        t = time.perf_counter()
        llm = behaviour.load_llm(resolve_model(model), enforce_eager=args.enforce_eager)
        load_s = time.perf_counter() - t
        res = behaviour.evaluate_llm(llm, chat_items, mc_items)
        behaviour.shutdown_llm(llm)
        summary = {"model": model, "load_seconds": round(load_s, 1),
                   "chat_exact_match": res["chat"]["score"], "chat_by_category": res["chat"]["by_category"],
                   "mc_acc": res["mc"]["acc"], "mc_acc_norm": res["mc"]["acc_norm"],
                   "mc_by_category": res["mc"].get("by_category"),
                   "chat_responses": {i["id"]: i["response"] for i in res["chat"]["items"]}}
        result["models"][name] = summary
        print(f"{name}: chat exact-match {summary['chat_exact_match']:.3f}, MC acc {summary['mc_acc']:.3f}, "
              f"acc_norm {summary['mc_acc_norm']:.3f}", flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
