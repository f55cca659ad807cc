"""Self-calibration sampling with vLLM, run as a child process by ``selfcal``.

    python -m olica_prune.tools.selfcal_vllm MODEL_DIR --out ids.pt --num-samples 128 --seq-len 128 --seed 0

The prompts, the deduplication and the windowing are ``selfcal.sample_stream``'s,
so both engines draw from one distribution: temperature 1, no top-p/top-k, up to
EOS or ``2 * seq_len`` new tokens; ``--seed`` seeds the engine.

A child process because vLLM starts engine processes, sets up its own threads
and holds its KV cache until exit: the pruner gets the machine back whole.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _engine(model_dir: Path, *, tokenizer: str | None, seq_len: int, seed: int):
    from vllm import LLM

    # bfloat16 on the CPU too: vLLM's CPU kernels run it faster than float32 here (SmolLM2,
    # 128 requests x 128 tokens, eager: 38 s against 66 s). Eager mode: one batch of a few
    # hundred requests does not repay the ~80 s of compilation.
    return LLM(model=str(model_dir), tokenizer=tokenizer, dtype="bfloat16", enforce_eager=True, max_model_len=4 * seq_len + 256,
               seed=seed, max_num_seqs=256, enable_prefix_caching=False)


def make_sampler(llm, *, seq_len: int):
    """A ``selfcal.Sampler`` over a ``vllm.LLM``: continuations up to (not including) EOS."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # One seed for the engine (``LLM(seed=...)``), not one per request: vLLM 0.32's CPU
    # runner fails on per-request generators (``Generator.get_offset`` in its bookkeeping).
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=2 * seq_len)

    def sampler(prompts: list[list[int]]) -> list[list[int]]:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        # vLLM stops at EOS and leaves it in the output; the stream adds its own separator
        eos = llm.get_tokenizer().eos_token_id
        out = []
        for o in outputs:
            new = list(o.outputs[0].token_ids)
            out.append(new[: new.index(eos)] if eos in new else new)
        return out

    return sampler


def main(argv: list[str] | None = None) -> int:
    from ..io.selfcal import sample_stream

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    model_dir = Path(args.model_dir)
    llm = _engine(model_dir, tokenizer=args.tokenizer, seq_len=args.seq_len, seed=args.seed)
    ids = sample_stream(make_sampler(llm, seq_len=args.seq_len), llm.get_tokenizer(),
                        num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed, progress=not args.quiet)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(ids, tmp)
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
