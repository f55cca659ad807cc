"""Pruned + quantized, side by side in one run: size on disk, perplexity, vLLM throughput.

    python bench/quantized.py --pruned runs/smol-20

Rows (all served by vLLM in its default mode, bf16 activations):

- dense:               the source model, written as bf16;
- dense + W8A8:        ``olica quantize`` of it (int8 weights per channel, int8
                       activations per token, compressed-tensors);
- olica:               the pruned checkpoint, written as bf16;
- olica + W8A8:        ``olica quantize`` of it;
- olica + online FP8:  the pruned bf16 checkpoint with vLLM's own
                       ``--quantization fp8_per_channel`` (``--online-fp8``).

Per row, one fresh ``vllm.LLM`` in its own process: perplexity on the REPORT
domains of the evaluation suite from vLLM's prompt logprobs (same chunks for
every row; geometric mean over domains), then generation throughput
(``--num-prompts`` random prompts, fixed lengths, ignore_eos, one warm-up).
Size on disk is the sum of the safetensors files. Results:
``bench/results/quantized.json`` (with the commit) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import commit_hash  # noqa: E402
from engine import answer_worker, environment, make_prompts, run_engine  # noqa: E402
from native import param_count, read_config  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def worker(spec: dict) -> dict:
    """Perplexity from prompt logprobs, then timed generation, on one engine."""
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from olica_prune.eval.behaviour import _sum_logprobs, load_llm, shutdown_llm

    t0 = time.perf_counter()
    llm = load_llm(spec["model"], dtype="bfloat16", max_model_len=spec["max_model_len"],
                   enforce_eager=spec["enforce_eager"], quantization=spec.get("quantization"),
                   max_num_seqs=spec["num_prompts"], enable_prefix_caching=False)
    load_s = time.perf_counter() - t0
    chunks = torch.load(spec["chunks"])
    ppl = {}
    score = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
    for domain, c in chunks.items():
        rows = c.tolist()
        outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in rows], score, use_tqdm=False)
        # every token after the first, given the ones before it
        logprob = sum(_sum_logprobs(o.prompt_logprobs, ids, 1) for o, ids in zip(outs, rows, strict=True))
        ppl[domain] = math.exp(-logprob / sum(len(ids) - 1 for ids in rows))

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in json.loads(Path(spec["prompts"]).read_text())]
    full = SamplingParams(temperature=0, max_tokens=spec["output_len"], min_tokens=spec["output_len"],
                          ignore_eos=True, detokenize=False)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    t0 = time.perf_counter()
    llm.generate(prompts, full, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    shutdown_llm(llm)
    return {"load_s": load_s, "ppl": ppl, "elapsed_s": elapsed,
            "output_tok_s": len(prompts) * spec["output_len"] / elapsed}


def bf16_copy(src: Path, out: Path) -> Path:
    """``src`` with every floating tensor in bf16 (what vLLM serves), tokenizer and config alongside."""
    import torch
    from safetensors.torch import load_file, save_file

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(str(f)).items()}
            save_file(state, str(tmp / f.name), metadata={"format": "pt"})
        elif f.is_file() and f.name != "config.json":
            shutil.copy2(f, tmp / f.name)
    cfg = read_config(src)
    cfg["torch_dtype"] = "bfloat16"
    cfg.pop("dtype", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if answer_worker(argv, worker):
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", default="smollm2-135m")
    p.add_argument("--pruned", required=True, help="Olica checkpoint pruned from --dense")
    p.add_argument("--online-fp8", action="store_true", help="add a row with vLLM's online fp8_per_channel")
    p.add_argument("--max-chunks", type=int, default=20, help="chunks per report domain")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "quantized.json"))
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)

    import torch

    from olica_prune.eval import suite
    from olica_prune.eval.evaluate import geometric_mean
    from olica_prune.tools.quantize import quantize_checkpoint
    from olica_prune.io.sources import resolve_model
    from olica_prune.eval.sweep import _chunks

    dense_dir, pruned_dir = resolve_model(args.dense), Path(args.pruned)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="olica-quantized-"))
    work.mkdir(parents=True, exist_ok=True)
    dense16, pruned16 = bf16_copy(dense_dir, work / "dense-bf16"), bf16_copy(pruned_dir, work / "olica-bf16")
    rows: dict[str, tuple[Path, str | None]] = {"dense": (dense16, None), "olica": (pruned16, None)}
    for name, src in (("dense + W8A8", dense16), ("olica + W8A8", pruned16)):
        out = work / name.replace(" + ", "-")
        if not (out / "config.json").is_file():
            quantize_checkpoint(src, out, dtype="bfloat16", progress=False)
        rows[name] = (out, None)
    if args.online_fp8:
        rows["olica + online FP8"] = (pruned16, "fp8_per_channel")
    order = ["dense", "dense + W8A8", "olica", "olica + W8A8"] + (["olica + online FP8"] if args.online_fp8 else [])

    chunks_path = work / "chunks.pt"
    torch.save(_chunks(dense_dir, seq_len=args.seq_len, max_chunks=args.max_chunks, domains=suite.REPORT_DOMAINS),
               chunks_path)
    prompts_path = work / "prompts.json"
    prompts_path.write_text(json.dumps(make_prompts(dense_dir, num_prompts=args.num_prompts,
                                                    input_len=args.input_len, seed=0)))
    common = {"chunks": str(chunks_path), "prompts": str(prompts_path), "output_len": args.output_len,
              "num_prompts": args.num_prompts, "enforce_eager": args.enforce_eager,
              "max_model_len": max(args.seq_len, args.input_len + args.output_len) + 16}
    results = {}
    for name in order:
        path, quant = rows[name]
        spec = dict(common, quantization=quant)
        r = run_engine(name, path, spec, work, name.replace(" ", "").replace("+", "-"), script=__file__)
        r["geomean_ppl"] = geometric_mean(r["ppl"][d] for d in suite.REPORT_DOMAINS)
        r["disk_bytes"] = disk_bytes(path)
        r["params"] = param_count(read_config(path))
        r["path"], r["quantization"] = str(path), quant or ("W8A8 int8 (olica quantize)" if "W8A8" in name
                                                            else "none (bf16)")
        results[name] = r
        print(f"{name:20s} {r['disk_bytes'] / 1e6:7.1f} MB  ppl {r['geomean_ppl']:7.2f}  "
              f"{r['output_tok_s']:7.1f} out tok/s  (load {r['load_s']:.0f} s)", flush=True)
    for r in results.values():
        r["ppl_vs_dense"] = r["geomean_ppl"] / results["dense"]["geomean_ppl"]
        r["speedup_vs_dense"] = r["output_tok_s"] / results["dense"]["output_tok_s"]
        r["size_vs_dense"] = r["disk_bytes"] / results["dense"]["disk_bytes"]
    result = {"commit": commit_hash(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "settings": {"report_domains": list(suite.REPORT_DOMAINS), "max_chunks": args.max_chunks,
                           "seq_len": args.seq_len, "num_prompts": args.num_prompts, "input_len": args.input_len,
                           "output_len": args.output_len, "enforce_eager": args.enforce_eager,
                           "activations": "bfloat16", "ppl_from": "vLLM prompt logprobs"},
              "environment": environment(args.enforce_eager, "bfloat16"), "rows": results, "workdir": str(work)}
    out = Path(args.output)
    suite._write_atomic(out, json.dumps(result, indent=2) + "\n")
    print("\n| model | size on disk | perplexity (report geomean) | output tok/s |\n|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['disk_bytes'] / 1e6:.0f} MB ({r['size_vs_dense']:.2f}x) | {r['geomean_ppl']:.2f} "
              f"({r['ppl_vs_dense']:.2f}x) | {r['output_tok_s']:.1f} ({r['speedup_vs_dense']:.2f}x) |")
    print(f"\nwrote {out} (work dir {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
