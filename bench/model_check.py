"""Check that a model alias resolves, loads and answers: shape, size, greedy chat answers.

    python bench/model_check.py qwen2.5-coder-1.5b --out bench/results/model_check_qwen15.json

Resolves the alias (for a split GGUF: joins the installed parts, verifies the pinned
sha256, converts once into the cache), loads it in transformers (fp32) and asks the
first --questions items of the packaged chat set, greedily, through its chat
template, scored by exact match. The file records the dimensions, the parameter
count and the answers, with the commit.
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
from olica_prune.eval import behaviour  # noqa: E402
from olica_prune.io.sources import SPLIT_ALIASES, resolve_model  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    torch.set_grad_enabled(False)
    t = time.perf_counter()
    src = resolve_model(args.model)
    resolve_s = time.perf_counter() - t
    model, tok = load_causal_lm(src), AutoTokenizer.from_pretrained(str(src))
    cfg = model.config
    items = behaviour.subset(behaviour.load_chat_set(), args.questions)
    t = time.perf_counter()
    chat = behaviour.chat_exact_match_hf(model, tok, items)
    spec = SPLIT_ALIASES.get(args.model)
    result = {
        "commit": commit_hash(), "model": args.model, "directory": str(src),
        "sha256": spec.sha256 if spec else None, "resolve_s": round(resolve_s, 1),
        "dims": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
                 "kv_heads": cfg.num_key_value_heads, "intermediate": cfg.intermediate_size,
                 "vocab": cfg.vocab_size, "tied": bool(cfg.tie_word_embeddings)},
        "params": sum(p.numel() for p in model.parameters()),
        "chat_exact_match": chat["score"], "chat_n": chat["n"], "chat_s": round(time.perf_counter() - t, 1),
        "answers": [{"prompt": it["prompt"], "response": r["response"], "correct": r["correct"]}
                    for it, r in zip(items, chat["items"])],
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}))
    for a in result["answers"][:5]:
        print(f"  {a['prompt']!r} -> {a['response']!r} ({'ok' if a['correct'] else 'wrong'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
