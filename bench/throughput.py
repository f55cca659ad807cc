"""Generation throughput of dense vs Olica checkpoints, in one run, through vLLM.

    python bench/throughput.py --pruned out/smollm2-20     # dense default: smollm2-135m

Three engines on identical random-token prompts (fixed input/output lengths,
``ignore_eos``, the same engine settings):

- dense:  the source model;
- olica:  the pruned checkpoint (served by the olica_serve plugin);
- native: a stock ``LlamaForCausalLM`` with the same d/heads/vocab and a
  uniformly smaller FFN (fewer layers if the FFN alone cannot absorb the cut),
  random weights, sized to the pruned parameter count. olica vs native shows
  what our layers (low-rank Q/K, padded V, calibration branch, uneven widths)
  cost over a plain model of the same size.

Each run is a fresh ``vllm.LLM`` in its own subprocess (memory is freed, no
engine state is shared), and runs are interleaved: dense, olica, native,
dense, ... ``--repeats`` times; the median is reported. Per run: one warm-up
call, the timed full generation, then a timed prefill-only pass (max_tokens=1)
from which decode tokens/s are estimated. Prefix caching is off so no run
reuses another's prefill. Results: bench/results/throughput.json and a
Markdown table on stdout. CPU numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from olica_prune.contract import ModelDims, OlicaSpec, count_parameters  # noqa: E402

# vLLM on CPU refuses to start when it cannot reserve its default share of
# memory; a fixed KV cache (GiB) avoids that and is plenty for these runs.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

KINDS = ("dense", "olica", "native")
RESULT_TAG = "OLICA_BENCH_RESULT "
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# --------------------------------------------------------------------------- model sizes


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def param_count(config: dict) -> int:
    """Parameters of a dense or Olica checkpoint, from its config alone."""
    spec = OlicaSpec.from_config(config) if "olica" in config else None
    return count_parameters(spec, ModelDims.from_config(config))


def bytes_read_per_step(config: dict, dtype_bytes: int) -> int:
    """Weight bytes one decode step reads: every matrix once, but only a few
    rows of an untied input embedding (a tied one is read whole as lm_head)."""
    dims = ModelDims.from_config(config)
    params = param_count(config)
    if not dims.tie_word_embeddings:
        params -= dims.vocab_size * dims.hidden_size
    return params * dtype_bytes


def native_config(dense: dict, target_params: int, *, align: int = 32, min_ffn: int = 64) -> dict:
    """A plain Llama config like ``dense`` with about ``target_params`` parameters.

    The FFN width shrinks uniformly first (it is what pruning mostly removes);
    only if that would leave fewer than ``min_ffn`` neurons do layers go too.
    """
    dims = ModelDims.from_config(dense)
    d, L, m = dims.hidden_size, dims.num_layers, dims.intermediate_size
    ffn_per_neuron = 3 * d  # gate row + up row + down column
    base = count_parameters(None, _with(dims, num_layers=0))  # embeddings + final norm
    per_layer_rest = (param_count(dense) - base) // L - ffn_per_neuron * m  # attention + norms
    new_m = round((target_params - base - L * per_layer_rest) / (ffn_per_neuron * L) / align) * align
    new_L = L
    if new_m < min_ffn:  # the cut is deeper than the FFNs: keep the dense width, drop layers
        new_m = m
        new_L = max(1, round((target_params - base) / (per_layer_rest + ffn_per_neuron * m)))
    cfg = {k: v for k, v in dense.items() if k not in ("olica", "_name_or_path", "_model_name_or_path")}
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", intermediate_size=int(new_m),
               num_hidden_layers=int(new_L))
    return cfg


def _with(dims: ModelDims, **changes) -> ModelDims:
    import dataclasses

    return dataclasses.replace(dims, **changes)


def build_native_model(dense_dir: Path, config: dict, out: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised LlamaForCausalLM of ``config`` with the dense tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from olica_prune.io.writer import TOKENIZER_FILES

    torch.manual_seed(seed)
    hf_cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    hf_cfg.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(hf_cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (dense_dir / name).is_file() and name != "config.json":
            shutil.copy2(dense_dir / name, out / name)
    return out


def native_model_for(dense_dir: Path, target_params: int, workdir: Path) -> Path:
    """``workdir/native``: the native Llama of ``target_params`` built from ``dense_dir``,
    reused when one of the same FFN width is already there (rebuilt otherwise)."""
    config = native_config(read_config(dense_dir), target_params)
    native_dir = Path(workdir) / "native"
    if not (native_dir / "config.json").is_file() or read_config(native_dir).get("intermediate_size") != \
            config["intermediate_size"]:
        shutil.rmtree(native_dir, ignore_errors=True)
        build_native_model(dense_dir, config, native_dir)
    return native_dir


# --------------------------------------------------------------------------- one engine run (subprocess)


def worker(spec: dict) -> dict:
    """Load one engine, warm it up, time full generation and a prefill-only pass."""
    from vllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": ids} for ids in json.loads(Path(spec["prompts"]).read_text())]
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], dtype=spec["dtype"], enforce_eager=spec["enforce_eager"], seed=0,
              max_model_len=spec["max_model_len"], max_num_seqs=len(prompts), enable_prefix_caching=False)
    load_s = time.perf_counter() - t0
    full = SamplingParams(temperature=0, max_tokens=spec["output_len"], min_tokens=spec["output_len"],
                          ignore_eos=True, detokenize=False)
    prefill = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)

    t0 = time.perf_counter()
    outs = llm.generate(prompts, full, use_tqdm=False)
    full_s = time.perf_counter() - t0
    n_out = [len(o.outputs[0].token_ids) for o in outs]
    if any(n != spec["output_len"] for n in n_out):
        raise RuntimeError(f"expected {spec['output_len']} tokens per prompt, got {sorted(set(n_out))}")
    t0 = time.perf_counter()
    llm.generate(prompts, prefill, use_tqdm=False)
    prefill_s = time.perf_counter() - t0

    n, n_in, n_gen = len(prompts), len(prompts[0]["prompt_token_ids"]), spec["output_len"]
    decode_s = max(full_s - prefill_s, 1e-9)
    return {
        "load_s": load_s,
        "elapsed_s": full_s,
        "prefill_s": prefill_s,
        "output_tok_s": n * n_gen / full_s,
        "total_tok_s": n * (n_in + n_gen) / full_s,
        "prefill_tok_s": n * n_in / prefill_s,
        "decode_tok_s": n * (n_gen - 1) / decode_s,
    }


def run_engine(kind: str, model: Path, common: dict, workdir: Path, tag: str, *, script: str = __file__) -> dict:
    """Run ``script --_worker SPEC`` in a fresh process; return the JSON it printed after RESULT_TAG."""
    spec = dict(common, model=str(model))
    log = workdir / f"{tag}.log"
    cmd = [sys.executable, str(Path(script).resolve()), "--_worker", json.dumps(spec)]
    with open(log, "wb") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join(lines[-40:])
    raise RuntimeError(f"{kind} run failed (exit {proc.returncode}); log {log}:\n{tail}")


# --------------------------------------------------------------------------- orchestration


def make_prompts(tokenizer_dir: Path, *, num_prompts: int, input_len: int, seed: int) -> list[list[int]]:
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = set(tok.all_special_ids)
    pool = np.array([i for i in range(len(tok)) if i not in special])
    rng = np.random.default_rng(seed)
    return rng.choice(pool, size=(num_prompts, input_len)).tolist()


def environment(enforce_eager: bool, dtype: str) -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": version("torch"),
        "vllm": version("vllm") or version("vllm-cpu"),
        "transformers": version("transformers"),
        "enforce_eager": enforce_eager,
        "dtype": dtype,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
    }


def summarize(runs: list[dict], models: dict, *, num_prompts: int) -> dict:
    out = {}
    for kind in models:
        rs = [r for r in runs if r["kind"] == kind]
        med = {k: statistics.median(r[k] for r in rs) for k in ("output_tok_s", "total_tok_s", "prefill_tok_s",
                                                                "decode_tok_s", "elapsed_s")}
        steps_s = med["decode_tok_s"] / num_prompts  # every sequence advances once per step
        med["weight_GB_s"] = models[kind]["bytes_per_step"] * steps_s / 1e9
        med["spread_output_tok_s"] = [min(r["output_tok_s"] for r in rs), max(r["output_tok_s"] for r in rs)]
        out[kind] = med
    dense = out["dense"]["output_tok_s"]
    for kind in out:
        out[kind]["speedup_vs_dense"] = out[kind]["output_tok_s"] / dense
        out[kind]["ideal_speedup"] = models["dense"]["params"] / models[kind]["params"]
    if "native" in out:
        out["olica"]["vs_native"] = out["olica"]["output_tok_s"] / out["native"]["output_tok_s"]
    return out


def markdown(result: dict) -> str:
    s, m, e = result["summary"], result["models"], result["settings"]
    head = (f"{e['num_prompts']} prompts x {e['input_len']} in / {e['output_len']} out, {e['dtype']}, "
            f"enforce_eager={e['enforce_eager']}, median of {e['repeats']} interleaved runs; "
            f"{result['environment']['cpu']} ({result['environment']['affinity']} cores)")
    rows = ["| model | params | ideal speed-up | output tok/s | speed-up vs dense | total tok/s | prefill tok/s "
            "| decode tok/s | weights GB/s (decode, approx) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, r in s.items():
        lo, hi = r["spread_output_tok_s"]
        rows.append(f"| {kind} ({m[kind]['describe']}) | {m[kind]['params'] / 1e6:.1f} M | {r['ideal_speedup']:.3f}x "
                    f"| {r['output_tok_s']:.1f} ({lo:.1f}-{hi:.1f}) | {r['speedup_vs_dense']:.3f}x "
                    f"| {r['total_tok_s']:.1f} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} "
                    f"| {r['weight_GB_s']:.2f} |")
    return head + "\n\n" + "\n".join(rows)


def answer_worker(argv: list[str], worker) -> bool:
    """In a process started by :func:`run_engine`: run ``worker`` on the spec, print its result; True if so."""
    if argv[:1] != ["--_worker"]:
        return False
    print(RESULT_TAG + json.dumps(worker(json.loads(argv[1]))), flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if answer_worker(argv, worker):
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", default="smollm2-135m", help="dense source model (dir, .gguf or alias)")
    p.add_argument("--pruned", required=True, help="Olica checkpoint pruned from --dense")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--enforce-eager", action="store_true",
                   help="eager mode, reported separately (default: vLLM's default compiled mode, as `vllm serve` "
                        "gives users; it starts in about 110 s instead of 30 s on 2 CPU cores)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES), help="same for all engines")
    p.add_argument("--no-native", dest="native", action="store_false", help="skip the native same-size model")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "throughput.json"))
    p.add_argument("--workdir", default=None, help="keep logs, prompts and the native model here")
    args = p.parse_args(argv)

    from olica_prune.io.sources import resolve_model

    dense_dir = resolve_model(args.dense)
    pruned_dir = Path(args.pruned)
    dense_cfg, pruned_cfg = read_config(dense_dir), read_config(pruned_dir)
    if "olica" not in pruned_cfg:
        p.error(f"{pruned_dir} is not an Olica checkpoint (config.json has no 'olica' block)")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="olica-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    dtype_bytes = DTYPE_BYTES[args.dtype]

    models = {"dense": (dense_dir, dense_cfg), "olica": (pruned_dir, pruned_cfg)}
    if args.native:
        native_dir = native_model_for(dense_dir, param_count(pruned_cfg), workdir)
        models["native"] = (native_dir, read_config(native_dir))
    info = {}
    for kind, (path, cfg) in models.items():
        dims = ModelDims.from_config(cfg)
        describe = {"dense": f"{dims.num_layers} layers, FFN {dims.intermediate_size}",
                    "olica": "Olica checkpoint",
                    "native": f"Llama {dims.num_layers} layers, FFN {dims.intermediate_size}"}[kind]
        info[kind] = {"path": str(path), "params": param_count(cfg), "describe": describe,
                      "bytes_per_step": bytes_read_per_step(cfg, dtype_bytes)}
        if kind == "olica":
            info[kind]["sparsity"] = cfg["olica"].get("sparsity", {})

    prompts_path = workdir / "prompts.json"
    prompts_path.write_text(json.dumps(make_prompts(dense_dir, num_prompts=args.num_prompts,
                                                    input_len=args.input_len, seed=args.seed)))
    common = {"prompts": str(prompts_path), "output_len": args.output_len, "dtype": args.dtype,
              "enforce_eager": args.enforce_eager,
              "max_model_len": args.input_len + args.output_len + 16}
    runs = []
    for rep in range(args.repeats):
        for kind, (path, _) in models.items():
            r = run_engine(kind, path, common, workdir, f"{kind}-{rep}")
            r.update(kind=kind, repeat=rep)
            runs.append(r)
            print(f"[{rep + 1}/{args.repeats}] {kind:6s} {r['output_tok_s']:8.1f} output tok/s  "
                  f"({r['elapsed_s']:.1f} s; prefill {r['prefill_tok_s']:.0f} tok/s, "
                  f"decode {r['decode_tok_s']:.1f} tok/s; load {r['load_s']:.0f} s)", flush=True)

    from bench.common import commit_hash

    result = {
        "commit": commit_hash(),
        "settings": {"num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
                     "repeats": args.repeats, "dtype": args.dtype, "enforce_eager": args.enforce_eager,
                     "seed": args.seed, "ignore_eos": True, "prefix_caching": False,
                     "max_num_seqs": args.num_prompts, "max_model_len": common["max_model_len"]},
        "environment": environment(args.enforce_eager, args.dtype),
        "models": info,
        "runs": runs,
        "summary": summarize(runs, info, num_prompts=args.num_prompts),
        "workdir": str(workdir),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    s = result["summary"]
    if "native" in s:
        print(f"\nolica vs same-size native Llama: {s['olica']['output_tok_s'] / s['native']['output_tok_s']:.3f}x "
              "output tok/s (1.0 = our layers cost nothing over a plain model of the same size)")
    print(f"\nwrote {out} (logs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
