"""``olica sweep MODEL --sparsities 0.1,0.2,0.3,0.5``: choose a sparsity by its
quality/speed trade-off, in one command.

For the dense model and every (method, sparsity) point: prune (Olica defaults,
or a baseline), perplexity on the evaluation suite's report domains (geometric
mean, per domain) and output tokens/s as users get them: ``vllm serve`` in its
default compiled mode and one ``vllm bench serve`` decode scenario through
``olica_serve.speed``, the measurer of ``bench/serving.py`` and ``olica demo``
(random prompts, ``ignore_eos``, ``--concurrency`` requests in flight). Writes
``DIR/sweep.json`` after every point (a rerun skips the points already there:
an interrupted sweep resumes) and ``DIR/sweep.png`` (with matplotlib, the
``charts`` extra), perplexity against throughput with the dense point and the
baselines. Pruned checkpoints are kept in ``DIR/<method>-<sparsity>``
(``--no-keep`` deletes each after it is measured); server and benchmark logs
go to ``DIR/logs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

def measure_serving(ckpt: str | Path, *, name: str, tokenizer: str | Path, concurrency: int, input_len: int,
                    output_len: int, eager: bool, dtype: str, workdir: Path) -> dict:
    """Output tokens/s of ``vllm serve CKPT`` under one ``vllm bench serve`` decode scenario
    (``concurrency`` requests in flight, one request per slot, at least 8), as ``bench/serving.py``
    measures it; the benchmark's metrics are kept under ``serving``."""
    from olica_serve.server import VllmServer
    from olica_serve.speed import decode_scenario, measure, preload, server_args

    scenario = decode_scenario(concurrency, input_len=input_len, output_len=output_len, prompts_per_slot=1)
    args = server_args(dtype=dtype, max_model_len=input_len + output_len + 16, max_num_seqs=concurrency,
                       enforce_eager=eager)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    preload()  # the benchmark client imports while the server starts
    with VllmServer(ckpt, *args, name=name, log_path=workdir / f"server-{name}.log", timeout=900) as server:
        r = measure(server, name, tokenizer, scenario, workdir=workdir, tag=name)
    return {"output_tok_s": r["output_throughput"], "serving": {"scenario": dataclasses.asdict(scenario), **r}}


def charts_available(warn: bool = False) -> bool:
    """Whether matplotlib (the ``charts`` extra) is installed; ``warn`` says on stderr when not."""
    ok = importlib.util.find_spec("matplotlib") is not None
    if not ok and warn:
        print("olica sweep: matplotlib is not installed, so no sweep.png (pip install 'olica[charts]')",
              file=sys.stderr)
    return ok


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
    """PNG: geometric-mean perplexity (log scale) against output tokens/s; one line per method,
    starting at the dense point (the reference: a black star with dotted guides)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, MaxNLocator, NullLocator, ScalarFormatter

    points = [p for p in result["points"] if p.get("output_tok_s") and p.get("geomean_ppl")]
    dense = next((p for p in points if p["method"] == "dense"), None)
    fig = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    ax = fig.subplots()
    by_method: dict[str, list] = {}
    for p in points:
        if p["method"] != "dense":
            by_method.setdefault(p["method"], []).append(p)
    colours = {"olica": "C0", "wanda-sp": "C3", "magnitude": "C2"}
    for method, pts in by_method.items():
        pts = ([dense] if dense else []) + sorted(pts, key=lambda p: p["sparsity"])
        colour = colours.get(method, "C4")
        ax.plot([p["output_tok_s"] for p in pts], [p["geomean_ppl"] for p in pts], color=colour, marker="o",
                lw=1.8, label=method, zorder=2)
        for p in pts[1:] if dense else pts:
            ax.annotate(f"{p['sparsity']:.0%}", (p["output_tok_s"], p["geomean_ppl"]), xytext=(6, 4),
                        textcoords="offset points", color=colour, fontsize="small")
    if dense:
        ax.plot([dense["output_tok_s"]], [dense["geomean_ppl"]], color="black", marker="*", ms=16, ls="none",
                label="dense (reference)", zorder=3)
        ax.axhline(dense["geomean_ppl"], color="black", ls=":", lw=1, zorder=1)
        ax.axvline(dense["output_tok_s"], color="black", ls=":", lw=1, zorder=1)
        ax.annotate(f"dense: {dense['geomean_ppl']:.1f}, {dense['output_tok_s']:.0f} tok/s",
                    (dense["output_tok_s"], dense["geomean_ppl"]), xytext=(8, -14), textcoords="offset points",
                    fontsize="small")
    if points:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if hi / lo < 3:  # under half a decade: round linear steps (on the log axis), plain numbers
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
            ax.yaxis.set_minor_locator(NullLocator())
        else:  # matplotlib's log ticks (decades, labelled subdivisions when few), as plain numbers
            ax.yaxis.set_major_formatter(LogFormatter())
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.legend(title="pruning method (labels: sparsity)", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no speed measurements yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    st = result.get("settings", {})
    load = (f": {st['input_len']} in / {st['output_len']} out, concurrency {st['concurrency']}"
            if {"input_len", "output_len", "concurrency"} <= set(st) else "")
    ax.set_xlabel(f"output tokens/s (vllm bench serve{load})")
    ax.set_ylabel("perplexity, geometric mean over report domains (log scale)")
    ax.set_title(f"olica sweep: {result['model']} (lower right is better)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        FigureCanvasAgg(fig).print_png(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sweep(model: str, *, sparsities: list[float], methods: list[str], out: Path, max_chunks: int = 20,
          seq_len: int = 128, speed: bool = True, concurrency: int = 32, input_len: int = 128,
          output_len: int = 64, eager: bool = False, dtype: str = "bfloat16",
          keep: bool = True, prune_overrides: dict | None = None, progress: bool = True) -> dict:
    from . import suite
    from ..method.pruner import PruneConfig, prune
    from ..io.sources import resolve_model

    src = resolve_model(model)
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "sweep.json"
    settings = dict(model=model, max_chunks=max_chunks, seq_len=seq_len, speed=speed,
                    speed_tool="vllm bench serve" if speed else None, concurrency=concurrency,
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
    charts = speed and charts_available(warn=True)
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
            point.update(measure_serving(ckpt, name="dense" if method == "dense" else f"{method}-{sp:g}",
                                         tokenizer=src, concurrency=concurrency, input_len=input_len,
                                         output_len=output_len, eager=eager, dtype=dtype, workdir=out / "logs"))
        point["seconds"] = round(time.perf_counter() - t0, 1)
        if method != "dense" and not keep:
            shutil.rmtree(ckpt, ignore_errors=True)
        result["points"].append(point)
        _save(result, result_file)
        if charts:
            chart(result, out / "sweep.png")
        bar.update(1)
    bar.close()
    dense = next(p for p in result["points"] if p["method"] == "dense")
    for p in result["points"]:
        if speed and dense.get("output_tok_s"):
            p["speedup"] = round(p["output_tok_s"] / dense["output_tok_s"], 3)
        p["ppl_ratio"] = round(p["geomean_ppl"] / dense["geomean_ppl"], 3)
    _save(result, result_file)
    if charts:
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
    ap.add_argument("--concurrency", "--speed-prompts", dest="concurrency", type=int, default=32,
                    help="requests in flight while vllm bench serve measures tokens/s (one request per slot, "
                         "at least 8)")
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
                       max_chunks=args.max_chunks, speed=args.speed, concurrency=args.concurrency,
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
    png = args.speed and charts_available()
    print(f"wrote {Path(args.output) / 'sweep.json'}" + (f" and {Path(args.output) / 'sweep.png'}" if png else ""))
    return 0
