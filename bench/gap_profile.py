"""Where a decode step's time goes: dense vs Olica vs a native Llama of the same size.

    python bench/gap_profile.py --pruned runs/smol-20          # dense default: smollm2-135m

Each model runs in a fresh in-process vLLM engine (``enforce_eager``: module
boundaries exist only in eager mode; the compiled mode users get fuses the
small ops, so its totals are lower, see ``bench/serving.py``). Every module
of interest gets a ``torch.profiler.record_function`` range:

- GEMMs by role: ``qkv`` (with the low-rank Q/K B factors), ``o_proj``,
  ``gate_up`` (with the calibration A rows), ``down`` (with the calibration
  B columns), ``lm_head`` (the logits GEMM and its gather);
- ``attention`` (vLLM's attention op with its KV-cache write), ``rope``,
  ``norms``, ``act`` (SiluAndMul), ``embed``;
- ``attn_glue`` / ``mlp_glue``: what the attention / FFN module spends
  outside its children (splitting the fused QKV output, padding V to the
  head size and slicing it back, the calibration split/concat);
- ``outside_model``: the rest of the engine step (scheduler, input
  preparation, sampler, detokenisation off).

A full generation (N prompts x input_len in, output_len out, ``ignore_eos``)
and a prefill-only pass (1 output token) are profiled; their difference over
``output_len - 1`` steps is one decode step. The gap to the ideal speed-up
(the parameter ratio) is then split by category:
``time_olica[c] - time_dense[c] * params_olica / params_dense``; the parts sum
to the whole gap, so a positive part is a category that shrank less than the
parameters did. Results: bench/results/gap_profile.json (with the commit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from olica_prune.eval import suite  # noqa: E402
from engine import answer_worker, environment, make_prompts, run_engine  # noqa: E402
from native import native_model_for, param_count, read_config  # noqa: E402

# module name suffix -> category (first match wins; checked on the last name part)
LEAF_CATEGORIES = {
    "qkv_proj": "qkv", "q_b_proj": "qkv", "k_b_proj": "qkv",
    "o_proj": "o_proj",
    "gate_up_proj": "gate_up",
    "down_proj": "down",
    "attn": "attention",
    "rotary_emb": "rope",
    "input_layernorm": "norms", "post_attention_layernorm": "norms", "norm": "norms",
    "act_fn": "act",
    "embed_tokens": "embed",
    "logits_processor": "lm_head",
}
PARENTS = {"self_attn": "attn_glue", "mlp": "mlp_glue"}
CATEGORIES = ("qkv", "o_proj", "gate_up", "down", "lm_head", "attention", "rope", "norms", "act", "embed",
              "attn_glue", "mlp_glue", "outside_model")
GEMMS = ("qkv", "o_proj", "gate_up", "down", "lm_head")


def instrument(model) -> int:
    """Wrap the forward of every module named in LEAF_CATEGORIES / PARENTS, and the model's."""
    import torch

    def wrap(module, label):
        inner = module.forward

        def forward(*args, **kwargs):
            with torch.profiler.record_function(label):
                return inner(*args, **kwargs)

        module.forward = forward

    n = 0
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in LEAF_CATEGORIES:
            wrap(module, "olica_leaf::" + LEAF_CATEGORIES[last])
            n += 1
        elif last in PARENTS:
            wrap(module, "olica_parent::" + PARENTS[last])
            n += 1
    inner_model = getattr(model, "model", None)
    if inner_model is not None:
        wrap(inner_model, "olica_model::layers")
    return n


def categorize(events) -> dict[str, float]:
    """Seconds per category from profiler key averages (CPU totals, children included)."""
    tot = {}
    for e in events:
        if e.key.startswith(("olica_leaf::", "olica_parent::", "olica_model::")):
            tot[e.key] = tot.get(e.key, 0.0) + e.cpu_time_total / 1e6
    out = {c: tot.get("olica_leaf::" + c, 0.0) for c in CATEGORIES}
    # parents: their own time outside the leaves they contain
    attn_leaves = sum(out[c] for c in ("qkv", "o_proj", "attention", "rope"))
    mlp_leaves = sum(out[c] for c in ("gate_up", "down", "act"))
    out["attn_glue"] = tot.get("olica_parent::attn_glue", 0.0) - attn_leaves
    out["mlp_glue"] = tot.get("olica_parent::mlp_glue", 0.0) - mlp_leaves
    out["_model_forward"] = tot.get("olica_model::layers", 0.0)
    return out


def worker(spec: dict) -> dict:
    """One engine in this process: profile a full generation and a prefill-only pass."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the model runs in this process, under the profiler
    import torch
    from vllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": ids} for ids in json.loads(Path(spec["prompts"]).read_text())]
    llm = LLM(model=spec["model"], dtype=spec["dtype"], enforce_eager=True, seed=0,
              max_model_len=spec["max_model_len"], max_num_seqs=len(prompts), enable_prefix_caching=False)
    wrapped = llm.apply_model(instrument)[0]
    full = SamplingParams(temperature=0, max_tokens=spec["output_len"], min_tokens=spec["output_len"],
                          ignore_eos=True, detokenize=False)
    prefill = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)

    result = {"wrapped_modules": wrapped}
    for name, params in (("full", full), ("prefill", prefill)):
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)  # unprofiled wall time
        result[f"{name}_wall_s"] = time.perf_counter() - t0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            wall = time.perf_counter() - t0
        cats = categorize(prof.key_averages())
        cats["outside_model"] = wall - cats["_model_forward"]
        result[f"{name}_profiled_wall_s"] = wall
        result[name] = cats
    return result


def decode_step(r: dict, output_len: int) -> dict[str, float]:
    """Seconds per decode step per category: (full - prefill) / (output_len - 1)."""
    steps = output_len - 1
    return {c: (r["full"][c] - r["prefill"][c]) / steps for c in CATEGORIES}


def gap_table(steps: dict[str, dict[str, float]], params: dict[str, int]) -> dict:
    dense, olica = steps["dense"], steps["olica"]
    ratio = params["olica"] / params["dense"]
    t = {k: sum(v.values()) for k, v in steps.items()}
    parts = {c: olica[c] - dense[c] * ratio for c in CATEGORIES}
    out = {
        "ideal_speedup": 1 / ratio,
        "profiled_speedup": t["dense"] / t["olica"],
        "achieved_fraction_of_ideal": (t["dense"] / t["olica"]) * ratio,
        "gap_ms_per_step": (t["olica"] - t["dense"] * ratio) * 1e3,
        "gap_parts_ms_per_step": {c: v * 1e3 for c, v in parts.items()},
    }
    if "native" in steps:
        native = steps["native"]
        out["olica_vs_native_step_time"] = t["olica"] / t["native"]
        out["olica_minus_native_ms_per_step"] = {c: (olica[c] - native[c]) * 1e3 for c in CATEGORIES}
    return out


def markdown(result: dict) -> str:
    steps = result["decode_step_ms"]
    kinds = list(steps)
    rows = ["| category | " + " | ".join(f"{k} ms/step" for k in kinds) + " | gap part (ms) |",
            "|---|" + "---:|" * (len(kinds) + 1)]
    parts = result["gap"]["gap_parts_ms_per_step"]
    for c in CATEGORIES:
        rows.append(f"| {c} | " + " | ".join(f"{steps[k][c]:.2f}" for k in kinds) + f" | {parts[c]:+.2f} |")
    rows.append("| **total** | " + " | ".join(f"**{sum(steps[k].values()):.2f}**" for k in kinds)
                + f" | **{result['gap']['gap_ms_per_step']:+.2f}** |")
    g = result["gap"]
    tail = (f"\nideal speed-up (params) {g['ideal_speedup']:.3f}x, profiled decode-step speed-up "
            f"{g['profiled_speedup']:.3f}x = {g['achieved_fraction_of_ideal']:.3f} of ideal")
    if "olica_vs_native_step_time" in g:
        tail += f"; olica step time / native {g['olica_vs_native_step_time']:.3f}"
    return "\n".join(rows) + tail


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if answer_worker(argv, worker):
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", default="smollm2-135m", help="dense source model (dir, .gguf or alias)")
    p.add_argument("--pruned", required=True, help="Olica checkpoint pruned from --dense")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--no-native", dest="native", action="store_false")
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "gap_profile.json"))
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if args.output_len < 2:
        p.error("--output-len must be at least 2 (decode steps are measured after the first token)")

    from olica_prune.io.sources import resolve_model

    dense_dir = resolve_model(args.dense)
    pruned_dir = Path(args.pruned)
    if "olica" not in read_config(pruned_dir):
        p.error(f"{pruned_dir} is not an Olica checkpoint (config.json has no 'olica' block)")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="olica-gap-"))
    workdir.mkdir(parents=True, exist_ok=True)
    models = {"dense": dense_dir, "olica": pruned_dir}
    if args.native:
        models["native"] = native_model_for(dense_dir, param_count(read_config(pruned_dir)), workdir)
    prompts_path = workdir / "prompts.json"
    prompts_path.write_text(json.dumps(make_prompts(dense_dir, num_prompts=args.num_prompts,
                                                    input_len=args.input_len, seed=0)))
    common = {"prompts": str(prompts_path), "output_len": args.output_len, "dtype": args.dtype,
              "max_model_len": args.input_len + args.output_len + 16}
    raw, steps, params = {}, {}, {}
    for kind, path in models.items():
        r = run_engine(kind, path, common, workdir, f"gap-{kind}", script=__file__)
        raw[kind] = r
        steps[kind] = decode_step(r, args.output_len)
        params[kind] = param_count(read_config(path))
        print(f"{kind:6s} decode step {sum(steps[kind].values()) * 1e3:7.2f} ms (profiled); "
              f"unprofiled full generation {r['full_wall_s']:.1f} s", flush=True)

    from bench.common import commit_hash

    result = {
        "commit": commit_hash(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
                     "dtype": args.dtype, "enforce_eager": True, "profiler": "torch.profiler CPU, record_function "
                     "per module"},
        "environment": environment(True, args.dtype),
        "models": {k: {"path": str(v), "params": params[k]} for k, v in models.items()},
        "decode_step_ms": {k: {c: v * 1e3 for c, v in s.items()} for k, s in steps.items()},
        "gap": gap_table(steps, params),
        "raw": raw,
    }
    out = Path(args.output)
    suite._write_atomic(out, json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    print(f"\nwrote {out} (logs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
