"""``olica demo``: the product end to end on the bundled model.

1. prune SmolLM2-135M (the ``smollm2-135m`` alias) by 20 % into ``runs/``;
2. start stock ``vllm serve`` on the checkpoint, on loopback;
3. ask it a question through the official ``openai`` client and print the answer;
4. score the pruned and the dense model on the hand-written behaviour sets of
   ``olica_prune.eval.behaviour`` through the same server setup: chat exact-match
   (greedy, the chat API) and zero-shot multiple-choice accuracy (prompt
   logprobs of the completions API), so a user sees what pruning kept;
5. measure output tokens/s of the pruned and the dense model through the same
   server setup (concurrent requests, fixed lengths, ``ignore_eos``);
6. shut every server down, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time
from pathlib import Path

QUESTION = "What is the capital of France? Answer in one sentence."


def vllm_server(model_dir: str | Path, *, name: str, timeout: float = 600.0, enforce_eager: bool = False):
    """Stock ``vllm serve`` on loopback for the duration of a ``with`` block (see ``olica_serve.server``).

    vLLM's default mode (torch.compile + graph capture), as ``vllm serve`` gives users;
    ``enforce_eager`` starts faster (about 30 s instead of about 110 s on 2 CPU cores) and runs slower."""
    from olica_serve.server import VllmServer

    extra = ("--enforce-eager",) if enforce_eager else ()
    return VllmServer(model_dir, "--max-model-len", "2048", *extra, name=name, kv_cache_gib=2, timeout=timeout)


def served_throughput(base_url: str, model: str, *, requests: int, input_len: int, output_len: int) -> float:
    """Output tokens/s for ``requests`` concurrent completions of fixed length."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused")
    prompt = ("The quick brown fox jumps over the lazy dog. " * 64)[: input_len * 4]

    def one(_):
        r = client.completions.create(model=model, prompt=prompt, max_tokens=output_len, temperature=0.0,
                                      extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    one(0)  # warm-up
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        tokens = sum(pool.map(one, range(requests)))
    return tokens / (time.perf_counter() - t)


def served_behaviour(base_url: str, model: str, model_dir: str | Path, *, max_items: int | None = None) -> dict:
    """Chat exact-match and multiple-choice accuracy of a served model (``olica_prune.eval.behaviour``)."""
    from openai import OpenAI
    from transformers import AutoTokenizer

    from ..eval.behaviour import chat_exact_match_openai, load_chat_set, load_mc_set, mc_accuracy_openai, subset

    client = OpenAI(base_url=base_url, api_key="unused")
    t = time.perf_counter()
    chat = chat_exact_match_openai(client, model, subset(load_chat_set(), max_items))
    mc = mc_accuracy_openai(client, model, AutoTokenizer.from_pretrained(str(model_dir)),
                            subset(load_mc_set(), max_items))
    return {"chat": chat, "mc": mc, "seconds": time.perf_counter() - t}


def _behaviour_line(name: str, r: dict) -> str:
    c, m = r["chat"], r["mc"]
    return (f"      {name:<7} chat exact-match {c['score']:.3f} ({c['correct']}/{c['n']}), "
            f"MC acc {m['acc']:.3f}, acc_norm {m['acc_norm']:.3f} ({m['n']} items)  [{r['seconds']:.0f} s]")


def demo_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="olica demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--output", default="runs/smollm2-135m-olica20")
    ap.add_argument("--overwrite", action="store_true", help="prune again even if the checkpoint exists")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--requests", type=int, default=32, help="concurrent requests for the tokens/s comparison")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--no-throughput", action="store_true", help="skip the dense vs pruned tokens/s comparison")
    ap.add_argument("--enforce-eager", action="store_true",
                    help="serve in eager mode (starts faster; default: vLLM's default compiled mode, as users get)")
    ap.add_argument("--no-behaviour", action="store_true",
                    help="skip the dense vs pruned chat exact-match / multiple-choice comparison")
    ap.add_argument("--behaviour-items", type=int, default=None,
                    help="score N items of each behaviour set instead of all (faster)")
    args = ap.parse_args(argv)
    if args.behaviour_items is not None and args.behaviour_items < 1:
        ap.error("--behaviour-items must be at least 1")

    from openai import OpenAI

    from ..model.modeling import is_olica_checkpoint
    from ..method.pruner import PruneConfig, prune, summary_line
    from ..io.sources import resolve_model

    dense_dir = resolve_model(args.model)
    out = Path(args.output)
    if out.exists() and is_olica_checkpoint(out) and not args.overwrite:
        print(f"[1/5] using the existing Olica checkpoint {out} (--overwrite to prune again)")
    else:
        print(f"[1/5] pruning {args.model} by {args.sparsity:.0%} -> {out}")
        report = prune(args.model, output=out, config=PruneConfig(sparsity=args.sparsity),
                       overwrite=args.overwrite or out.exists())
        print("      " + summary_line(report))

    print("[2/5] starting `vllm serve` on the pruned checkpoint (127.0.0.1)")
    results, behaviour = {}, {}
    with vllm_server(out, name="olica", enforce_eager=args.enforce_eager) as server:
        url = server.api_url
        client = OpenAI(base_url=url, api_key="unused")
        print(f"[3/5] asking: {args.question}")
        reply = client.chat.completions.create(model="olica", messages=[{"role": "user", "content": args.question}],
                                               max_tokens=64, temperature=0.0)
        print(f"      answer: {reply.choices[0].message.content.strip()}")
        if not args.no_behaviour:
            print("[4/5] behaviour of the pruned model: chat exact-match and multiple choice (hand-written sets)")
            behaviour["pruned"] = served_behaviour(url, "olica", out, max_items=args.behaviour_items)
            print(_behaviour_line("pruned", behaviour["pruned"]))
        if not args.no_throughput:
            results["pruned"] = served_throughput(url, "olica", requests=args.requests, input_len=args.input_len,
                                                  output_len=args.output_len)
    if not (args.no_throughput and args.no_behaviour):
        print("[5/5] the same on the dense model")
        with vllm_server(dense_dir, name="dense", enforce_eager=args.enforce_eager) as server:
            if not args.no_behaviour:
                behaviour["dense"] = served_behaviour(server.api_url, "dense", dense_dir,
                                                      max_items=args.behaviour_items)
            if not args.no_throughput:
                results["dense"] = served_throughput(server.api_url, "dense", requests=args.requests,
                                                     input_len=args.input_len, output_len=args.output_len)
    if behaviour:
        print("      behaviour, dense vs pruned (greedy; small hand-written sets, a few points is noise):")
        for name in ("dense", "pruned"):
            if name in behaviour:
                print(_behaviour_line(name, behaviour[name]))
    if not args.no_throughput:
        ratio = results["pruned"] / results["dense"]
        print(f"      output tokens/s ({args.requests} concurrent requests, {args.output_len} tokens each): "
              f"dense {results['dense']:.1f}, pruned {results['pruned']:.1f}  ({ratio:.2f}x)")
        print("      (one run each: see bench/throughput.py for repeated, interleaved measurements)")
    print("done: servers stopped")
    return 0
