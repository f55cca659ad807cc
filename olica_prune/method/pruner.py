"""Layer-by-layer pruning: the orchestration around the math in ``linalg``.

One entry point, :func:`prune`. The source model is streamed: one decoder
layer's weights and the calibration activations are in memory at a time, and
each pruned layer is written out as soon as it is done. Layer ``l`` is pruned
on the outputs of the already-pruned layers ``< l``.

Before the prune pass, the widths are planned. Under the default ``kl``
allocation a sensitivity pass (8 sequences) measures how much cutting each
layer's FFN alone changes the output distribution, and a dense ranking pass (a
share of the sequences) picks the layers whose FFN residuals are most linearly
predictable for a calibration branch. With ``allocation="adaptive"`` the dense
pass reads every sequence and also measures what every FFN neuron and V/O
direction carries (``budget.LayerCosts``); the widths are planned from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .budget import Alignment, BudgetError, LayerCosts, default_kl_alpha, plan_widths
from ..io import preflight
from ..contract import ARCHITECTURE, ModelDims, OlicaSpec, count_parameters, layer_tensor_shapes
from .layers import SourceWeights, build_layer, layer_forward, load_config, read_dense_layer, rotary
from .linalg import (
    damped_cholesky,
    ffn_contribution_scores,
    ffn_paper_scores,
    ffn_magnitude_scores,
    ffn_wanda_scores,
    fit_calibration,
    lowrank_factorize,
    ranked_basis,
    ridge_solve,
    truncate_vo,
    vo_basis,
)
from ..io.selfcal import ENGINES
from ..io.writer import CheckpointWriter, check_output_path

METHODS = ("olica", "magnitude", "wanda-sp")
REPORT_BATCHES = 2  # batches on which per-layer errors are reported (token-relative)


class PruneError(ValueError):
    pass


# Presets fill every setting the user left unset (None). "paper" is the
# configuration of the Olica paper; "olica" is the project default, chosen on
# the DEV domains of the evaluation suite (olica_prune.eval.suite.DEV_DOMAINS;
# bench/dev_sweep.py, bench/results/dev/), never on the report domains.
# Values given as strings are in units of the target sparsity s ("1.5s", "s/2").
PRESETS: dict[str, dict[str, Any]] = {
    "olica": {
        # The paper's split (Q/K low rank, V/O at s/2, FFN the rest) with: the V/O
        # basis weighted by what the heads read (attention outputs) and exact OND,
        # the kept down_proj columns refitted by a ridge shrunk towards the original
        # columns (ridge 1: half way in each direction's own scale); the FFN budget
        # spread over the layers by their measured output KL (alpha: budget.default_kl_alpha, by sparsity).
        "allocation": "kl", "qk_sparsity": "1.5s", "vo_sparsity": "s/2", "calibration": True, "refit_down": True,
        "refit_ridge": 1.0, "vo_stats": "context", "ond": "exact", "ffn_score": "paper", "spare_ends": True,
    },
    "paper": {
        # Q/K low rank removing 2s of their params, V/O removing 2s/(1+3) = s/2,
        # FFN the rest; L/5 calibrated layers; FFN scores from gate/up/down;
        # V/O weighted by the value inputs (fast OND); no down_proj refit.
        "qk_sparsity": "2s", "vo_sparsity": "s/2", "calibration": True, "refit_down": False,
        "refit_ridge": 1e-3, "vo_stats": "input", "ond": "fast", "ffn_score": "paper", "spare_ends": True,
        "allocation": "uniform",
    },
}
FFN_SCORES = ("contribution", "paper", "wanda", "magnitude")
QK_CAP = 0.8  # Q/K low rank never removes more than this share of Q/K (2s would remove all at s = 0.5)


def _in_units_of_s(value, s: float):
    if not isinstance(value, str):
        return value
    if value == "s/2":
        return s / 2
    if value.endswith("s"):
        return float(value[:-1] or 1) * s
    return value


@dataclasses.dataclass
class PruneConfig:
    """What to prune and how. Validated on construction; unset (None) settings
    come from ``preset``."""

    sparsity: float
    method: str = "olica"  # olica | magnitude | wanda-sp
    preset: str = "olica"  # olica (project default) | paper
    ond: str | None = None  # fast | exact | separate | none  (olica only)
    allocation: str | None = None  # kl (olica preset) | uniform (paper preset, baselines) | adaptive
    kl_alpha: float | None = None  # kl allocation: layer i loses an FFN share ∝ sensitivity_i ** -kl_alpha
    #                                (None: budget.default_kl_alpha(sparsity), 1 up to 30 %, 0.25 from 50 %)
    kl_samples: int = 8  # kl allocation: calibration sequences the sensitivity pass reads
    kl_vo: bool = False  # kl allocation: scale each layer's V/O fraction like its FFN fraction (else uniform)
    qk_sparsity: float | None = None  # fraction of Q/K params removed by low rank
    vo_sparsity: float | None = None  # fraction of V/O width removed per pruned layer (None: same as FFN)
    calibration: bool | None = None  # linear calibration of FFN residuals (olica only)
    calibration_layers: int | None = None  # how many layers get a branch (default L/5)
    calibration_rank: int | None = None  # default: the rank alignment
    calibration_ranking: str = "dense"  # which layers get a branch: ranked in a dense pass | on the pruned stream
    ranking_samples: int = 32  # calibration sequences the dense ranking pass reads (at least 4·hidden_size tokens)
    ridge: float = 1e-3  # per-direction (Jacobi) ridge of the calibration branch fit (shrinks towards no branch)
    refit_ridge: float | None = None  # same for the down_proj refit (shrinks towards the original columns)
    refit_down: bool | None = None  # least-squares down_proj over the kept FFN neurons
    token_weighting: bool = False  # olica: weigh tokens by 1/‖residual stream‖² in every fit
    vo_stats: str | None = None  # V/O basis weighted by attention outputs (context) or value inputs (input)
    spare_ends: bool | None = None  # keep the first and last layer dense (models of >= 8 layers)
    ffn_score: str | None = None  # contribution | paper | wanda | magnitude (default: the method's)
    align: int = 32
    v_align: int = 8
    dataset: str = "self"  # calibration text: sampled from the model itself (chosen on the dev domains)
    sampler: str = "auto"  # engine that samples "self" text: vllm | transformers | auto (vllm when installed)
    num_samples: int = 128
    seq_len: int = 128
    seed: int = 0
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"  # of the written checkpoint
    max_shard_gb: float = 2.0  # output shard size (tensors are written as they are pruned, not held)

    def __post_init__(self) -> None:
        if not (0 < self.sparsity <= 0.9):
            raise PruneError(f"sparsity must be in (0, 0.9], got {self.sparsity}")
        if not self.max_shard_gb > 0:
            raise PruneError(f"the output shard size must be positive, got {self.max_shard_gb} GB")
        if self.method not in METHODS:
            raise PruneError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.preset not in PRESETS:
            raise PruneError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.sampler not in ENGINES:
            raise PruneError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(ENGINES)}")
        if self.method != "olica":
            # Baselines: the same units, scored their way, nothing else.
            self.ond, self.calibration, self.qk_sparsity = "none", False, 0.0
            self.allocation = self.allocation or "uniform"
            self.spare_ends = bool(self.spare_ends)
            self.refit_down = bool(self.refit_down)
            self.vo_stats = self.vo_stats or "context"
            # The method defines its own scores and split: nothing from the olica presets.
            self.ffn_score = self.ffn_score or ("wanda" if self.method == "wanda-sp" else "magnitude")
            self.refit_ridge = 1e-3 if self.refit_ridge is None else self.refit_ridge
        for name, value in PRESETS[self.preset].items():
            if self.method != "olica" and name == "vo_sparsity":
                continue  # baselines: V/O and FFN lose the same fraction (None), unless given
            if getattr(self, name) is None:
                value = _in_units_of_s(value, self.sparsity)
                setattr(self, name, min(value, QK_CAP) if name == "qk_sparsity" else value)
        if self.ond not in ("fast", "exact", "separate", "none"):
            raise PruneError(f"unknown --ond {self.ond!r}; choose fast, exact, separate or none")
        if self.vo_stats not in ("context", "input"):
            raise PruneError(f"unknown vo_stats {self.vo_stats!r}; choose context or input")
        if self.ffn_score not in FFN_SCORES:
            raise PruneError(f"unknown ffn score {self.ffn_score!r}; choose one of {', '.join(FFN_SCORES)}")
        self.allocation = self.allocation or "uniform"
        if self.allocation not in ("adaptive", "uniform", "kl"):
            raise PruneError(f"unknown allocation {self.allocation!r}; choose adaptive, kl or uniform")
        if self.allocation == "kl" and self.method != "olica":
            raise PruneError("kl allocation is an olica option; the baselines prune every layer uniformly")
        if self.kl_alpha is None:
            self.kl_alpha = default_kl_alpha(self.sparsity)
        if not (0 <= self.kl_alpha <= 4):
            raise PruneError(f"kl-alpha must be in [0, 4], got {self.kl_alpha}")
        if not (0 <= self.qk_sparsity < 1):
            raise PruneError(f"qk-sparsity must be in [0, 1), got {self.qk_sparsity}")
        if self.vo_sparsity is not None and not (0 <= self.vo_sparsity < 1):
            raise PruneError(f"vo-sparsity must be in [0, 1), got {self.vo_sparsity}")
        if self.calibration_ranking not in ("dense", "pruned"):
            raise PruneError(f"unknown calibration ranking {self.calibration_ranking!r}; choose dense or pruned")
        if not (self.ridge >= 0 and self.refit_ridge >= 0):
            raise PruneError(f"ridge must be >= 0, got {self.ridge} / {self.refit_ridge}")
        for name in ("align", "v_align", "num_samples", "seq_len", "batch_size", "ranking_samples",
                     "kl_samples"):
            if getattr(self, name) <= 0:
                raise PruneError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("calibration_layers", "calibration_rank"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise PruneError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise PruneError(f"unknown dtype {self.dtype!r}; choose auto, float32, bfloat16 or float16")


def prune(model: str, *, output: str | Path, config: PruneConfig, overwrite: bool = False,
          progress: bool = True, calibration_ids: torch.Tensor | None = None,
          layer_specs: list | None = None, recover=None) -> dict[str, Any]:
    """Prune ``model`` (dir, .gguf, hub id or alias) into an Olica checkpoint at ``output``.

    ``calibration_ids`` (``[n, seq]``) replaces the dataset named in ``config``;
    ``layer_specs`` (one ``LayerSpec`` per layer) replaces the budget planner;
    ``recover`` (a ``recover.RecoverConfig``) fits the pruned model to the dense one
    afterwards (``recover.recover``). Returns the report also written to ``olica_report.json``.
    """
    if recover is not None:
        return _prune_and_recover(model, output=Path(output), config=config, overwrite=overwrite,
                                  progress=progress, calibration_ids=calibration_ids, layer_specs=layer_specs,
                                  recover_config=recover)
    from transformers import AutoTokenizer

    from ..io.sources import resolve_model

    t_start = time.perf_counter()
    output = Path(output)
    device = preflight.parse_device(config.device)
    check_output_path(output, overwrite=overwrite)
    src = resolve_model(model)
    preflight.check_output(output, src)
    # Everything about the source is checked before transformers reads it and
    # before any calibration text is sampled.
    raw_config = preflight.read_raw_config(src)
    preflight.check_not_quantized(src, raw_config)
    adapter = preflight.check_architecture(raw_config)
    if calibration_ids is None:
        preflight.check_tokenizer(src)
    hf_config, _ = load_config(src)
    dims = ModelDims.from_config(hf_config)
    weights = SourceWeights(src)
    needed = ["model.embed_tokens.weight", "model.norm.weight"] + (
        [] if dims.tie_word_embeddings else ["lm_head.weight"])
    for i in range(dims.num_layers):
        needed += [f"model.layers.{i}.{n}" for n in layer_tensor_shapes(dims.dense_layer(), dims,
                                                                        qkv_bias=adapter.qkv_bias)]
    weights.check_complete(needed)
    out_dtype = weights.source_dtype() if config.dtype == "auto" else getattr(torch, config.dtype)

    # Known before any calibration text is read or sampled, so a bad setting fails at once.
    n_tokens = calibration_ids.numel() if calibration_ids is not None else config.num_samples * config.seq_len
    cal_layers_n = 0
    if config.calibration:
        cal_layers_n = config.calibration_layers if config.calibration_layers is not None else max(
            1, round(dims.num_layers / 5))
        cal_layers_n = min(cal_layers_n, dims.num_layers)
        if n_tokens < 2 * dims.hidden_size:
            raise PruneError(
                f"linear calibration needs at least 2×hidden_size = {2 * dims.hidden_size} calibration tokens for "
                f"its ridge solve, got {n_tokens}; raise --num-samples/--seq-len or pass --no-calibration"
            )
    if calibration_ids is None:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
        calibration_ids = calibration_mix(src, tokenizer, config.dataset, num_samples=config.num_samples,
                                          seq_len=config.seq_len, seed=config.seed, device=device,
                                          progress=progress, sampler=config.sampler)
    cal_rank = config.calibration_rank or config.align
    align = Alignment(ffn=config.align, v=config.v_align, rank=config.align)
    run = _Run(weights=weights, config=hf_config, dims=dims, qkv_bias=adapter.qkv_bias, device=device,
               cfg=config, ids=calibration_ids, progress=progress)

    timings: dict[str, float] = {}
    costs, cal_choice = None, []
    spare_layers = (0, dims.num_layers - 1) if config.spare_ends and dims.num_layers >= 8 else ()
    if layer_specs is not None:
        if len(layer_specs) != dims.num_layers:
            raise PruneError(f"layer_specs has {len(layer_specs)} entries for {dims.num_layers} layers")
        cal_layers_n = 0
    candidates = [i for i in range(dims.num_layers) if i not in spare_layers]
    # "pruned": every candidate layer fits its branch on the pruned stream (after
    # the refit), the stream continues without it, and the best-explained
    # cal_layers_n keep theirs at the end; no dense pass. Every branch has the same
    # size, so the widths do not depend on which layers get one.
    rank_on_pruned = bool(cal_layers_n) and config.calibration_ranking == "pruned"
    sensitivity, dense_pass = None, None
    need_sensitivity = layer_specs is None and config.allocation == "kl"
    need_costs = layer_specs is None and (config.allocation == "adaptive" or (cal_layers_n and not rank_on_pruned))
    if need_sensitivity or need_costs:
        # One dense pass serves both: the kl allocation's sensitivity probes and the
        # ranking of layers for a calibration branch (or adaptive allocation's costs).
        t = time.perf_counter()
        probe_keep = None
        if need_sensitivity:
            probe_keep = _uniform_ffn_keep(dims, config, adapter.qkv_bias, cal_layers_n, cal_rank, align,
                                           spare_layers=spare_layers)
        uniform_keep = _uniform_ffn_keep(dims, config, adapter.qkv_bias, cal_layers_n, cal_rank,
                                         align) if need_costs else 0
        # Uniform and kl allocation read this pass only to rank layers (which get a branch, where
        # rounding chunks land): a share of the calibration sequences ranks them as the
        # whole does (SmolLM2-135M and Qwen2.5-Coder-0.5B at 20 %: the same plan from 32
        # of 128 sequences) at a quarter of the cost. Adaptive allocation reads them all.
        sequences = config.kl_samples
        if need_costs:
            sequences = None
            if config.allocation in ("uniform", "kl"):
                seq_len = int(calibration_ids.shape[1])
                sequences = max(config.ranking_samples, -(-4 * dims.hidden_size // seq_len),
                                config.kl_samples if need_sensitivity else 0)
        costs, predictability, sensitivity = run.measure_dense(
            ffn_keep=uniform_keep, cal_rank=cal_rank if cal_layers_n and not rank_on_pruned else 0,
            vo_costs=config.allocation == "adaptive", sequences=sequences, probe_keep=probe_keep,
            probe_sequences=config.kl_samples, skip=set(spare_layers))
        timings["dense_pass_s"] = time.perf_counter() - t
        if need_sensitivity:
            timings["sensitivity_probes_s"] = run.probe_seconds  # included in dense_pass_s
        dense_pass = {"sensitivity": need_sensitivity, "ranking": bool(cal_layers_n and not rank_on_pruned),
                      "costs": config.allocation == "adaptive",
                      "sequences": int(calibration_ids[:sequences].shape[0])}
        if not need_costs:
            costs = None
        if cal_layers_n and not rank_on_pruned:
            cal_choice = sorted(sorted(candidates, key=lambda i: -predictability[i])[:cal_layers_n])
    if rank_on_pruned:
        cal_choice = candidates[:cal_layers_n]  # placeholder for the width plan
    specs = list(layer_specs) if layer_specs is not None else plan_widths(
        dims, sparsity=config.sparsity, qkv_bias=adapter.qkv_bias, allocation=config.allocation, costs=costs,
        qk_sparsity=config.qk_sparsity, calibration_layers=cal_choice, calibration_rank=cal_rank, align=align,
        spare_layers=spare_layers, vo_sparsity=config.vo_sparsity,
        sensitivity=[0.0 if v is None else v for v in sensitivity] if sensitivity is not None else None,
        kl_alpha=config.kl_alpha, kl_vo=config.kl_vo)

    t = time.perf_counter()
    with CheckpointWriter(output, overwrite=overwrite, max_shard_bytes=int(config.max_shard_gb * 1e9)) as writer:
        for name in ("model.embed_tokens.weight", "model.norm.weight") + (
                () if dims.tie_word_embeddings else ("lm_head.weight",)):
            writer.add(name, weights.get(name).to(out_dtype))
        layer_reports = run.prune_layers(specs, writer=writer, out_dtype=out_dtype,
                                         branch_candidates=candidates if rank_on_pruned else None,
                                         branch_rank=cal_rank)
        if rank_on_pruned:
            explained = {r["layer"]: r["calibration_explained"] for r in layer_reports if "calibration_explained" in r}
            chosen = sorted(sorted(explained, key=lambda i: -explained[i])[:cal_layers_n])
            for i in chosen:
                for name, tensor in run.branches[i].items():
                    writer.add(f"model.layers.{i}.{name}", tensor.to(out_dtype))
            specs = [dataclasses.replace(sp, calibration_rank=cal_rank if i in chosen else 0)
                     for i, sp in enumerate(specs)]
            for r in layer_reports:
                r["calibration_rank"] = cal_rank if r["layer"] in chosen else 0
        cal_choice = [i for i, sp in enumerate(specs) if sp.calibration_rank]
        out_config = dict(raw_config)
        out_config["architectures"] = [ARCHITECTURE]
        out_config.setdefault("model_type", hf_config.model_type)
        out_config.pop("quantization_config", None)
        out_config["dtype"] = str(out_dtype).removeprefix("torch.")
        out_config.pop("torch_dtype", None)
        params_dense = count_parameters(None, dims, qkv_bias=adapter.qkv_bias)
        spec = OlicaSpec(source_architecture=adapter.architecture, qkv_bias=adapter.qkv_bias, layers=specs)
        params_pruned = count_parameters(spec, dims)
        spec.sparsity = {"target": config.sparsity, "achieved": round(1 - params_pruned / params_dense, 5),
                         "params_dense": params_dense, "params_pruned": params_pruned}
        spec.calibration = {"dataset": config.dataset, "num_samples": int(calibration_ids.shape[0]),
                            "seq_len": int(calibration_ids.shape[1]), "seed": config.seed}
        out_config["olica"] = spec.to_dict()
        timings["prune_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        report = {
            "source": str(model),
            "method": config.method,
            "config": dataclasses.asdict(config),
            "sparsity": spec.sparsity,
            "calibration_layers": cal_choice,
            **({"sensitivity_kl": [None if v is None else round(v, 6) for v in sensitivity]}
               if sensitivity is not None else {}),
            "layers": layer_reports,
            "dense_pass": dense_pass,  # what the dense pass measured (None: no dense pass)
            "timings": timings,
            "peak_memory": _peak_memory(device),
            "device": str(device),
        }
        writer.finish(config=out_config, report=report, copy_from=src)
    return report


def _prune_and_recover(model: str, *, output: Path, config: PruneConfig, overwrite: bool, progress: bool,
                       calibration_ids, layer_specs, recover_config) -> dict[str, Any]:
    """Prune into a hidden sibling of ``output`` (named like a writer's partial directory, so a
    killed run's is swept by the next), recover from it into ``output``, drop it."""
    import shutil

    from .recover import recover

    check_output_path(output, overwrite=overwrite)
    stage = output.resolve().parent / f".{output.name}.partial-{os.getpid()}-unrecovered"
    try:
        report = prune(model, output=stage, config=config, overwrite=True, progress=progress,
                       calibration_ids=calibration_ids, layer_specs=layer_specs)
        report["recovery"] = recover(stage, output=output, reference=model, config=recover_config,
                                     overwrite=overwrite, progress=progress)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def calibration_mix(src, tokenizer, dataset: str, *, num_samples: int, seq_len: int, seed: int, device,
                    progress: bool = True, self_ids: torch.Tensor | None = None,
                    sampler: str = "auto") -> torch.Tensor:
    """Calibration windows from ``dataset``: one source, or several joined by
    ``+`` (e.g. ``self+pydoc``), which share the windows evenly (the first
    takes the remainder). ``self`` samples text from the model itself, or takes
    the first rows of ``self_ids`` when given (a stream sampled earlier, e.g. on
    another machine: the first rows of a longer stream are the same windows)."""
    from ..io.data import calibration_batches

    parts = [p for p in dataset.split("+") if p]
    if not parts:
        raise PruneError(f"empty calibration source {dataset!r}")
    counts = [num_samples // len(parts)] * len(parts)
    counts[0] += num_samples - sum(counts)
    out = []
    for part, n in zip(parts, counts):
        if n == 0:
            continue
        if part == "self" and self_ids is not None:
            out.append(self_ids[:n])
        elif part == "self":
            from ..io.selfcal import self_calibration

            out.append(self_calibration(src, tokenizer, num_samples=n, seq_len=seq_len, seed=seed, device=device,
                                        progress=progress, engine=sampler))
        else:
            out.append(calibration_batches(tokenizer, part, num_samples=n, seq_len=seq_len, seed=seed))
    return torch.cat(out)


def _uniform_ffn_keep(dims, config, qkv_bias, cal_layers_n, cal_rank, align, spare_layers=()) -> int:
    """FFN width under a uniform plan: the proxy used to rate calibration (and the
    sensitivity probe's width)."""
    try:
        specs = plan_widths(dims, sparsity=config.sparsity, qkv_bias=qkv_bias, allocation="uniform", costs=None,
                            qk_sparsity=config.qk_sparsity, calibration_layers=list(range(cal_layers_n)),
                            calibration_rank=cal_rank, align=align, tolerance=0.05,
                            vo_sparsity=config.vo_sparsity, spare_layers=spare_layers)
    except BudgetError:
        # A uniform plan can be out of reach where the adaptive one is not; the real
        # plan (made after measuring) raises its own error if it fails too.
        return max(align.ffn, int(dims.intermediate_size * (1 - config.sparsity)))
    return specs[len(specs) // 2].intermediate_size


def _return_freed_memory() -> None:
    """With glibc, hand the heap's free pages back to the system (``malloc_trim``):
    called after each layer, so what the per-batch activations of one layer leave
    fragmented does not add up over the layers. Elsewhere nothing happens. (A fixed
    4 MB mmap threshold returned more, but made SmolLM2's prune 32 % slower.)"""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_memory(device: torch.device) -> dict[str, float]:
    out = {"cpu_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        out["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


class _Run:
    """State of one pruning run: the source, the calibration ids, the device."""

    def __init__(self, *, weights: SourceWeights, config, dims: ModelDims, qkv_bias: bool, device: torch.device,
                 cfg: PruneConfig, ids: torch.Tensor, progress: bool) -> None:
        self.weights, self.config, self.dims, self.qkv_bias = weights, config, dims, qkv_bias
        self.device, self.cfg, self.ids, self.progress = device, cfg, ids, progress
        self.rope = rotary(config, device)
        pos_ids = torch.arange(ids.shape[1], device=device)[None]
        dummy = torch.zeros(1, device=device)
        self.pos = self.rope(dummy, pos_ids)

    # ------------------------------------------------------------ helpers
    def _embed(self, sequences: int | None = None) -> list[torch.Tensor]:
        """The calibration batches' embeddings (the first ``sequences`` sequences only, when given)."""
        emb = self.weights.get("model.embed_tokens.weight").to(self.device)
        ids = self.ids if sequences is None else self.ids[:sequences]
        return [nn.functional.embedding(b.to(self.device), emb) for b in ids.split(self.cfg.batch_size)]

    def _layer(self, i: int) -> nn.Module:
        return read_dense_layer(self.weights, self.config, i, qkv_bias=self.qkv_bias, device=self.device)

    def _bar(self, desc: str):
        return tqdm(range(self.dims.num_layers), desc=desc, unit="layer", disable=not self.progress)

    @torch.no_grad()
    def _attn_stats(self, layer: nn.Module, hidden: list[torch.Tensor], *, weighted: bool) -> torch.Tensor:
        """Second moment of the attention input; with ``weighted``, each token
        counts relative to its residual stream (1/‖h_t‖²)."""
        d = self.dims.hidden_size
        cov = torch.zeros(d, d, dtype=torch.float64, device=self.device)
        n = 0
        for h in hidden:
            # A float32 product per batch, accumulated in float64 (a float64 GEMM is ~2x slower
            # on CPUs and far slower on consumer GPUs; one batch's sum is short enough for float32).
            x = layer.input_layernorm(h).reshape(-1, d)
            xw = x * _token_weights(h).to(x.dtype)[:, None] if weighted else x
            cov += (xw.T @ x).double()
            n += x.shape[0]
        return cov / n

    @staticmethod
    def _ffn_input(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The FFN's input tokens ``[T, d]`` for a stream batch after attention."""
        return layer.post_attention_layernorm(h).reshape(-1, h.shape[-1])

    def _attention(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        out, _ = layer.self_attn(layer.input_layernorm(h), position_embeddings=self.pos, attention_mask=None)
        return out

    # --------------------------------------------------------- dense pass
    @torch.no_grad()
    def measure_dense(self, *, ffn_keep: int, cal_rank: int, vo_costs: bool = True,
                      sequences: int | None = None, probe_keep: int | None = None, probe_sequences: int = 0,
                      skip: set[int] = frozenset()
                      ) -> tuple[list[LayerCosts], list[float], list[float | None] | None]:
        """The one dense pass: unit energies and FFN-residual predictability of every
        dense layer over the first ``sequences`` calibration sequences (all when None)
        and, with ``probe_keep``, each layer's sensitivity on the first
        ``probe_sequences`` of them (see :meth:`measure_sensitivity`; None otherwise).

        Every token's contribution is measured relative to the residual stream
        it is added to (weight ``1/‖h_t‖²``): the next RMSNorm sees the change
        in that proportion. A plain mean would be dominated by the few tokens
        with massive activations and make middle layers look unimportant.

        Without ``vo_costs`` (uniform and kl allocation, where only the FFN energies
        place rounding chunks) the V/O statistics are not built: zeros instead.
        """
        d = self.dims.hidden_size
        hidden = self._embed(sequences)
        seq_len = int(self.ids.shape[1])
        # How many sequences of each batch the probes read: the first probe_sequences.
        takes, left = [], probe_sequences if probe_keep is not None else 0
        for hb in hidden:
            takes.append(min(int(hb.shape[0]), left))
            left -= takes[-1]
        probes: dict[int, list[torch.Tensor]] = {}
        costs, predict = [], []
        self.probe_seconds = 0.0  # the share of this pass the sensitivity probes take (reported apart)
        bar = "measuring (dense pass" + (", sensitivity)" if probe_keep is not None else ")")
        for i in self._bar(bar):
            layer = self._layer(i)
            # A probed stream starts at its own layer and runs through the dense layers after it.
            t = time.perf_counter()
            for j, stream in probes.items():
                probes[j] = [layer_forward(layer, hb, self.pos) for hb in stream]
            self.probe_seconds += time.perf_counter() - t
            if vo_costs:
                chol = damped_cholesky(self._attn_stats(layer, hidden, weighted=True))
                ctx_cov = self._context_covariance(layer, hidden, weighted=True)
                vo = self._vo_bases(layer, chol, self.cfg.ond,
                                    ctx_cov if self.cfg.vo_stats == "context" else None)
                slot_energy = self._slot_energy(layer, vo, ctx_cov)  # [e]
            else:
                slot_energy = torch.zeros(self.dims.head_dim, dtype=torch.float64)
            mid = [h.add_(self._attention(layer, h)) for h in hidden]  # in place: nothing reads hidden again
            ffn = _FfnStats(layer.mlp, d, self.device)
            acts = [ffn.forward(self._ffn_input(layer, h)) for h in mid]  # each computed once
            for h, a in zip(mid, acts):
                ffn.add_h(a, weights=_token_weights(h))
            energy = ffn.contribution_scores() ** 2
            if probe_keep is not None and i not in skip:
                t = time.perf_counter()
                # the probe: only this layer's FFN cut to its best probe_keep neurons, scored as
                # the prune pass scores them (unweighted statistics of the probed sequences), no refit
                probe_stats = _FfnStats(layer.mlp, d, self.device)
                for a, n in zip(acts, takes):
                    if n:
                        probe_stats.add_h(_FfnActs(x=a.x[:n * seq_len], h=a.h[:n * seq_len], f=a.f[:n * seq_len]))
                keep = torch.argsort(self._ffn_scores(probe_stats), descending=True)[:probe_keep]
                w = layer.mlp.down_proj.weight[:, keep]
                probes[i] = [mb[:n] + (a.h[:n * seq_len, keep] @ w.T).view_as(mb[:n])
                             for mb, a, n in zip(mid, acts, takes) if n]
                self.probe_seconds += time.perf_counter() - t
            gain = 0.0
            if cal_rank:
                keep = torch.argsort(energy, descending=True)[:ffn_keep].sort().values
                for h, a in zip(mid, acts):
                    ffn.add_residual(a, keep, weights=_token_weights(h))
                cal = ffn.fit(cal_rank, self.cfg.ridge)
                gain = (cal.residual_energy - cal.remaining_energy) / ffn.n
            hidden = [h.add_(a.f.view_as(h)) for h, a in zip(mid, acts)]
            del acts, mid
            costs.append(LayerCosts(ffn=energy.cpu(), vo=slot_energy.cpu(), stream=1.0))
            predict.append(gain)
            del layer
            _return_freed_memory()
        kl = None
        if probe_keep is not None:
            t = time.perf_counter()
            kl = self._output_kl([hb[:n] for hb, n in zip(hidden, takes) if n], probes)
            self.probe_seconds += time.perf_counter() - t
        return costs, predict, kl

    def measure_sensitivity(self, *, probe_keep: int, sequences: int, skip: set[int] = frozenset()
                            ) -> list[float | None]:
        """Each layer's measured effect on the model's output distribution: the mean
        KL(dense ‖ probed) of the next-token distributions over the first ``sequences``
        calibration sequences, where "probed" is the dense model with only that
        layer's FFN cut to its ``probe_keep`` best neurons (scored as the prune pass
        scores them, no refit). Layers in ``skip`` are not probed (None).

        One pass over the layers: a probed stream starts at each layer and then
        runs through the dense layers after it, so every layer is read once and
        the cost is about L/2 dense forwards of the sequences read. The pruner runs
        it inside :meth:`measure_dense` when that pass is needed too."""
        return self.measure_dense(ffn_keep=0, cal_rank=0, vo_costs=False, sequences=sequences,
                                  probe_keep=probe_keep, probe_sequences=sequences, skip=skip)[2]

    def _output_kl(self, dense: list[torch.Tensor], probes: dict[int, list[torch.Tensor]]) -> list[float | None]:
        """Mean KL(dense ‖ probe) of the next-token distributions, per probed layer.

        With logits ``z = W x`` (dense) and ``z' = W x'`` (probe) and ``p = softmax(z)``:
        ``KL = Σ p z − lse(z) − (Σ_v p_v W_v) · x' + lse(z')``. The first two terms
        and ``p̄ = pᵀW`` are computed once per dense block, so a probe costs its
        logits GEMM and one logsumexp instead of a log-softmax and three
        vocab-wide elementwise passes. Per-token sums are taken in float64."""
        head_name = "model.embed_tokens.weight" if self.dims.tie_word_embeddings else "lm_head.weight"
        head = self.weights.get(head_name).to(self.device, torch.float32)
        norm = LlamaRMSNorm(self.dims.hidden_size, eps=self.config.rms_norm_eps).to(self.device)
        norm.weight.copy_(self.weights.get("model.norm.weight"))

        kl = {i: 0.0 for i in probes}
        n = 0
        rows = 256  # tokens per logits block: vocab-wide rows are large
        for b, hb in enumerate(dense):
            flat = hb.reshape(-1, hb.shape[-1])
            for start in range(0, flat.shape[0], rows):
                z = norm(flat[start:start + rows]) @ head.T
                lse = torch.logsumexp(z, dim=-1)
                p = torch.exp(z - lse[:, None])
                neg_entropy = (p * z).sum(-1).double() - lse.double()  # Σ p log p
                p_bar = (p @ head).double()  # [rows, d]
                del z, p
                for i, stream in probes.items():
                    xq = norm(stream[b].reshape(-1, hb.shape[-1])[start:start + rows])
                    lse_q = torch.logsumexp(xq @ head.T, dim=-1).double()
                    kl[i] += float((neg_entropy - (p_bar * xq.double()).sum(-1) + lse_q).sum())
                n += lse.shape[0]
        return [kl[i] / n if i in kl else None for i in range(self.dims.num_layers)]

    def _context_covariance(self, layer: nn.Module, hidden: list[torch.Tensor], *, weighted: bool,
                            outputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Token-weighted second moment of each head's attention output (o_proj's
        input), ``[h, e, e]``: what the value directions actually carry after the
        softmax has mixed them. The dense attention's outputs of the first
        ``REPORT_BATCHES`` batches are appended to ``outputs`` when given."""
        h, e = self.dims.num_heads, self.dims.head_dim
        acc = torch.zeros(h, e, e, dtype=torch.float64, device=self.device)
        weights: list[torch.Tensor] = []

        def grab(_mod, args):
            ctx = args[0].reshape(-1, h, e)  # [T, h, e]; float32 per batch, accumulated in float64
            w = weights[-1].to(ctx.dtype)[:, None, None]
            acc.add_(torch.einsum("thi,thj->hij", ctx * w, ctx).double())

        hook = layer.self_attn.o_proj.register_forward_pre_hook(grab)
        try:
            for hb in hidden:
                w = _token_weights(hb)
                weights.append(w if weighted else torch.ones_like(w))
                out = self._attention(layer, hb)
                if outputs is not None and len(outputs) < REPORT_BATCHES:
                    outputs.append(out)
        finally:
            hook.remove()
        return acc / sum(w.numel() for w in weights)

    def _slot_energy(self, layer: nn.Module, bases, ctx_cov: torch.Tensor) -> torch.Tensor:
        """Energy of the t-th strongest value direction summed over KV heads: ``[e]``.

        Direction t of KV head j adds ``W_o^(i) o_map[:, t] · (v_map[t] · ctx_i)``
        to the output of each query head i of the group."""
        e, g, h = self.dims.head_dim, self.dims.num_kv_heads, self.dims.num_heads
        group = h // g
        wo = layer.self_attn.o_proj.weight.double().view(-1, h, e)
        total = torch.zeros(e, dtype=torch.float64, device=self.device)
        for j, basis in enumerate(bases):
            v_map, o_map = basis.v_map.to(self.device), basis.o_map.to(self.device)
            for q in range(group):
                i = j * group + q
                out_norm = torch.linalg.vector_norm(wo[:, i, :] @ o_map, dim=0) ** 2  # [e]
                ctx_energy = torch.einsum("ti,ij,tj->t", v_map, ctx_cov[i], v_map)  # [e]
                total += out_norm * ctx_energy
        return total

    def _vo_bases(self, layer: nn.Module, chol: torch.Tensor, method: str, ctx_cov: torch.Tensor | None = None):
        """One V/O basis per KV head. With ``ctx_cov`` (``[h, e, e]``) the value
        space is weighted by what the group's query heads read after softmax."""
        attn = layer.self_attn
        e, g, h = self.dims.head_dim, self.dims.num_kv_heads, self.dims.num_heads
        group = h // g
        wv = attn.v_proj.weight.view(g, e, -1)
        wo = attn.o_proj.weight.view(-1, h, e)  # [d, h, e]
        bv = attn.v_proj.bias.view(g, e) if attn.v_proj.bias is not None else None
        bases = []
        for j in range(g):
            factor = None
            if ctx_cov is not None:
                factor = damped_cholesky(ctx_cov[j * group:(j + 1) * group].sum(0))
            bases.append(vo_basis(wv[j], [wo[:, j * group + q, :] for q in range(group)], chol, method,
                                  v_bias=bv[j] if bv is not None else None, value_factor=factor))
        return bases

    # --------------------------------------------------------- prune pass
    @torch.no_grad()
    def prune_layers(self, specs, *, writer: CheckpointWriter, out_dtype: torch.dtype,
                     branch_candidates: list[int] | None = None, branch_rank: int = 0) -> list[dict[str, Any]]:
        """Prune every layer in order and write it. With ``branch_candidates``, those
        layers fit a calibration branch that is kept aside (``self.branches``), not
        applied to the stream nor written: the caller decides which to keep."""
        hidden = self._embed()
        reports = []
        self.branches: dict[int, dict[str, torch.Tensor]] = {}
        for i in self._bar(f"pruning ({self.cfg.method})"):
            t0 = time.perf_counter()
            layer = self._layer(i)
            spec = specs[i]
            aside = branch_candidates is not None and i in branch_candidates
            if branch_candidates is not None:
                spec = dataclasses.replace(spec, calibration_rank=branch_rank if aside else 0)
            state, rep, hidden = self._prune_layer(i, layer, spec, hidden, branch_aside=aside)
            if aside:
                self.branches[i] = {n: state.pop(n) for n in list(state) if n.startswith("mlp.calibration.")}
            for name, tensor in state.items():
                writer.add(f"model.layers.{i}.{name}", tensor.to(out_dtype))
            rep.update(dataclasses.asdict(specs[i]))
            rep["seconds"] = round(time.perf_counter() - t0, 3)
            reports.append(rep)
            del layer, state
            _return_freed_memory()
        return reports

    def _prune_layer(self, i: int, layer: nn.Module, spec, hidden: list[torch.Tensor], *, branch_aside: bool = False):
        """One layer: the attention step, then the FFN step on the pruned attention's output.
        Returns (tensors to write, report, the residual stream after the pruned layer)."""
        weighted = self.cfg.method == "olica" and self.cfg.token_weighting
        state, mid, attn_rel = self._attention_step(i, layer, spec, hidden, weighted=weighted)
        out_state, ffn_rel, cal, new_hidden = self._ffn_step(i, layer, spec, state, mid, weighted=weighted,
                                                             branch_aside=branch_aside)
        rep = {"layer": i, "attn_rel_error": round(attn_rel, 6), "ffn_rel_error": round(ffn_rel, 6)}
        if cal is not None:
            rep["calibration_explained"] = round(cal.explained, 4)
        return out_state, rep, new_hidden

    def _attention_step(self, i: int, layer: nn.Module, spec, hidden: list[torch.Tensor], *, weighted: bool):
        """Q/K low rank and the V/O decomposition (or a baseline's V/O selection) of
        one layer. Returns the layer's attention tensors and norms, the residual
        stream after the pruned attention, and its relative output error."""
        cfg, dims = self.cfg, self.dims
        d, e, g, h = dims.hidden_size, dims.head_dim, dims.num_kv_heads, dims.num_heads
        attn = layer.self_attn
        cov = self._attn_stats(layer, hidden, weighted=weighted)
        chol = damped_cholesky(cov)
        state: dict[str, torch.Tensor] = {
            "input_layernorm.weight": layer.input_layernorm.weight,
            "post_attention_layernorm.weight": layer.post_attention_layernorm.weight,
        }
        # ---- Q / K: activation-aware low rank
        for name, rank in (("q_proj", spec.q_rank), ("k_proj", spec.k_rank)):
            proj = getattr(attn, name)
            if rank is None:
                state[f"self_attn.{name}.weight"] = proj.weight
                if proj.bias is not None:
                    state[f"self_attn.{name}.bias"] = proj.bias
            else:
                lr = lowrank_factorize(proj.weight, chol, rank)
                state[f"self_attn.{name}.lowrank_a.weight"] = lr.a.float()
                state[f"self_attn.{name}.lowrank_b.weight"] = lr.b.float()
                if proj.bias is not None:
                    state[f"self_attn.{name}.lowrank_b.bias"] = proj.bias
        # ---- V / O: OND (olica) or scored selection (baselines), shared per KV head
        k = spec.v_head_dim
        group = h // g
        wv = attn.v_proj.weight.view(g, e, d)
        wo = attn.o_proj.weight.view(d, h, e)
        bv = attn.v_proj.bias.view(g, e) if attn.v_proj.bias is not None else None
        dense_out: list[torch.Tensor] = []  # the dense attention's output on the first batches, if computed
        if cfg.method == "olica":
            ctx_cov = self._context_covariance(layer, hidden, weighted=weighted,
                                               outputs=dense_out) if cfg.vo_stats == "context" else None
            bases = self._vo_bases(layer, chol, cfg.ond, ctx_cov)
        else:
            # E[ctx²] per head and value dim: [h, e]
            ctx_sq = self._context_covariance(layer, hidden, weighted=False).diagonal(dim1=-2, dim2=-1)
            bases = [ranked_basis(self._vo_scores(wv[j], wo[:, j * group:(j + 1) * group, :],
                                                  cov.diagonal(), ctx_sq[j * group:(j + 1) * group]))
                     for j in range(g)]
        new_v, new_b, new_o = [], [], [None] * h
        for j in range(g):
            blocks = [wo[:, j * group + q, :] for q in range(group)]
            v_j, b_j, o_j = truncate_vo(bases[j], wv[j], blocks, k, v_bias=bv[j] if bv is not None else None)
            new_v.append(v_j)
            if b_j is not None:
                new_b.append(b_j)
            for q in range(group):
                new_o[j * group + q] = o_j[q]
        state["self_attn.v_proj.weight"] = torch.cat(new_v).float()
        if new_b:
            state["self_attn.v_proj.bias"] = torch.cat(new_b).float()
        state["self_attn.o_proj.weight"] = torch.cat(new_o, dim=1).float()

        # Build the pruned attention to calibrate the FFN on its output.
        attn_spec = dataclasses.replace(spec, intermediate_size=dims.intermediate_size, calibration_rank=0)
        dense_mlp = {f"mlp.{n}.weight": getattr(layer.mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj")}
        pruned_attn_layer = build_layer(self.config, i, attn_spec, {**state, **dense_mlp}, qkv_bias=self.qkv_bias,
                                        device=self.device)
        # The reported errors are measured on the first REPORT_BATCHES batches only.
        attn_err, attn_ref = 0.0, 0.0
        mid = []
        for b, hb in enumerate(hidden):
            out = self._attention(pruned_attn_layer, hb)
            if b < REPORT_BATCHES:
                ref = dense_out[b] if b < len(dense_out) else self._attention(layer, hb)
                w = _token_weights(hb)
                attn_err += float((out - ref).double().pow(2).sum(-1).flatten() @ w)
                attn_ref += float(ref.double().pow(2).sum(-1).flatten() @ w)
            mid.append(hb.add_(out))  # in place: the caller replaces its stream with what this returns
        return state, mid, attn_err / max(attn_ref, 1e-30)

    def _ffn_step(self, i: int, layer: nn.Module, spec, state: dict[str, torch.Tensor], mid: list[torch.Tensor],
                  *, weighted: bool, branch_aside: bool):
        """FFN neuron selection, the down_proj refit and the linear calibration branch
        of one layer, on the stream after its pruned attention (``mid``). ``state``
        holds the attention step's tensors. Returns the whole layer's tensors, the
        FFN's relative output error, the branch fit (or None) and the stream after
        the pruned layer."""
        cfg, d = self.cfg, self.dims.hidden_size
        # ---- FFN: neuron selection, then linear calibration of the residual
        mlp = layer.mlp
        ffn = _FfnStats(mlp, d, self.device)
        # gate/up/down of the dense FFN, once per batch: scores, refit, residual and report all use them
        acts = [ffn.forward(self._ffn_input(layer, hb)) for hb in mid]
        for hb, a in zip(mid, acts):
            ffn.add_h(a, weights=_token_weights(hb) if weighted else None)
        keep = torch.argsort(self._ffn_scores(ffn), descending=True)[: spec.intermediate_size].sort().values
        # The kept neurons' gate/up rows are the dense ones, so their activations are the
        # cached h[:, keep]: refit, residual and output read them; nothing needs the rest.
        for a in acts:
            a.h = a.h[:, keep]
            # the FFN input is recomputed from the stream where a branch reads it: cheap, and
            # not holding it for every token lowers the pass's peak (tokens x hidden_size floats)
            a.x = None
        state["mlp.gate_proj.weight"] = mlp.gate_proj.weight[keep]
        state["mlp.up_proj.weight"] = mlp.up_proj.weight[keep]
        state["mlp.down_proj.weight"] = mlp.down_proj.weight[:, keep]
        if cfg.refit_down:
            state["mlp.down_proj.weight"] = self._refit_down(layer, mid, acts, keep, weighted=weighted).float()
        cal = None
        if spec.calibration_rank:
            for hb, a in zip(mid, acts):
                ffn.add_residual_kept(self._ffn_input(layer, hb), a, state["mlp.down_proj.weight"],
                                      weights=_token_weights(hb) if weighted else None)
            cal = ffn.fit(spec.calibration_rank, cfg.ridge)
            if branch_aside:  # fitted and reported, but the stream (and this layer's output) goes on without it
                aside = {"mlp.calibration.lowrank_a.weight": cal.a.float(),
                         "mlp.calibration.lowrank_b.weight": cal.b.float()}
                spec = dataclasses.replace(spec, calibration_rank=0)
            else:
                state["mlp.calibration.lowrank_a.weight"] = cal.a.float()
                state["mlp.calibration.lowrank_b.weight"] = cal.b.float()
        pruned = build_layer(self.config, i, spec, state, qkv_bias=self.qkv_bias, device=self.device)
        ffn_err, ffn_ref, new_hidden = 0.0, 0.0, []
        for b, (hb, a) in enumerate(zip(mid, acts)):
            out = pruned.mlp.down_proj(a.h)  # = pruned.mlp(x) without recomputing gate/up
            if pruned.mlp.calibration is not None:
                out = out + pruned.mlp.calibration(self._ffn_input(layer, hb))
            out = out.view_as(hb)
            if b < REPORT_BATCHES:
                ref = a.f.view_as(hb)
                w = _token_weights(hb)
                ffn_err += float((out - ref).double().pow(2).sum(-1).flatten() @ w)
                ffn_ref += float(ref.double().pow(2).sum(-1).flatten() @ w)
            new_hidden.append(hb.add_(out))  # in place: nothing reads mid after this
        del acts
        out_state = {n: t.detach() for n, t in pruned.state_dict().items()}
        if branch_aside and cal is not None:
            out_state.update(aside)
        return out_state, ffn_err / max(ffn_ref, 1e-30), cal, new_hidden

    def _ffn_scores(self, ffn: "_FfnStats") -> torch.Tensor:
        """Each FFN neuron's score by the configured rule (the preset's, or the baseline's own)."""
        mlp, rule = ffn.mlp, self.cfg.ffn_score
        if rule == "contribution":
            return ffn.contribution_scores()
        if rule == "paper":
            return ffn_paper_scores(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                                    ffn.x_sq / ffn.n, ffn.h_sq / ffn.n)
        if rule == "wanda":
            return ffn_wanda_scores(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                                    ffn.x_sq / ffn.n, ffn.h_sq / ffn.n)
        return ffn_magnitude_scores(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)

    def _refit_down(self, layer: nn.Module, mid: list[torch.Tensor], acts: list[_FfnActs], keep: torch.Tensor, *,
                    weighted: bool) -> torch.Tensor:
        """Least-squares ``down_proj`` over the kept neurons: min E‖W' h_keep − f(x)‖² (ridge-damped)."""
        k = keep.numel()

        def statistics() -> tuple[torch.Tensor, torch.Tensor]:
            gram = torch.zeros(k, k, dtype=torch.float64, device=self.device)
            cross = torch.zeros(k, self.dims.hidden_size, dtype=torch.float64, device=self.device)
            for hb, a in zip(mid, acts):
                hk = a.h  # the kept neurons' activations
                hw = hk * _token_weights(hb).to(hk.dtype)[:, None] if weighted else hk
                gram.add_(hw.T @ hk)  # float32 products, accumulated in float64 (no float64 copy)
                cross.add_(hw.T @ a.f)
            return gram, cross

        # Shrunk towards the original kept columns, not towards zero: with little
        # data (or a large ridge) the refit stays the plain pruned FFN.
        prior = layer.mlp.down_proj.weight[:, keep].T
        try:  # solved inside its own statistics: no second k x k matrix
            return ridge_solve(*statistics(), self.cfg.refit_ridge, prior=prior, consume=True).T  # [d, k]
        except torch.linalg.LinAlgError:  # Cholesky rejected it and consumed it: rebuild, solve by LU
            return ridge_solve(*statistics(), self.cfg.refit_ridge, prior=prior).T

    def _vo_scores(self, wv_j, wo_group, x_sq, ctx_sq_group):
        """Baseline score of each value dim of one KV head: [e]."""
        if self.cfg.method == "wanda-sp":
            xn = x_sq.double().clamp_min(0).sqrt()
            cn = ctx_sq_group.double().clamp_min(0).sqrt()  # [group, e]
            return wv_j.double().abs() @ xn + (wo_group.double().abs().sum(0) * cn).sum(0)
        return wv_j.double().abs().sum(1) + wo_group.double().abs().sum((0, 1))


def _token_weights(h: torch.Tensor) -> torch.Tensor:
    """1/‖h_t‖² per token of a residual-stream batch [B, S, d] -> [B·S], mean 1/d-ish."""
    sq = h.reshape(-1, h.shape[-1]).double().pow(2).sum(-1)
    return 1.0 / sq.clamp_min(1e-12)


@dataclasses.dataclass
class _FfnActs:
    """One batch through a dense FFN, flattened to tokens: input ``x`` [T, d],
    intermediate ``h = act(gate x) * up x`` [T, m], output ``f = down h`` [T, d].
    Once the prune pass has chosen its neurons, ``h`` holds the kept ones only
    and ``x`` is dropped (None)."""

    x: torch.Tensor | None
    h: torch.Tensor
    f: torch.Tensor


class _FfnStats:
    """Running statistics of one FFN on calibration inputs."""

    def __init__(self, mlp: nn.Module, d: int, device) -> None:
        self.mlp = mlp
        m = mlp.gate_proj.out_features
        self.h_sq = torch.zeros(m, dtype=torch.float64, device=device)
        self.x_sq = torch.zeros(d, dtype=torch.float64, device=device)
        # the residual statistics of a calibration branch: allocated by the first
        # residual batch (most layers fit no branch; two d x d float64 matrices)
        self.xtx = self.xte = self.ete = None
        self.n = 0

    def forward(self, x: torch.Tensor) -> _FfnActs:
        x = x.reshape(-1, x.shape[-1])
        h = self.mlp.act_fn(self.mlp.gate_proj(x)) * self.mlp.up_proj(x)
        return _FfnActs(x=x, h=h, f=self.mlp.down_proj(h))

    def add_h(self, a: _FfnActs, *, weights: torch.Tensor | None = None) -> None:
        # float32 per batch (a weighted sum is one GEMV), accumulated in float64
        h_sq = a.h.square()
        self.h_sq += (weights.to(h_sq.dtype) @ h_sq if weights is not None else h_sq.sum(0)).double()
        self.x_sq += a.x.square().sum(0).double()
        self.n += a.x.shape[0]

    def contribution_scores(self) -> torch.Tensor:
        return ffn_contribution_scores(self.h_sq / self.n, self.mlp.down_proj.weight)

    def add_residual(self, a: _FfnActs, keep: torch.Tensor, *, weights: torch.Tensor | None = None) -> None:
        """Accumulate the ridge statistics of ``e = f(x) − f̂(x)``, ``f̂`` keeping the
        neurons ``keep`` with their original down_proj columns (``a.h``: every neuron)."""
        h = a.h
        w = self.mlp.down_proj.weight
        dropped = torch.ones(h.shape[1], dtype=torch.bool, device=h.device)
        dropped[keep] = False
        self._add_residual(a.x, (h[:, dropped] @ w[:, dropped].T).double(), weights)  # the dropped neurons' output

    def add_residual_kept(self, x: torch.Tensor, a: _FfnActs, down: torch.Tensor, *,
                          weights: torch.Tensor | None = None) -> None:
        """The same for ``f̂ = down · h_kept`` where ``a.h`` holds only the kept neurons
        (and ``a.x`` may be gone: ``x`` is the FFN input)."""
        self._add_residual(x, (a.f - a.h @ down.to(a.h.dtype).T).double(), weights)

    def _add_residual(self, x: torch.Tensor, resid: torch.Tensor, weights: torch.Tensor | None) -> None:
        if weights is not None:
            root = weights.sqrt()[:, None]
            x, resid = x * root.to(x.dtype), resid * root
        if self.xtx is None:
            d = x.shape[1]
            self.xtx = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            self.xte = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            self.ete = torch.zeros(d, dtype=torch.float64, device=x.device)
        # float32 products per batch, accumulated in float64
        self.xtx += (x.T @ x).double()
        self.xte += (x.T @ resid.to(x.dtype)).double()
        self.ete += resid.pow(2).sum(0)

    def fit(self, rank: int, ridge: float):
        cal = fit_calibration(self.xtx, self.xte, self.ete, rank, ridge=ridge)
        self.xtx = self.xte = self.ete = None
        return cal


def summary_line(report: dict[str, Any]) -> str:
    sp = report["sparsity"]
    mem = report["peak_memory"]
    mem_s = ", ".join(f"{k.replace('_gib', '')} {v:.2f} GiB" for k, v in mem.items())
    return (f"{report['method']}: sparsity {sp['achieved'] * 100:.2f}% (target {sp['target'] * 100:.1f}%), "
            f"params {sp['params_dense']:,} -> {sp['params_pruned']:,}, "
            f"time {report['timings']['total_s']:.1f} s, peak memory {mem_s}")


def load_report(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "olica_report.json").read_text())


__all__ = ["PruneConfig", "PruneError", "prune", "summary_line", "load_report"]
