"""``olica demo``: the product end to end on the bundled model, in a few minutes.

1. start stock ``vllm serve`` on the dense model (vLLM's default compiled mode, loopback);
   sample the pruner's self-calibration text through it (the same procedure as
   ``olica prune --calibration self``: ``io.selfcal.sample_stream``), score its chat
   exact-match and measure its output tokens/s;
2. prune it by 20 % from that text into ``runs/``;
3. serve the pruned checkpoint the same way, ask it a question through the official
   ``openai`` client, score its chat exact-match and measure its output tokens/s;
4. print dense vs pruned side by side; every server is stopped, also on Ctrl-C or error.

The tokens/s come from ``olica_serve.speed`` -- the measurer ``bench/serving.py`` uses --
with the published tables' ``c64`` scenario (64 concurrent requests, 128 prompt and 128
output tokens, same server settings), so the demo's speed-up is one round of the same
measurement as the published one; the published spread is printed beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import tempfile
import time
from pathlib import Path

QUESTION = "What is the capital of France? Answer in one sentence."
PUBLISHED = Path(__file__).resolve().parents[2] / "bench" / "results" / "serving_kl.json"


def vllm_server(model_dir: str | Path, *, name: str, enforce_eager: bool = False, timeout: float = 900.0):
    """``vllm serve`` with the speed measurer's settings, for the duration of a ``with`` block."""
    from olica_serve.server import VllmServer
    from olica_serve.speed import preload, server_args

    preload()  # the benchmark client imports while the server starts
    args = server_args(max_model_len=1041, max_num_seqs=64, enforce_eager=enforce_eager)
    return VllmServer(model_dir, *args, name=name, kv_cache_gib=2, timeout=timeout)


def server_sampler(client, model: str, *, seq_len: int, eos: int, workers: int = 64):
    """A ``selfcal.Sampler`` over an OpenAI-compatible vLLM server: temperature 1, no top-p/top-k,
    up to EOS or ``2 * seq_len`` tokens, token ids as generated (``return_token_ids``)."""

    def one(prompt: list[int]) -> list[int]:
        r = client.completions.create(model=model, prompt=prompt, max_tokens=2 * seq_len, temperature=1.0,
                                      top_p=1.0, extra_body={"top_k": 0, "return_token_ids": True})
        new = list(r.choices[0].model_extra["token_ids"])
        return new[: new.index(eos)] if eos in new else new

    def sampler(prompts: list[list[int]]) -> list[list[int]]:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(prompts)))) as pool:
            return list(pool.map(one, prompts))

    return sampler


def chat_score(client, model: str, max_items: int | None) -> dict:
    """Chat exact-match on the hand-written set (``eval.behaviour``), greedy, through the chat API."""
    from ..eval.behaviour import chat_exact_match_openai, load_chat_set, subset

    t = time.perf_counter()
    out = chat_exact_match_openai(client, model, subset(load_chat_set(), max_items))
    return {**out, "seconds": time.perf_counter() - t}


def measure_model(server, name: str, tokenizer: Path, args, workdir: Path) -> dict:
    """Chat exact-match and c64 output tokens/s of a running server (what was asked for)."""
    from openai import OpenAI

    from olica_serve.speed import decode_scenario, measure

    client = OpenAI(base_url=server.api_url, api_key="unused")
    out: dict = {"startup_s": server.startup_s}
    if not args.no_behaviour:
        out["chat"] = chat_score(client, name, args.behaviour_items)
        c = out["chat"]
        print(f"      chat exact-match {c['score']:.3f} ({c['correct']}/{c['n']})  [{c['seconds']:.0f} s]")
    if not args.no_throughput:
        t = time.perf_counter()
        r = measure(server, name, tokenizer, decode_scenario(64, prompts_per_slot=1), workdir=workdir)
        out["tok_s"] = r["output_throughput"]
        print(f"      output tokens/s (64 concurrent requests, 128 in / 128 out) {out['tok_s']:.1f}  "
              f"[{time.perf_counter() - t:.0f} s]")
    return out


def dense_step(dense_dir: Path, cfg, args, workdir: Path) -> tuple[dict, object]:
    """Serve the dense model; sample the calibration text through it; measure it."""
    from openai import OpenAI
    from transformers import AutoTokenizer

    from ..io.selfcal import sample_stream

    print(f"[1/4] serving the dense model ({dense_dir.name}) with `vllm serve`, default compiled mode")
    with vllm_server(dense_dir, name="dense", enforce_eager=args.enforce_eager) as server:
        print(f"      up in {server.startup_s:.0f} s; sampling {cfg.num_samples} x {cfg.seq_len} calibration "
              "tokens from it (what `olica prune` does by default)")
        tokenizer = AutoTokenizer.from_pretrained(str(dense_dir))
        client = OpenAI(base_url=server.api_url, api_key="unused")
        t = time.perf_counter()
        sampler = server_sampler(client, "dense", seq_len=cfg.seq_len, eos=tokenizer.eos_token_id)
        ids = sample_stream(sampler, tokenizer, num_samples=cfg.num_samples, seq_len=cfg.seq_len, seed=cfg.seed,
                            progress=False)
        print(f"      sampled in {time.perf_counter() - t:.0f} s")
        return measure_model(server, "dense", dense_dir, args, workdir), ids


def prune_step(args, cfg, ids, out: Path) -> None:
    from ..method.pruner import prune, summary_line
    from ..model.modeling import is_olica_checkpoint

    if out.exists() and is_olica_checkpoint(out) and not args.overwrite:
        print(f"[2/4] using the existing Olica checkpoint {out} (--overwrite to prune again)")
        return
    print(f"[2/4] pruning {args.model} by {args.sparsity:.0%} -> {out} (retraining-free only: the demo skips "
          "the end-to-end recovery `olica prune` runs by default, ~10 more minutes here)")
    report = prune(args.model, output=out, config=cfg, calibration_ids=ids, overwrite=True)
    print("      " + summary_line(report))


def pruned_step(out: Path, dense_dir: Path, args, workdir: Path) -> dict:
    from openai import OpenAI

    print("[3/4] serving the pruned checkpoint the same way")
    with vllm_server(out, name="olica", enforce_eager=args.enforce_eager) as server:
        client = OpenAI(base_url=server.api_url, api_key="unused")
        print(f"      up in {server.startup_s:.0f} s; asking: {args.question}")
        reply = client.chat.completions.create(model="olica", messages=[{"role": "user", "content": args.question}],
                                               max_tokens=64, temperature=0.0)
        print(f"      answer: {reply.choices[0].message.content.strip()}")
        return measure_model(server, "olica", dense_dir, args, workdir)


def published_c64() -> str:
    """The published c64 speed-up and its spread over rounds, for comparison."""
    try:
        s = json.loads(PUBLISHED.read_text())["summary"]
        p = next(k for k in s if k.startswith("olica"))
        d, o = s["dense"]["scenarios"]["c64"], s[p]["scenarios"]["c64"]
    except (OSError, KeyError, StopIteration, ValueError):
        return ""
    lo, hi = o["spread_output_throughput"][0] / d["spread_output_throughput"][1], \
        o["spread_output_throughput"][1] / d["spread_output_throughput"][0]
    return (f"; published (bench/serving.py, same scenario, {PUBLISHED.name}): {o['speedup_vs_dense']:.2f}x, "
            f"{lo:.2f}-{hi:.2f}x across its rounds")


def summary(dense: dict, pruned: dict) -> None:
    print("[4/4] dense vs pruned")
    if "chat" in dense:
        print(f"      chat exact-match: dense {dense['chat']['score']:.3f}, pruned {pruned['chat']['score']:.3f} "
              f"({dense['chat']['n']} hand-written items; a few points is noise)")
    if "tok_s" in dense:
        ratio = pruned["tok_s"] / dense["tok_s"]
        print(f"      output tokens/s: dense {dense['tok_s']:.1f}, pruned {pruned['tok_s']:.1f} -> {ratio:.2f}x "
              f"(one round{published_c64()})")


def demo_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="olica demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--output", default="runs/smollm2-135m-olica20")
    ap.add_argument("--overwrite", action="store_true", help="prune again even if the checkpoint exists")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--no-throughput", action="store_true", help="skip the dense vs pruned tokens/s comparison")
    ap.add_argument("--no-behaviour", action="store_true", help="skip the dense vs pruned chat exact-match")
    ap.add_argument("--behaviour-items", type=int, default=None, help="score N chat items instead of all")
    ap.add_argument("--enforce-eager", action="store_true",
                    help="serve in eager mode (starts faster, runs slower; default: vLLM's default compiled mode)")
    args = ap.parse_args(argv)
    if args.behaviour_items is not None and args.behaviour_items < 1:
        ap.error("--behaviour-items must be at least 1")

    from ..io.sources import resolve_model
    from ..method.pruner import PruneConfig

    t0 = time.perf_counter()
    cfg = PruneConfig(sparsity=args.sparsity)
    dense_dir, out = resolve_model(args.model), Path(args.output)
    with tempfile.TemporaryDirectory(prefix="olica-demo-") as work:
        dense, ids = dense_step(dense_dir, cfg, args, Path(work))
        prune_step(args, cfg, ids, out)
        pruned = pruned_step(out, dense_dir, args, Path(work))
    summary(dense, pruned)
    print(f"done in {time.perf_counter() - t0:.0f} s; servers stopped")
    return 0
