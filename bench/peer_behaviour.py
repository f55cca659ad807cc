"""Chat exact-match and multiple choice of Olica beside its retraining-free peers, in one run.

    python bench/peer_behaviour.py --model smollm2-135m --sparsities 0.1 0.2 0.3 \
        --methods olica flap slicegpt --out bench/results/behaviour_peers.json

The peers (``bench/peers``) are in-memory transformers models that vLLM cannot load,
so every row here, dense and Olica included, is scored by the transformers scorers of
``olica_prune.eval.behaviour`` (fp32, greedy, one prompt at a time) on the sets
``bench/behaviour.py`` uses; the numbers are comparable with each other, not
digit for digit with vLLM's bf16 rows. Calibration: the self-sampled windows
``bench/quality.py`` gives every method (``--num-samples`` x 128, seed 0). Olica is
the retraining-free prune (``--no-recover``), as the peers are. Nothing is chosen here.
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

from bench.common import commit_hash  # noqa: E402
from bench.peers import PEERS  # noqa: E402
from olica_prune.eval import behaviour  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402
from olica_prune.method.pruner import PruneConfig, calibration_mix, prune  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402

METHODS = ("olica", *PEERS)


def build(method: str, src: Path, sparsity: float, ids: torch.Tensor, work: Path):
    """(model, achieved sparsity) of ``method`` at ``sparsity``, on the calibration ``ids``."""
    if method in PEERS:
        model, rep = PEERS[method](src, sparsity=sparsity, calibration_ids=ids)
        return model.float().eval(), rep["sparsity"]["achieved"]
    out = work / f"{method}-{sparsity}"
    rep = prune(str(src), output=out, overwrite=True, calibration_ids=ids, progress=False,
                config=PruneConfig(sparsity=sparsity))
    return load_causal_lm(out, dtype=torch.float32).eval(), rep["sparsity"]["achieved"]


def score(model, tokenizer, chat_items, mc_items) -> dict:
    chat = behaviour.chat_exact_match_hf(model, tokenizer, chat_items)
    mc = behaviour.mc_accuracy_hf(model, tokenizer, mc_items)
    return {"chat_exact_match": chat["score"], "chat_by_category": chat["by_category"],
            "mc_acc": mc["acc"], "mc_acc_norm": mc["acc_norm"], "mc_by_category": mc["by_category"],
            "chat_responses": {i["id"]: i["response"] for i in chat["items"]}}


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)  # a run killed mid-write leaves the previous file whole


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "behaviour_peers.json"))
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    torch.set_grad_enabled(False)
    src = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(str(src))
    ids = calibration_mix(src, tok, "self", num_samples=args.num_samples, seq_len=128, seed=0, device="cpu",
                          progress=False)
    chat_items, mc_items = behaviour.load_chat_set(), behaviour.load_mc_set()
    result = {"commit": commit_hash(), "model": args.model, "engine": "transformers", "dtype": "float32",
              "calibration": f"self, {args.num_samples} x 128 tokens, seed 0", "chat_items": len(chat_items),
              "mc_items": len(mc_items), "rows": []}
    work, out = Path(tempfile.mkdtemp(prefix="olica-peer-behaviour-")), Path(args.out)
    try:
        plan = [("dense", 0.0)] + [(m, s) for s in args.sparsities for m in args.methods]
        for method, sparsity in plan:
            t = time.perf_counter()
            if method == "dense":
                model, achieved = load_causal_lm(src, dtype=torch.float32).eval(), 0.0
            else:
                model, achieved = build(method, src, sparsity, ids, work)
            row = {"method": method, "sparsity": sparsity, "achieved": achieved,
                   **score(model, tok, chat_items, mc_items), "seconds": round(time.perf_counter() - t, 1)}
            del model
            result["rows"].append(row)
            print(f"{method} {sparsity:.0%}: chat {row['chat_exact_match']:.3f}, MC acc {row['mc_acc']:.3f}, "
                  f"acc_norm {row['mc_acc_norm']:.3f}", flush=True)
            save(result, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
