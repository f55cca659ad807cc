"""Serving speed as users get it: ``vllm serve`` + ``vllm bench serve``, dense vs pruned, one run.

    python bench/serving.py --pruned runs/smol-10 runs/smol-20 runs/smol-30

For each model -- the dense source, every ``--pruned`` checkpoint and a native
Llama of the same parameter count as one of them (random weights; see
``bench/native.py``) -- this starts stock ``vllm serve`` in vLLM's default
mode (compiled; ``--enforce-eager`` to compare), then runs stock
``vllm bench serve`` against it, through ``olica_serve.speed`` (the project's
one speed measurer: the same server settings and scenarios as ``olica sweep``
and ``olica demo``):

- the decode curve: random prompts of ``--input-len`` tokens, exactly
  ``--output-len`` tokens out (``ignore_eos``), at each ``--concurrency``
  (default 1, 4, 16, 64): output tok/s, TTFT and TPOT (p50 and p99).
  Concurrency 1 is batch-1 generation;
- prefill: long prompts (``--prefill-len``), one output token, concurrency 1:
  TTFT is the prefill latency of one request.

All models see the same prompts (same tokenizer, dataset seed). Models are
interleaved round by round (dense, pruned..., native, dense, ...) and the
median over ``--rounds`` is reported, so a slow spell of a shared machine does
not land on one model only. The server log also gives the KV-cache capacity
(tokens) vLLM allocated for each model at the same ``VLLM_CPU_KVCACHE_SPACE``.

Writes ``bench/results/serving.json`` (with the commit) and a PNG of output
throughput and TPOT against concurrency (``bench/results/serving.png``; needs
matplotlib, the ``charts`` extra). ``--replot JSON`` redraws the PNG of a saved
result without measuring anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import commit_hash  # noqa: E402
from engine import environment  # noqa: E402
from native import native_model_for, param_count, read_config  # noqa: E402

from olica_prune.eval import suite  # noqa: E402
from olica_prune.contract import ModelDims, OlicaSpec  # noqa: E402
from olica_serve.speed import (METRICS, Scenario, decode_scenario, measure, prefill_scenario,  # noqa: E402
                               preload, server_args)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

KV_RE = re.compile(r"KV cache size:\s*([\d,]+)\s*tokens")


# --------------------------------------------------------------------------- one model: serve + bench


def serve_and_bench(kind: str, path: Path, tokenizer: Path, scenarios: list[Scenario], *, args, workdir: Path,
                    rnd: int) -> dict:
    from olica_serve.server import VllmServer

    extra = server_args(dtype=args.dtype, max_model_len=max(args.prefill_len + 1, args.input_len + args.output_len)
                        + 16, max_num_seqs=max(args.concurrency), enforce_eager=args.enforce_eager)
    name = f"{kind}"
    server = VllmServer(path, *extra, name=name, log_path=workdir / f"server-{kind}-{rnd}.log",
                        timeout=args.startup_timeout)
    out = {"kind": kind, "round": rnd, "scenarios": {}}
    preload()  # the benchmark client imports while the server starts
    with server:
        out["startup_s"] = server.startup_s
        log = server.log_path.read_text(errors="replace")
        if m := KV_RE.search(log):
            out["kv_cache_tokens"] = int(m.group(1).replace(",", ""))
        out["compiled"] = "enforce_eager=True" not in log
        for sc in scenarios:
            tag = f"{kind}-{rnd}-{sc.name}"
            t0 = time.perf_counter()
            r = out["scenarios"][sc.name] = measure(server, name, tokenizer, sc, workdir=workdir, tag=tag,
                                                    seed=args.seed)
            print(f"  [{rnd + 1}] {kind:9s} {sc.name:8s} {r['output_throughput']:8.1f} out tok/s  "
                  f"TTFT p50 {r['median_ttft_ms']:8.1f} ms  TPOT p50 {r.get('median_tpot_ms', 0):6.1f} ms  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


# --------------------------------------------------------------------------- summary, KV arithmetic, plot


def v_head_dims(config: dict) -> list[int]:
    """Each layer's V width per KV head: the Olica spec's, or the head size when dense."""
    if "olica" in config:
        return [layer.v_head_dim for layer in OlicaSpec.from_config(config).layers]
    dims = ModelDims.from_config(config)
    return [dims.head_dim] * dims.num_layers


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> dict:
    """K+V cache bytes per token, summed over layers: as allocated (V padded to
    the head size), as the pruned V widths would need, and what vLLM's KV cache
    manager would allocate if every layer declared its own V head size (a
    "diffkv" attention backend): it unifies the layers' page sizes by padding
    every page to the largest one (``unify_kv_cache_spec_page_size``), so each
    layer costs as much as the widest V."""
    dims = ModelDims.from_config(config)
    g, e, L = dims.num_kv_heads, dims.head_dim, dims.num_layers
    allocated = L * 2 * g * e * dtype_bytes
    widths = v_head_dims(config)
    needed = sum(g * (e + w) for w in widths) * dtype_bytes
    unified = L * g * (e + max(widths)) * dtype_bytes
    return {"allocated": allocated, "needed_with_pruned_v": needed, "possible_saving": 1 - needed / allocated,
            "vllm_with_own_v_head_size": unified, "vllm_saving": 1 - unified / allocated}


def summarize(runs: list[dict], kinds: list[str]) -> dict:
    out: dict[str, dict] = {}
    for kind in kinds:
        rs = [r for r in runs if r["kind"] == kind]
        per = {}
        for name in rs[0]["scenarios"]:
            per[name] = {k: statistics.median(r["scenarios"][name][k] for r in rs)
                         for k in METRICS if k in rs[0]["scenarios"][name]}
            per[name]["spread_output_throughput"] = [min(r["scenarios"][name]["output_throughput"] for r in rs),
                                                     max(r["scenarios"][name]["output_throughput"] for r in rs)]
        out[kind] = {"scenarios": per, "kv_cache_tokens": rs[0].get("kv_cache_tokens"),
                     "startup_s": statistics.median(r["startup_s"] for r in rs)}
    dense = out["dense"]["scenarios"]
    for kind, o in out.items():
        for name, r in o["scenarios"].items():
            r["speedup_vs_dense"] = r["output_throughput"] / dense[name]["output_throughput"]
            if name == "prefill":
                r["prefill_speedup_vs_dense"] = dense[name]["median_ttft_ms"] / r["median_ttft_ms"]
    return out


def _figure_atomic(fig, path: Path) -> None:
    """Render ``fig`` with Agg to PNG through a temporary file, so a reader never sees half a chart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        FigureCanvasAgg(fig).print_png(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot(result: dict, path: Path) -> None:
    """Two panels against concurrency (log-2 x axis): output tok/s and TPOT p50.

    Dense is the reference (black, thick); each pruned model also gets its
    "ideal" line (dashed, same colour): dense scaled by the parameter ratio, the
    speed-up if time were proportional to parameters. Bars: min-max over rounds."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    s, models, summary = result["settings"], result["models"], result["summary"]
    conc, dense_params = s["concurrency"], models["dense"]["params"]
    fig = Figure(figsize=(13, 5.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    colours = iter(rcParams["axes.prop_cycle"].by_key()["color"])
    panels = [(axes[0], "output_throughput", "output throughput (tokens/s)", 1),
              (axes[1], "median_tpot_ms", "time per output token, p50 (ms)", -1)]
    for kind, o in summary.items():
        sc = [o["scenarios"][f"c{c}"] for c in conc]
        ratio = dense_params / models[kind]["params"]
        reference = kind == "dense"
        colour = "black" if reference else next(colours)
        note = ", reference" if reference else ", same-size plain Llama" if kind == "native" else ""
        label = f"{kind} ({models[kind]['params'] / 1e6:.0f} M params{note})"
        for ax, key, _, power in panels:
            y = [r[key] for r in sc]
            ax.plot(conc, y, color=colour, marker="o", lw=3 if reference else 1.8, label=label, zorder=3)
            if key == "output_throughput" and all("spread_output_throughput" in r for r in sc):
                lo, hi = zip(*(r["spread_output_throughput"] for r in sc))
                ax.vlines(conc, lo, hi, color=colour, lw=1, alpha=0.6, zorder=2)
            if not reference and kind != "native":
                dense_y = [summary["dense"]["scenarios"][f"c{c}"][key] for c in conc]
                ax.plot(conc, [v * ratio ** power for v in dense_y], color=colour, ls="--", lw=1.2, zorder=1)
    ideal = [Line2D([], [], color="grey", ls="--", lw=1.2, label="ideal (dashed): dense × dense/pruned params")]
    if not any(k not in ("dense", "native") for k in summary):
        ideal = []
    for ax, _, ylabel, _ in panels:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(conc))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(c) for c in conc])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.35)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + ideal, fontsize="small")
    axes[0].set_title("output tokens/s vs concurrency (higher is better)")
    axes[1].set_title("TPOT p50 vs concurrency (lower is better)")
    mode = "eager" if s["enforce_eager"] else "default (compiled)"
    rounds = f"median of {s['rounds']} rounds (bars: min-max)" if s["rounds"] > 1 else "1 round"
    fig.suptitle(f"vllm serve + vllm bench serve, {models['dense']['name']}: {s['input_len']} in / "
                 f"{s['output_len']} out, {mode} mode, {s['dtype']}, {rounds}, commit {result['commit'][:10]}",
                 fontsize="medium")
    _figure_atomic(fig, path)


def markdown(result: dict) -> str:
    conc = result["settings"]["concurrency"]
    rows = ["| model | params | ideal | " + " | ".join(f"c={c} out tok/s" for c in conc)
            + f" | c={conc[0]} TPOT p50 ms | c={conc[-1]} TPOT p50 ms | prefill TTFT p50 ms | KV tokens |",
            "|---|---:|---:|" + "---:|" * len(conc) + "---:|---:|---:|---:|"]
    dense_params = result["models"]["dense"]["params"]
    for kind, o in result["summary"].items():
        sc, m = o["scenarios"], result["models"][kind]
        cells = [f"{sc[f'c{c}']['output_throughput']:.1f} ({sc[f'c{c}']['speedup_vs_dense']:.2f}x)" for c in conc]
        pre = sc.get("prefill", {})
        rows.append(f"| {kind} | {m['params'] / 1e6:.1f} M | {dense_params / m['params']:.2f}x | "
                    + " | ".join(cells)
                    + f" | {sc[f'c{conc[0]}']['median_tpot_ms']:.1f} | {sc[f'c{conc[-1]}']['median_tpot_ms']:.1f}"
                    + f" | {pre.get('median_ttft_ms', float('nan')):.0f} | {o.get('kv_cache_tokens')} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", default="smollm2-135m", help="dense source model (dir, .gguf or alias)")
    p.add_argument("--pruned", nargs="+", help="Olica checkpoints pruned from --dense (required unless --replot)")
    p.add_argument("--native-for", default=None,
                   help="build the native same-size Llama for this pruned checkpoint (default: the one whose "
                        "target sparsity is closest to 20 %%); 'none' to skip")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated concurrency levels")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--prompts-per-slot", type=int, default=2,
                   help="requests per concurrency slot (at least 8 requests per level)")
    p.add_argument("--prefill-len", type=int, default=1024, help="prompt length of the prefill-only scenario")
    p.add_argument("--prefill-prompts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--enforce-eager", action="store_true", help="eager mode (default: vLLM's default, compiled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=900)
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "serving.json"))
    p.add_argument("--plot", default=None, help="PNG path (default: next to --output, .png)")
    p.add_argument("--workdir", default=None, help="keep server and bench logs here")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="measure nothing: redraw the PNG of a saved result (to --plot, default JSON's .png)")
    args = p.parse_args(argv)
    if args.replot:
        png = Path(args.plot) if args.plot else Path(args.replot).with_suffix(".png")
        plot(json.loads(Path(args.replot).read_text()), png)
        print(f"wrote {png}")
        return 0
    if not args.pruned:
        p.error("--pruned is required (unless --replot)")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    from olica_prune.io.sources import resolve_model

    dense_dir = resolve_model(args.dense)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="olica-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    models: dict[str, Path] = {"dense": dense_dir}
    sparsities = {}
    for path in map(Path, args.pruned):
        cfg = read_config(path)
        if "olica" not in cfg:
            p.error(f"{path} is not an Olica checkpoint (config.json has no 'olica' block)")
        target = cfg["olica"].get("sparsity", {}).get("target")
        kind = f"olica-{round(target * 100)}" if target is not None else f"olica-{path.name}"
        models[kind], sparsities[kind] = path, target
    native_kind = None
    if (args.native_for or "").lower() != "none":
        if args.native_for:
            native_kind = next((k for k, v in models.items() if v.resolve() == Path(args.native_for).resolve()), None)
            if native_kind is None:
                p.error(f"--native-for {args.native_for} is not one of --pruned")
        else:
            native_kind = min((k for k in sparsities), key=lambda k: abs((sparsities[k] or 0) - 0.2))
        models["native"] = native_model_for(dense_dir, param_count(read_config(models[native_kind])), workdir)

    scenarios = [decode_scenario(c, input_len=args.input_len, output_len=args.output_len,
                                 prompts_per_slot=args.prompts_per_slot) for c in args.concurrency]
    scenarios.append(prefill_scenario(args.prefill_len, args.prefill_prompts))
    dtype_bytes = {"bfloat16": 2, "float16": 2, "float32": 4}.get(args.dtype, 2)
    info = {}
    for kind, path in models.items():
        cfg = read_config(path)
        dims = ModelDims.from_config(cfg)
        info[kind] = {"path": str(path), "name": path.name, "params": param_count(cfg),
                      "layers": dims.num_layers, "kv_bytes_per_token": kv_bytes_per_token(cfg, dtype_bytes)}
        if kind in sparsities:
            info[kind]["sparsity"] = cfg["olica"].get("sparsity", {})
        if kind == "native":
            info[kind]["describe"] = f"LlamaForCausalLM, FFN {dims.intermediate_size}, random weights"

    runs = []
    for rnd in range(args.rounds):
        for kind, path in models.items():
            print(f"round {rnd + 1}/{args.rounds}: serving {kind} ({path})", flush=True)
            runs.append(serve_and_bench(kind, path, dense_dir, scenarios, args=args, workdir=workdir, rnd=rnd))

    result = {
        "commit": commit_hash(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"input_len": args.input_len, "output_len": args.output_len, "concurrency": args.concurrency,
                     "scenarios": [dataclasses.asdict(sc) for sc in scenarios], "rounds": args.rounds,
                     "dtype": args.dtype, "enforce_eager": args.enforce_eager, "seed": args.seed,
                     "prefix_caching": False, "ignore_eos": True,
                     "tool": "vllm serve + vllm bench serve (random dataset)"},
        "environment": environment(args.enforce_eager, args.dtype),
        "models": info,
        "runs": runs,
        "summary": summarize(runs, list(models)),
        "workdir": str(workdir),
    }
    s = result["summary"]
    if "native" in s:
        result["models"]["native"]["same_size_as"] = native_kind
        for kind in (native_kind,):
            result["summary"][kind]["vs_native"] = {
                name: r["output_throughput"] / s["native"]["scenarios"][name]["output_throughput"]
                for name, r in s[kind]["scenarios"].items()}
    out = Path(args.output)
    suite._write_atomic(out, json.dumps(result, indent=2) + "\n")
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot(result, png)
    print()
    print(markdown(result))
    print(f"\nwrote {out} and {png} (logs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
