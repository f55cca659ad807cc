"""What the pruned V widths could save in vLLM's KV cache, per checkpoint.

    python bench/kv_cache.py runs/smol-20-kl runs/qwen-20-kl

For each checkpoint (dense or Olica), K+V bytes per token summed over layers
(bf16 unless ``--dtype-bytes``):

- ``allocated``: what the plugin makes vLLM allocate today (V zero-padded to
  the head size, so the dense size);
- ``needed_with_pruned_v``: what the pruned V widths alone would need;
- ``vllm_with_own_v_head_size``: what vLLM's KV cache manager would allocate if
  every layer declared its own V head size (the GPU "diffkv" attention
  backends take one). Computed twice: by ``serving.kv_bytes_per_token``'s
  arithmetic and by vLLM's own ``unify_kv_cache_spec_page_size`` on the
  per-layer specs; the two must agree.

No model is loaded and nothing is timed: this reads each ``config.json``.
Writes ``bench/results/kv_cache.json`` (with the commit).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import commit_hash  # noqa: E402
from serving import kv_bytes_per_token, v_head_dims  # noqa: E402

from olica_prune.contract import ModelDims  # noqa: E402


def vllm_unified_bytes(config: dict, dtype_bytes: int) -> float:
    """K+V bytes per token as vLLM's KV cache manager lays out per-layer specs
    with the checkpoint's own V widths."""
    import torch
    from vllm.v1.core.kv_cache_utils import unify_kv_cache_spec_page_size
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    dtype = {2: torch.bfloat16, 4: torch.float32}[dtype_bytes]
    dims = ModelDims.from_config(config)
    specs = {f"layers.{i}": FullAttentionSpec(block_size=16, num_kv_heads=dims.num_kv_heads,
                                              head_size=dims.head_dim, head_size_v=w, dtype=dtype)
             for i, w in enumerate(v_head_dims(config))}
    return sum(s.page_size_bytes / s.block_size for s in unify_kv_cache_spec_page_size(specs).values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--dtype-bytes", type=int, default=2, choices=[2, 4])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "kv_cache.json"))
    args = ap.parse_args(argv)
    rows = {}
    for ckpt in args.checkpoints:
        path = Path(ckpt)
        if not (path / "config.json").is_file():
            print(f"error: {ckpt}: no config.json", file=sys.stderr)
            return 2
        config = json.loads((path / "config.json").read_text())
        row = kv_bytes_per_token(config, args.dtype_bytes)
        row["vllm_unify_check"] = vllm_unified_bytes(config, args.dtype_bytes)
        row["agrees_with_vllm"] = row["vllm_unify_check"] == row["vllm_with_own_v_head_size"]
        if "olica" in config:
            widths = v_head_dims(config)
            row["v_head_dim_min_max"] = [min(widths), max(widths)]
        rows[path.name] = row
        print(f"{path.name:16s} allocated {row['allocated']:>7,} B/token  pruned V needs "
              f"{row['needed_with_pruned_v']:>7,} ({row['possible_saving']:.1%} less)  vLLM with own V head size "
              f"{row['vllm_with_own_v_head_size']:>7,} ({row['vllm_saving']:.1%} less; vLLM's unify agrees: "
              f"{row['agrees_with_vllm']})")
    result = {"commit": commit_hash(), "dtype_bytes": args.dtype_bytes, "checkpoints": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(r["agrees_with_vllm"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
