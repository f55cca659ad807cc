"""Quality of dense vs pruned models, side by side in one run, on the REPORT domains.

    python bench/quality.py --overwrite          # the full grid on smollm2-135m (long: ~1.5 h on 2 cores)
    python bench/quality.py --merge --sparsities 0.2 --methods wanda-sp olica
    python bench/quality.py --merge --sparsities --ablation-sparsity 0 --timing tiny smollm2-135m random_1b

For every sparsity and method: prune (same calibration windows for all, from
the default calibration source), then perplexity on every REPORT domain of the
evaluation suite (``olica_prune.eval.suite.REPORT_DOMAINS``; non-overlapping
chunks at each --seq-len), their geometric mean, top-1 next-token agreement
with the dense model, and pydoc's held-out split as an extra column (not in the
mean). No setting is chosen here: defaults were chosen on the DEV domains
(``bench/dev_sweep.py``). Also ablations at --ablation-sparsity (no
calibration branch, no refit, fast vs exact OND vs separate SVDs, calibration
sources), and pruning time and peak memory per model size with --timing.
Results go to bench/results/quality.json (with the commit) and a Markdown
table to stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MEMORY_SAMPLER, commit_hash  # noqa: E402
from bench.peers import PEERS  # noqa: E402
from olica_prune.eval import suite  # noqa: E402
from olica_prune.io.data import eval_chunks  # noqa: E402
from olica_prune.eval.evaluate import geometric_mean, perplexity, token_agreement  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402
from olica_prune.method.pruner import PruneConfig, calibration_mix, prune  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402

# name -> PruneConfig overrides
METHODS = {
    "magnitude": dict(method="magnitude"),
    "wanda-sp": dict(method="wanda-sp"),
    "paper": dict(method="olica", preset="paper"),
    "olica-nocal": dict(method="olica", calibration=False),
    "olica-norefit": dict(method="olica", refit_down=False),
    "olica-adaptive": dict(method="olica", allocation="adaptive"),
    "olica-uniform": dict(method="olica", allocation="uniform"),  # every pruned layer loses the same FFN fraction
    "olica-kl-a1": dict(method="olica", allocation="kl", kl_alpha=1.0),  # the default below 250 M parameters
    "olica-kl-a3": dict(method="olica", allocation="kl", kl_alpha=3.0),  # the default from 250 M (Qwen on dev)
    "olica": dict(method="olica"),
    # Retraining-free peers (bench/peers): in-memory models, scored the same way
    "flap": dict(method="flap"),
    "slicegpt": dict(method="slicegpt"),
    # Diagnostic: SliceGPT at the same slicing with the authors' untied, full-width head (more parameters)
    "slicegpt-untied": dict(method="slicegpt", head="untied"),
}
ABLATION = {
    # The defaults with one thing changed.
    "fast OND": dict(method="olica", ond="fast"),
    "separate SVD": dict(method="olica", ond="separate"),
    "V/O input statistics (paper)": dict(method="olica", vo_stats="input"),
    "calibration text: pydoc": dict(method="olica", dataset="pydoc"),
    "calibration text: prose": dict(method="olica", dataset="suite:calibration-prose"),
}
AGREEMENT_CHUNKS = 5  # per report domain, at the shortest seq-len


def evaluate(path, dense_model, chunks: dict[str, dict[int, torch.Tensor]], device: str = "cpu") -> dict:
    """``chunks``: domain -> seq-len -> [n, seq] ids. PPL per domain and seq-len,
    the geometric mean over the report domains, top-1 agreement with dense."""
    model = path if isinstance(path, torch.nn.Module) else load_causal_lm(path, device=device)
    lens = sorted({n for by_len in chunks.values() for n in by_len})
    out: dict = {"ppl": {d: {str(n): perplexity(model, c, progress=False) for n, c in by_len.items()}
                         for d, by_len in chunks.items()}}
    for n in lens:
        out[f"geomean_{n}"] = geometric_mean(out["ppl"][d][str(n)] for d in suite.REPORT_DOMAINS if d in chunks)
    if dense_model is not None:
        first = lens[0]
        agree = [token_agreement(model, dense_model, chunks[d][first][:AGREEMENT_CHUNKS])
                 for d in suite.REPORT_DOMAINS if d in chunks]
        out["agreement"] = sum(agree) / len(agree)
    return out


def timing_run(kind: str, workdir: Path, num_samples: int) -> dict:
    """Prune a model of a given size in a fresh subprocess; its own peak RSS is the number.

    Random models are built and saved by a separate subprocess first, so building the
    full in-memory model does not count towards the pruner's peak memory.
    """
    if kind == "smollm2-135m":
        src = "smollm2-135m"
    else:
        src = str(workdir / f"src-{kind}")
        build = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.tinymodels import tiny_config, random_dense_model, save_model_checkpoint
shapes = dict(tiny=dict(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=256,
                        num_layers=4, vocab_size=256),
              # TinyLlama-1.1B's shape
              random_1b=dict(hidden_size=2048, num_heads=32, num_kv_heads=4, head_dim=64,
                             intermediate_size=5632, num_layers=22, vocab_size=32000))[{kind!r}]
save_model_checkpoint(random_dense_model(tiny_config(**shapes)), {src!r}, overwrite=True)
"""
        res = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True)
        if res.returncode:
            return {"error": res.stderr[-2000:]}
    tiny = kind == "tiny"
    code = MEMORY_SAMPLER + f"""
import json, sys, time, torch
sys.path.insert(0, {str(ROOT)!r})
from olica_prune.method.pruner import PruneConfig, prune

ids = torch.randint(0, 256, ({num_samples}, 128), generator=torch.Generator().manual_seed(0))
before = status("VmHWM")
t = time.perf_counter()
rep = prune({src!r}, output={str(workdir / f"out-{kind}")!r}, overwrite=True,
            config=PruneConfig(sparsity=0.2, align={8 if tiny else 32}, v_align={4 if tiny else 8}),
            calibration_ids=ids, progress=False)
print(json.dumps(dict(seconds=time.perf_counter() - t, params=rep["sparsity"]["params_dense"],
                      achieved=rep["sparsity"]["achieved"], samples={num_samples},
                      peak_rss_gib=status("VmHWM") / 2**20,
                      peak_anon_gib=peak_anon[0] / 2**20,
                      rss_before_prune_gib=before / 2**20, dense_pass_s=rep["timings"].get("dense_pass_s"),
                      prune_s=rep["timings"]["prune_s"])))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        return {"error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsities", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.5],
                    help="give none to skip the grid")
    ap.add_argument("--methods", nargs="+", default=["wanda-sp", "paper", "olica", "magnitude"],
                    choices=list(METHODS))
    ap.add_argument("--extra-methods", nargs="*", default=["olica-nocal", "olica-norefit"], choices=list(METHODS),
                    help="methods run only at --ablation-sparsity")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[128])
    ap.add_argument("--max-chunks", type=int, default=40, help="cap evaluation chunks per domain and seq-len")
    ap.add_argument("--calibration", default=None, help="calibration source (default: PruneConfig's default)")
    ap.add_argument("--ablations", nargs="*", default=list(ABLATION), choices=list(ABLATION),
                    help="ablation rows at --ablation-sparsity")
    ap.add_argument("--no-pydoc", action="store_true", help="skip the pydoc extra column")
    ap.add_argument("--ablation-sparsity", type=float, default=0.2, help="0 to skip the V/O ablation")
    ap.add_argument("--timing", nargs="*", default=None,
                    help="prune-time/memory runs: tiny smollm2-135m random_1b (none by default)")
    ap.add_argument("--timing-samples", type=int, default=128)
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="where models are pruned and evaluated: cpu (default), cuda, auto")
    ap.add_argument("--self-ids", default=None,
                    help="a .pt file of self-sampled calibration ids to use for 'self' (sampled on another machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    ap.add_argument("--ablation-first", action="store_true", help="run the ablation rows before the grid")
    ap.add_argument("--keep", action="store_true", help="keep the pruned checkpoints (default: deleted after use)")
    ap.add_argument("--markdown-only", action="store_true", help="print the table of an existing --out file")
    ap.add_argument("--merge", action="store_true",
                    help="add to an existing --out file measured with the same settings; rows of the same "
                         "method and sparsity are replaced")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = ap.parse_args()
    if args.markdown_only:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    if Path(args.out).exists() and not (args.merge or args.overwrite):
        sys.exit(f"{args.out} exists: pass --merge to add these rows to it, --overwrite to replace it, "
                 "or --out elsewhere")
    torch.set_grad_enabled(False)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    self_ids = torch.load(args.self_ids) if args.self_ids else None

    from transformers import AutoTokenizer

    src = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(str(src))
    cal_source = args.calibration or PruneConfig(sparsity=0.2).dataset
    calib_cache: dict[str, torch.Tensor] = {}

    def calibration_for(source: str) -> torch.Tensor:
        if source.startswith("suite:"):  # a text of the suite (olica_prune.eval.suite), e.g. the calibration candidate
            source = str(suite.text_dir() / f"{source.removeprefix('suite:')}.txt")
        if source not in calib_cache:
            calib_cache[source] = calibration_mix(src, tok, source, num_samples=args.num_samples, seq_len=128,
                                                  seed=args.seed, device="cpu", progress=False, self_ids=self_ids)
        return calib_cache[source]

    calibration_for(cal_source)
    texts = {d: str(suite.text_dir() / f"{d}.txt") for d in suite.REPORT_DOMAINS}
    for d in suite.REPORT_DOMAINS:
        suite.domain_text(d)  # one clear error if the suite is not fetched
    if not args.no_pydoc:
        texts["pydoc (extra, not in the mean)"] = "pydoc"
    chunks = {d: {n: eval_chunks(tok, t, seq_len=n, max_chunks=args.max_chunks) for n in args.seq_lens}
              for d, t in texts.items()}
    dense = load_causal_lm(src, device=args.device)
    results = {"model": args.model, "commit": commit_hash(), "device": args.device,
               "report_domains": list(suite.REPORT_DOMAINS),
               "eval_text": "report domains of olica_prune.eval.suite; pydoc held-out split as an extra column",
               "calibration": f"{cal_source}, {args.num_samples} x 128 tokens, seed {args.seed}",
               "eval_tokens": {d: {str(n): int(c.numel()) for n, c in by_len.items()} for d, by_len in chunks.items()},
               "rows": [], "ablation": []}
    t = time.perf_counter()
    results["dense"] = evaluate(src, None, chunks, args.device)
    print(f"dense: {results['dense']}", flush=True)
    prior = None
    if args.merge and Path(args.out).exists():
        prior = json.loads(Path(args.out).read_text())
        for key in ("model", "calibration", "eval_tokens", "dense"):
            if not _same(prior.get(key), results[key]):
                sys.exit(f"--merge: {args.out} was measured with a different {key} "
                         f"({prior.get(key)!r} vs {results[key]!r}); write to another --out")

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged(prior, results), indent=2) + "\n")
        tmp.replace(args.out)  # a run killed mid-write leaves the previous file whole
    work = Path(tempfile.mkdtemp(prefix="olica-quality-"))

    def run(name, overrides, sparsity):
        out = work / f"{name.replace(' ', '_')}-{sparsity}"
        t0 = time.perf_counter()
        try:
            overrides = dict(overrides)
            ids = calibration_for(overrides.pop("dataset", cal_source))
            if overrides["method"] in PEERS:  # FLAP / SliceGPT: an in-memory model, no checkpoint
                method = overrides.pop("method")
                model, rep = PEERS[method](src, sparsity=sparsity, calibration_ids=ids, device=args.device,
                                           **overrides)
            else:
                rep = prune(str(src), output=out, overwrite=True, calibration_ids=ids, progress=False,
                            config=PruneConfig(sparsity=sparsity, device=args.device, **overrides))
                model = out
        except Exception as exc:  # a method that cannot reach a sparsity is a result, not a crash
            print(f"{name} @ {sparsity}: {type(exc).__name__}: {exc}", flush=True)
            return {"method": name, "sparsity": sparsity, "error": str(exc)}
        row = {"method": name, "sparsity": sparsity, "commit": results["commit"], "achieved": rep["sparsity"]["achieved"],
               "prune_s": round(time.perf_counter() - t0, 1), **({"peer": rep["peer"]} if "peer" in rep else {}),
               # the alpha the pruner resolved (it depends on the model's size when unset)
               **({"kl_alpha": rep["config"]["kl_alpha"]} if rep.get("config", {}).get("allocation") == "kl" else {}),
               **evaluate(model, dense, chunks, args.device)}
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        print(json.dumps(row), flush=True)
        return row

    def main_grid():
        for s in args.sparsities:
            for name in args.methods:
                results["rows"].append(run(name, METHODS[name], s))
                save()

    def ablation():
        if not args.ablation_sparsity:
            return
        for name in args.extra_methods:
            results["rows"].append(run(name, METHODS[name], args.ablation_sparsity))
            save()
        for name in args.ablations:
            results["ablation"].append(run(name, ABLATION[name], args.ablation_sparsity))
            save()

    try:
        # Results are saved after every row, so an interrupted run keeps what it measured.
        for step in ((ablation, main_grid) if args.ablation_first else (main_grid, ablation)):
            step()
        if args.timing:
            results["timing"] = {kind: timing_run(kind, work, args.timing_samples) for kind in args.timing}
        results["bench_seconds"] = round(time.perf_counter() - t, 1)
        results["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        save()
    finally:
        if args.keep:
            print(f"pruned checkpoints kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(merged(prior, results)))


def _same(a, b, rel: float = 1e-4) -> bool:
    """Equal, with floats compared to ``rel``: the dense perplexities of two runs
    differ in the last digits when the thread count differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b))
    return a == b


def merged(prior: dict | None, new: dict) -> dict:
    """``new`` added to ``prior``: new rows replace old rows of the same method and sparsity."""
    if prior is None:
        return new
    out = dict(prior)
    order = {name: i for i, name in enumerate(list(METHODS) + list(ABLATION))}
    for key in ("rows", "ablation"):
        fresh = {(r["method"], r["sparsity"]) for r in new[key]}
        rows = [r for r in prior.get(key, []) if (r["method"], r["sparsity"]) not in fresh] + new[key]
        out[key] = sorted(rows, key=lambda r: (r["sparsity"], order.get(r["method"], len(order))))
    if "timing" in new:
        out["timing"] = {**prior.get("timing", {}), **new["timing"]}
    # Rows carry their own commit; "commit" stays the first run's (the rows without one).
    out["merged_commits"] = sorted(set(prior.get("merged_commits", [])) | {new.get("commit", "unknown")})
    out["bench_seconds"] = round(prior.get("bench_seconds", 0) + new.get("bench_seconds", 0), 1)
    out["peak_rss_gib"] = max(prior.get("peak_rss_gib", 0), new.get("peak_rss_gib", 0))
    return out


def _ppl(x: float) -> str:
    return f"{x:.2f}" if x < 1e4 else f"{x:.2e}"


def markdown(results: dict, seq_len: int | None = None) -> str:
    """One row per (sparsity, method): PPL per report domain, their geometric
    mean, the extra (non-report) columns, top-1 agreement with dense; at
    ``seq_len`` (default: the shortest chunk length measured)."""
    d = results.get("dense")
    if d is None:
        return "(no results yet)"
    report = list(results["report_domains"])
    extra = [k for k in d["ppl"] if k not in report]
    n = str(seq_len or min(int(k) for k in d["ppl"][report[0]]))
    head = ("| sparsity | method | " + " | ".join(report) + f" | **geomean** | " + " | ".join(extra)
            + " | top-1 agreement |")
    lines = [head, "|" + "---|" * (4 + len(report) + len(extra))]

    def cells(r):
        return (" | ".join(_ppl(r["ppl"][k][n]) for k in report) + f" | **{_ppl(r[f'geomean_{n}'])}** | "
                + " | ".join(_ppl(r["ppl"][k][n]) for k in extra))

    lines.append(f"| 0 % | dense | {cells(d)} | 1.000 |")
    for r in results["rows"] + [dict(x, method=f"ablation: {x['method']}") for x in results["ablation"]]:
        if "error" in r:
            lines.append(f"| {r['sparsity']:.0%} | {r['method']} | " + " | ".join(
                "—" for _ in range(len(report) + len(extra) + 2)) + " |")
            continue
        lines.append(f"| {r['achieved']:.1%} | {r['method']} | {cells(r)} | {r['agreement']:.3f} |")
    out = "\n".join(lines)
    base = {r["sparsity"]: r for r in results["rows"] if r.get("method") == "wanda-sp" and "error" not in r}
    notes = []
    for name in ("olica", "paper"):
        ours = {r["sparsity"]: r for r in results["rows"] if r.get("method") == name and "error" not in r}
        for s in sorted(set(base) & set(ours)):
            inc_o = ours[s][f"geomean_{n}"] - d[f"geomean_{n}"]
            inc_w = base[s][f"geomean_{n}"] - d[f"geomean_{n}"]
            worse = [k for k in report if ours[s]["ppl"][k][n] >= base[s]["ppl"][k][n]]
            notes.append(f"- {name} at {s:.0%}: geomean PPL@{n} rise over dense is {inc_o / inc_w:.2f} x wanda-sp's; "
                         + (f"not better than wanda-sp on {', '.join(worse)}" if worse
                            else "better than wanda-sp on every report domain"))
    if "timing" in results:
        notes.append("\n| model | params | prune time (s) | peak RSS (GiB) | peak anonymous RSS (GiB) |\n"
                     "|---|---|---|---|---|")
        for kind, t in results["timing"].items():
            if "error" in t:
                notes.append(f"| {kind} | — | failed | — | — |")
            else:
                anon = f"{t['peak_anon_gib']:.2f}" if "peak_anon_gib" in t else "not measured"
                notes.append(f"| {kind} | {t['params']:,} | {t['seconds']:.1f} | {t['peak_rss_gib']:.2f} | {anon} |")
    return out + ("\n\n" + "\n".join(notes) if notes else "")


if __name__ == "__main__":
    main()
