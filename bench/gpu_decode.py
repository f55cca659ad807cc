"""Prefill and decode speed in transformers (no vLLM): a dense model beside its Olica prune.

    python bench/gpu_decode.py --model random_7b --device cuda --out bench/results/gpu_decode.json
    python bench/gpu_decode.py --model tiny --device cpu --out /tmp/decode.json   # the smoke size the tests run

For a GPU machine, which has torch and transformers but not vLLM. The dense model is a
random source of the named shape (``bench/prune_cost.py``'s shapes: ``random_7b`` is
Llama-2-7B's) and the Olica model its default prune at ``--sparsity`` from random
calibration ids: speed depends on the shapes, not on the weights. Per model:

* **prefill**, the Olica paper's speed protocol: one forward of ``--prefill-batch`` (2)
  sequences of ``--prefill-len`` tokens, the median of ``--repeats`` after two warm-ups;
* **decode**: ``generate`` with a static KV cache (``cache_implementation="static"``),
  greedy, ``--new-tokens`` after a ``--prompt-len`` prompt, at each of
  ``--batch-sizes``; with ``--compile`` (the default on CUDA) generate's own
  ``torch.compile`` of the forward (mode reduce-overhead, CUDA graphs), compiled in an
  untimed warm-up run of the same shapes. tokens/s = batch x new tokens / seconds.

The result records the device name, dtype, versions and the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import commit_hash  # noqa: E402
from bench.prune_cost import SHAPES, _source  # noqa: E402
from olica_prune.method.pruner import PruneConfig, prune  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prefill_s(model, *, batch: int, length: int, repeats: int, device: str) -> float:
    """Median seconds of one forward over ``batch`` x ``length`` random tokens (after two warm-ups)."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    for i in range(repeats + 2):  # two warm-ups: the first forward of a process also pays one-off setup
        sync(device)
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def decode_tok_s(model, *, batch: int, prompt_len: int, new_tokens: int, compile: bool, device: str) -> float:
    """Generated tokens per second of greedy static-cache ``generate`` (a warm-up run first)."""
    from transformers.generation.configuration_utils import CompileConfig

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(1)).to(device)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, cache_implementation="static", pad_token_id=0,
                  disable_compile=not compile, compile_config=CompileConfig() if compile else None)
    model.generate(ids, **kwargs)  # compiles (when asked) and allocates the cache
    sync(device)
    t = time.perf_counter()
    out = model.generate(ids, **kwargs)
    sync(device)
    seconds = time.perf_counter() - t
    if out.shape != (batch, prompt_len + new_tokens):
        raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {(batch, prompt_len + new_tokens)}")
    return batch * new_tokens / seconds


def measure(model, args) -> dict:
    torch.compiler.reset()  # each model compiles on its own
    out = {"params": sum(p.numel() for p in model.parameters()),
           "prefill_s": prefill_s(model, batch=args.prefill_batch, length=args.prefill_len, repeats=args.repeats,
                                  device=args.device),
           "decode_tok_s": {}}
    for b in args.batch_sizes:
        out["decode_tok_s"][str(b)] = decode_tok_s(model, batch=b, prompt_len=args.prompt_len,
                                                   new_tokens=args.new_tokens, compile=args.compile,
                                                   device=args.device)
        print(f"  batch {b}: {out['decode_tok_s'][str(b)]:.1f} tok/s", file=sys.stderr, flush=True)
    return out


def environment(args) -> dict:
    import transformers

    cuda = args.device.startswith("cuda")
    return {"device": args.device, "device_name": torch.cuda.get_device_name(args.device) if cuda
            else platform.processor() or platform.machine(), "torch": torch.__version__,
            "transformers": transformers.__version__, "dtype": args.dtype, "compile": args.compile}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random_7b", choices=sorted(SHAPES))
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the decode forward (default: on CUDA only)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-batch", type=int, default=2)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.compile = cuda if args.compile is None else args.compile
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    work = Path(tempfile.mkdtemp(prefix="olica-decode-"))
    dtype = getattr(torch, args.dtype)
    result = {"commit": commit_hash(), "model": args.model, "sparsity": args.sparsity, **environment(args),
              "protocol": {k: getattr(args, k) for k in ("batch_sizes", "prompt_len", "new_tokens", "prefill_batch",
                                                         "prefill_len", "repeats")}, "models": {}}
    try:
        src, ids_file = _source(args.model, work)
        pruned = work / "olica"
        t = time.perf_counter()
        report = prune(src, output=pruned, calibration_ids=torch.load(ids_file), progress=False,
                       config=PruneConfig(sparsity=args.sparsity, device=args.device))
        result["prune_s"] = round(time.perf_counter() - t, 1)
        result["achieved"] = report["sparsity"]["achieved"]
        for name, path in (("dense", src), (f"olica-{round(args.sparsity * 100)}", pruned)):
            print(f"{name}:", file=sys.stderr, flush=True)
            model = load_causal_lm(path, dtype=dtype, device=args.device)
            result["models"][name] = measure(model, args)
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    d, o = result["models"]["dense"], result["models"][f"olica-{round(args.sparsity * 100)}"]
    result["speedup"] = {"prefill": d["prefill_s"] / o["prefill_s"],
                         **{b: o["decode_tok_s"][b] / d["decode_tok_s"][b] for b in d["decode_tok_s"]}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["speedup"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
