"""``olica sweep MODEL --sparsities 0.1,0.2,0.3,0.5``: choose a sparsity by its
quality/speed trade-off, in one command.

For the dense model and every (method, sparsity) point: prune (Olica defaults,
or a baseline), perplexity on the evaluation suite's report domains (geometric
mean, per domain) and output tokens/s through vLLM in its default compiled mode
(offline engine in a fresh subprocess, random prompts, ``ignore_eos``). Writes
``DIR/sweep.json`` after every point (a rerun skips the points already there:
an interrupted sweep resumes) and ``DIR/sweep.png``, perplexity against
throughput with the dense point and the baselines. Pruned checkpoints are kept
in ``DIR/<method>-<sparsity>`` (``--no-keep`` deletes each after it is measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

SPEED_CODE = """
import json, sys, time
spec = json.loads(sys.argv[1])
from vllm import LLM, SamplingParams
import random
rng = random.Random(0)
llm = LLM(model=spec["model"], dtype=spec["dtype"], enforce_eager=spec["eager"], seed=0,
          max_model_len=spec["input_len"] + spec["output_len"] + 8, max_num_seqs=spec["prompts"],
          enable_prefix_caching=False)
vocab = llm.get_tokenizer().vocab_size
prompts = [{"prompt_token_ids": [rng.randrange(100, vocab - 100) for _ in range(spec["input_len"])]}
           for _ in range(spec["prompts"])]
params = SamplingParams(temperature=0, max_tokens=spec["output_len"], min_tokens=spec["output_len"],
                        ignore_eos=True, detokenize=False)
llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
best = 0.0
for _ in range(spec["repeats"]):
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    s = time.perf_counter() - t
    best = max(best, sum(len(o.outputs[0].token_ids) for o in outs) / s)
print("OLICA_SPEED " + json.dumps({"output_tok_s": best}), flush=True)
"""


def measure_speed(model_dir: str | Path, *, prompts: int, input_len: int, output_len: int, repeats: int,
                  eager: bool, dtype: str) -> dict:
    """Output tokens/s of vLLM's offline engine (best of ``repeats``), in a fresh process."""
    spec = dict(model=str(model_dir), prompts=prompts, input_len=input_len, output_len=output_len,
                repeats=repeats, eager=eager, dtype=dtype)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    res = subprocess.run([sys.executable, "-c", SPEED_CODE, json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    for line in res.stdout.splitlines():
        if line.startswith("OLICA_SPEED "):
            return json.loads(line.removeprefix("OLICA_SPEED "))
    raise RuntimeError(f"vLLM speed measurement of {model_dir} failed (exit {res.returncode}):\n"
                       + res.stderr[-2000:])


def measure_quality(model_dir: str | Path, chunks: dict) -> dict:
    from . import suite
    from .evaluate import geometric_mean, perplexity
    from ..model.modeling import load_causal_lm

    model = load_causal_lm(model_dir)
    ppl = {d: perplexity(model, c, progress=False) for d, c in chunks.items()}
    return {"ppl": ppl, "geomean_ppl": geometric_mean(ppl[d] for d in suite.REPORT_DOMAINS if d in ppl)}


def _chunks(src: Path, *, seq_len: int, max_chunks: int, domains) -> dict:
    from transformers import AutoTokenizer

    from . import suite
    from ..io.data import eval_chunks

    tok = AutoTokenizer.from_pretrained(str(src))
    out = {}
    for d in domains:
        suite.domain_text(d)  # one clear error if the suite is not fetched
        out[d] = eval_chunks(tok, str(suite.text_dir() / f"{d}.txt"), seq_len=seq_len, max_chunks=max_chunks)
    return out


def chart(result: dict, path: Path) -> None:
    """PNG: geometric-mean perplexity (log scale) against output tokens/s, one point per model."""
    from PIL import Image, ImageDraw

    points = [p for p in result["points"] if p.get("output_tok_s") and p.get("geomean_ppl")]
    w, h, m = 900, 600, 80
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((m, 20), f"olica sweep: {result['model']} (report-domain perplexity vs vLLM output tokens/s)",
              fill="black")
    if points:
        xs = [p["output_tok_s"] for p in points]
        ys = [math.log10(p["geomean_ppl"]) for p in points]
        x0, x1 = min(xs) * 0.95, max(xs) * 1.05
        y0, y1 = min(ys) - 0.1, max(ys) + 0.1

        def to_px(x, y):
            return (m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - (y - y0) / (y1 - y0) * (h - 2 * m))

        draw.rectangle([m, m, w - m, h - m], outline="black")
        for i in range(5):
            xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
            px, _ = to_px(xv, y0)
            _, py = to_px(x0, yv)
            draw.text((px - 15, h - m + 8), f"{xv:.0f}", fill="black")
            draw.text((8, py - 6), f"{10 ** yv:.1f}", fill="black")
        draw.text((w // 2 - 60, h - 30), "output tokens/s (vLLM)", fill="black")
        draw.text((8, m - 30), "perplexity (geomean, log)", fill="black")
        colours = {"dense": "black", "olica": "blue"}
        by_method: dict[str, list] = {}
        for p in points:
            by_method.setdefault(p["method"], []).append(p)
        for method, pts in by_method.items():
            colour = colours.get(method, "red")
            pts = sorted(pts, key=lambda p: p["sparsity"])
            coords = [to_px(p["output_tok_s"], math.log10(p["geomean_ppl"])) for p in pts]
            if len(coords) > 1:
                draw.line(coords, fill=colour, width=2)
            for p, (px, py) in zip(pts, coords):
                draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
                label = "dense" if method == "dense" else f"{method} {p['sparsity']:.0%}"
                draw.text((px + 8, py - 14), label, fill=colour)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def sweep(model: str, *, sparsities: list[float], methods: list[str], out: Path, max_chunks: int = 20,
          seq_len: int = 128, speed: bool = True, speed_prompts: int = 32, input_len: int = 128,
          output_len: int = 64, repeats: int = 2, eager: bool = False, dtype: str = "bfloat16",
          keep: bool = True, prune_overrides: dict | None = None, progress: bool = True) -> dict:
    from . import suite
    from ..method.pruner import PruneConfig, prune
    from ..io.sources import resolve_model

    src = resolve_model(model)
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "sweep.json"
    settings = dict(model=model, max_chunks=max_chunks, seq_len=seq_len, speed=speed, speed_prompts=speed_prompts,
                    input_len=input_len, output_len=output_len, eager=eager, dtype=dtype,
                    prune_overrides=prune_overrides or {})
    result = {"settings": settings, "model": model, "points": []}
    if result_file.exists():
        prior = json.loads(result_file.read_text())
        if prior.get("settings") == settings:
            result["points"] = prior.get("points", [])  # finished points are kept: resume
        else:
            raise ValueError(f"{result_file} was made with other settings; use another --output or delete it")
    from .. import __version__
    from ..io.provenance import commit_hash

    result["commit"] = commit_hash(mark_dirty=True, fallback=f"olica {__version__} (no git)")
    todo = [("dense", 0.0)] + [(m, sp) for sp in sparsities for m in methods]
    done = {(p["method"], p["sparsity"]) for p in result["points"]}
    chunks = None
    bar = tqdm(total=len(todo), initial=sum(k in done for k in todo), desc="olica sweep", unit="point",
               disable=not progress)
    for method, sp in todo:
        if (method, sp) in done:
            continue
        if chunks is None:
            chunks = _chunks(src, seq_len=seq_len, max_chunks=max_chunks, domains=suite.REPORT_DOMAINS)
        t0 = time.perf_counter()
        point: dict = {"method": method, "sparsity": sp, "commit": result["commit"]}
        if method == "dense":
            ckpt = src
        else:
            ckpt = out / f"{method}-{sp:g}"
            bar.set_postfix_str(f"pruning {method} {sp:.0%}")
            rep = prune(str(src), output=ckpt, overwrite=True, progress=False,
                        config=PruneConfig(sparsity=sp, method=method, **(prune_overrides or {})))
            point["achieved"] = rep["sparsity"]["achieved"]
            point["params"] = rep["sparsity"]["params_pruned"]
            point["prune_s"] = round(rep["timings"]["total_s"], 1)
        bar.set_postfix_str(f"perplexity {method} {sp:.0%}")
        point.update(measure_quality(ckpt, chunks))
        if speed:
            bar.set_postfix_str(f"vLLM speed {method} {sp:.0%}")
            point.update(measure_speed(ckpt, prompts=speed_prompts, input_len=input_len, output_len=output_len,
                                       repeats=repeats, eager=eager, dtype=dtype))
        point["seconds"] = round(time.perf_counter() - t0, 1)
        if method != "dense" and not keep:
            shutil.rmtree(ckpt, ignore_errors=True)
        result["points"].append(point)
        _save(result, result_file)
        if speed:
            chart(result, out / "sweep.png")
        bar.update(1)
    bar.close()
    dense = next(p for p in result["points"] if p["method"] == "dense")
    for p in result["points"]:
        if speed and dense.get("output_tok_s"):
            p["speedup"] = round(p["output_tok_s"] / dense["output_tok_s"], 3)
        p["ppl_ratio"] = round(p["geomean_ppl"] / dense["geomean_ppl"], 3)
    _save(result, result_file)
    if speed:
        chart(result, out / "sweep.png")
    return result


def _save(result: dict, path: Path) -> None:
    from .suite import _write_atomic

    _write_atomic(path, json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="olica sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--sparsities", default="0.1,0.2,0.3,0.5", help="comma-separated, e.g. 0.1,0.2,0.3,0.5")
    ap.add_argument("--methods", default="olica,wanda-sp", help="comma-separated: olica, wanda-sp, magnitude")
    ap.add_argument("--output", "-o", default="runs/sweep", help="directory for sweep.json, sweep.png, checkpoints")
    ap.add_argument("--max-chunks", type=int, default=20, help="128-token chunks per report domain")
    ap.add_argument("--no-speed", dest="speed", action="store_false", help="perplexity only (no vLLM)")
    ap.add_argument("--speed-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--enforce-eager", action="store_true", help="time vLLM in eager mode (default: compiled)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--no-keep", dest="keep", action="store_false", help="delete each pruned checkpoint after use")
    ap.add_argument("--align", type=int, default=None, help="passed to the pruner (small models need smaller)")
    ap.add_argument("--v-align", type=int, default=None)
    ap.add_argument("--num-samples", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from ..method.pruner import PruneError

    try:
        sparsities = [float(x) for x in args.sparsities.split(",") if x.strip()]
    except ValueError:
        raise PruneError(f"--sparsities {args.sparsities!r}: give numbers like 0.1,0.2,0.3") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("olica", "wanda-sp", "magnitude")]
    if bad or not sparsities:
        raise PruneError(f"--methods must be from olica, wanda-sp, magnitude (got {bad}) and --sparsities non-empty")
    overrides = {k: v for k, v in dict(align=args.align, v_align=args.v_align,
                                       num_samples=args.num_samples).items() if v is not None}
    try:
        result = sweep(args.model, sparsities=sparsities, methods=methods, out=Path(args.output),
                       max_chunks=args.max_chunks, speed=args.speed, speed_prompts=args.speed_prompts,
                       input_len=args.input_len, output_len=args.output_len, eager=args.enforce_eager,
                       dtype=args.dtype, keep=args.keep, prune_overrides=overrides, progress=not args.quiet)
    except ValueError as exc:
        if isinstance(exc, PruneError):
            raise
        raise PruneError(str(exc)) from None
    print(f"{'point':<18} {'PPL (geomean)':>14} {'x dense':>8} {'tok/s':>8} {'speed-up':>9}")
    for p in result["points"]:
        name = "dense" if p["method"] == "dense" else f"{p['method']} {p['sparsity']:.0%}"
        print(f"{name:<18} {p['geomean_ppl']:>14.2f} {p['ppl_ratio']:>8.2f} "
              f"{p.get('output_tok_s', float('nan')):>8.1f} {p.get('speedup', float('nan')):>9.3f}")
    print(f"wrote {Path(args.output) / 'sweep.json'}" + (f" and {Path(args.output) / 'sweep.png'}" if args.speed else ""))
    return 0
