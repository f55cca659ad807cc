"""Layer-by-layer pruning: the orchestration around the math in ``linalg``.

One entry point, :func:`prune`. The source model is streamed: one decoder
layer's weights and the calibration activations are in memory at a time, and
each pruned layer is written out as soon as it is done. Layer ``l`` is pruned
on the outputs of the already-pruned layers ``< l``: first its attention
(``attention``: Q/K low rank, V/O decomposition), then its FFN on the pruned
attention's output (``ffn``: neuron selection, refit, calibration branch).

Before the prune pass, the widths are planned. Under the default ``kl``
allocation a sensitivity pass (8 sequences) measures how much cutting each
layer's FFN alone changes the output distribution, and a dense ranking pass (a
share of the sequences) picks the layers whose FFN residuals are most linearly
predictable for a calibration branch (``sensitivity``). With ``allocation="adaptive"`` the dense
pass reads every sequence and also measures what every FFN neuron and V/O
direction carries (``budget.LayerCosts``); the widths are planned from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..contract import ARCHITECTURE, LayerSpec, ModelDims, OlicaSpec, count_parameters, layer_tensor_shapes
from ..io import preflight
from ..io.writer import CheckpointWriter, check_output_path
from .attention import AttentionStep
from .budget import Alignment, BudgetError, LayerCosts, plan_widths
from .config import FFN_SCORES, METHODS, PRESETS, QK_CAP, PruneConfig, PruneError  # noqa: F401  (re-exported)
from .ffn import FfnStep
from .layers import SourceWeights, load_config
from .run import return_freed_memory
from .sensitivity import DensePass


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
    t_start = time.perf_counter()
    output = Path(output)
    device = preflight.parse_device(config.device)
    check_output_path(output, overwrite=overwrite)
    source = _open_source(model, output, config, check_tokenizer=calibration_ids is None)
    config = config.for_model(count_parameters(None, source.dims, qkv_bias=source.qkv_bias))
    # Known before any calibration text is read or sampled, so a bad setting fails at once.
    n_tokens = calibration_ids.numel() if calibration_ids is not None else config.num_samples * config.seq_len
    cal_layers_n = _branch_layer_count(source.dims, config, n_tokens)
    if calibration_ids is None:
        calibration_ids = _calibration_ids(source.path, config, config.num_samples, progress=progress)
    run = _Run(weights=source.weights, config=source.hf_config, dims=source.dims, qkv_bias=source.qkv_bias,
               device=device, cfg=config, ids=calibration_ids, progress=progress)
    plan = _plan(run, config, cal_layers_n=cal_layers_n, layer_specs=layer_specs)
    return _prune_and_write(run, source, plan, model=model, output=output, overwrite=overwrite, t_start=t_start)


@dataclasses.dataclass
class _Source:
    """The checked source model."""

    path: Path
    raw_config: dict
    adapter: Any  # adapters.Adapter of its family
    hf_config: Any
    dims: ModelDims
    weights: SourceWeights
    out_dtype: torch.dtype  # of the written checkpoint

    @property
    def qkv_bias(self) -> bool:
        return self.adapter.qkv_bias


def _open_source(model: str, output: Path, config: PruneConfig, *, check_tokenizer: bool) -> _Source:
    """Resolve ``model`` and check everything about it before transformers reads it and
    before any calibration text is sampled."""
    from ..io.sources import resolve_model

    src = resolve_model(model)
    preflight.check_output(output, src)
    raw_config = preflight.read_raw_config(src)
    preflight.check_not_quantized(src, raw_config)
    adapter = preflight.check_architecture(raw_config)
    if check_tokenizer:
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
    return _Source(path=src, raw_config=raw_config, adapter=adapter, hf_config=hf_config, dims=dims,
                   weights=weights, out_dtype=out_dtype)


def _branch_layer_count(dims: ModelDims, config: PruneConfig, n_tokens: int) -> int:
    """How many layers get a linear calibration branch (0 without calibration); fails
    when ``n_tokens`` calibration tokens are too few for its ridge solve."""
    if not config.calibration:
        return 0
    cal_layers_n = config.calibration_layers if config.calibration_layers is not None else max(
        1, round(dims.num_layers / 5))
    cal_layers_n = min(cal_layers_n, dims.num_layers)
    if n_tokens < 2 * dims.hidden_size:
        raise PruneError(
            f"linear calibration needs at least 2×hidden_size = {2 * dims.hidden_size} calibration tokens for "
            f"its ridge solve, got {n_tokens}; raise --num-samples/--seq-len or pass --no-calibration"
        )
    return cal_layers_n


@dataclasses.dataclass
class _Plan:
    """The widths of every layer and what they were planned from."""

    specs: list[LayerSpec]
    cal_layers_n: int  # layers that keep a calibration branch
    cal_rank: int  # the rank of each branch
    candidates: list[int]  # the layers not spared (the ones that may get a branch)
    rank_on_pruned: bool  # branches chosen on the pruned stream, after the prune pass
    cal_choice: list[int]  # the layers with a branch (a placeholder when rank_on_pruned)
    sensitivity: list[float | None] | None  # the kl allocation's per-layer KL
    dense_pass: dict[str, Any] | None  # what the dense pass measured (None: no dense pass)
    timings: dict[str, float]


def _plan(run: _Run, config: PruneConfig, *, cal_layers_n: int, layer_specs: list | None) -> _Plan:
    """The per-layer widths: ``layer_specs`` when given, else planned by ``budget.plan_widths``
    from what the dense pass measures (when the allocation or the branch ranking needs it)."""
    dims, qkv_bias = run.dims, run.qkv_bias
    cal_rank = config.calibration_rank or config.align
    align = Alignment(ffn=config.align, v=config.v_align, rank=config.align)
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
    plan = _Plan(specs=[], cal_layers_n=cal_layers_n, cal_rank=cal_rank, candidates=candidates,
                 rank_on_pruned=rank_on_pruned, cal_choice=[], sensitivity=None, dense_pass=None, timings={})
    costs = None
    need_sensitivity = layer_specs is None and config.allocation == "kl"
    need_costs = layer_specs is None and (config.allocation == "adaptive" or (cal_layers_n and not rank_on_pruned))
    if need_sensitivity or need_costs:
        costs = _measure(run, config, plan, align=align, spare_layers=spare_layers,
                         need_sensitivity=need_sensitivity, need_costs=need_costs)
    if rank_on_pruned:
        plan.cal_choice = candidates[:cal_layers_n]  # placeholder for the width plan
    sensitivity = plan.sensitivity
    plan.specs = list(layer_specs) if layer_specs is not None else plan_widths(
        dims, sparsity=config.sparsity, qkv_bias=qkv_bias, allocation=config.allocation, costs=costs,
        qk_sparsity=config.qk_sparsity, calibration_layers=plan.cal_choice, calibration_rank=cal_rank, align=align,
        spare_layers=spare_layers, vo_sparsity=config.vo_sparsity,
        sensitivity=[0.0 if v is None else v for v in sensitivity] if sensitivity is not None else None,
        kl_alpha=config.kl_alpha, kl_vo=config.kl_vo)
    return plan


def _measure(run: _Run, config: PruneConfig, plan: _Plan, *, align: Alignment, spare_layers,
             need_sensitivity: bool, need_costs: bool) -> list[LayerCosts] | None:
    """The dense pass. One pass serves both: the kl allocation's sensitivity probes and
    the ranking of layers for a calibration branch (or adaptive allocation's costs).
    Fills ``plan`` (sensitivity, branch layers, timings, what was measured); returns the
    costs the width plan reads (None when it reads none)."""
    dims, qkv_bias, cal_layers_n, cal_rank = run.dims, run.qkv_bias, plan.cal_layers_n, plan.cal_rank
    rank_branches = bool(cal_layers_n and not plan.rank_on_pruned)
    t = time.perf_counter()
    probe_keep = None
    if need_sensitivity:
        probe_keep = _uniform_ffn_keep(dims, config, qkv_bias, cal_layers_n, cal_rank, align,
                                       spare_layers=spare_layers)
    uniform_keep = _uniform_ffn_keep(dims, config, qkv_bias, cal_layers_n, cal_rank,
                                     align) if need_costs else 0
    # Uniform and kl allocation read this pass only to rank layers (which get a branch, where
    # rounding chunks land): a share of the calibration sequences ranks them as the
    # whole does (SmolLM2-135M and Qwen2.5-Coder-0.5B at 20 %: the same plan from 32
    # of 128 sequences) at a quarter of the cost. Adaptive allocation reads them all.
    sequences = config.kl_samples
    if need_costs:
        sequences = None
        if config.allocation in ("uniform", "kl"):
            seq_len = int(run.ids.shape[1])
            sequences = max(config.ranking_samples, -(-4 * dims.hidden_size // seq_len),
                            config.kl_samples if need_sensitivity else 0)
    costs, predictability, sensitivity = run.measure_dense(
        ffn_keep=uniform_keep, cal_rank=cal_rank if rank_branches else 0,
        vo_costs=config.allocation == "adaptive", sequences=sequences, probe_keep=probe_keep,
        probe_sequences=config.kl_samples, skip=set(spare_layers))
    plan.timings["dense_pass_s"] = time.perf_counter() - t
    if need_sensitivity:
        plan.timings["sensitivity_probes_s"] = run.probe_seconds  # included in dense_pass_s
    plan.sensitivity = sensitivity
    plan.dense_pass = {"sensitivity": need_sensitivity, "ranking": rank_branches,
                       "costs": config.allocation == "adaptive",
                       "sequences": int(run.ids[:sequences].shape[0])}
    if rank_branches:
        plan.cal_choice = sorted(sorted(plan.candidates, key=lambda i: -predictability[i])[:cal_layers_n])
    return costs if need_costs else None


def _prune_and_write(run: _Run, source: _Source, plan: _Plan, *, model: str, output: Path, overwrite: bool,
                     t_start: float) -> dict[str, Any]:
    """The prune pass, written layer by layer into ``output`` with the config and the report."""
    config, dims, out_dtype = run.cfg, source.dims, source.out_dtype
    t = time.perf_counter()
    with CheckpointWriter(output, overwrite=overwrite, max_shard_bytes=int(config.max_shard_gb * 1e9)) as writer:
        for name in ("model.embed_tokens.weight", "model.norm.weight") + (
                () if dims.tie_word_embeddings else ("lm_head.weight",)):
            writer.add(name, source.weights.get(name).to(out_dtype))
        layer_reports = run.prune_layers(plan.specs, writer=writer, out_dtype=out_dtype,
                                         branch_candidates=plan.candidates if plan.rank_on_pruned else None,
                                         branch_rank=plan.cal_rank)
        specs = plan.specs
        if plan.rank_on_pruned:
            specs = _keep_best_branches(run, plan, layer_reports, writer=writer, out_dtype=out_dtype)
        cal_choice = [i for i, sp in enumerate(specs) if sp.calibration_rank]
        spec = _olica_spec(source, specs, config, run.ids)
        out_config = _output_config(source, spec)
        timings = plan.timings
        timings["prune_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        sensitivity = plan.sensitivity
        report = {
            "source": str(model),
            "method": config.method,
            "config": dataclasses.asdict(config),
            "sparsity": spec.sparsity,
            "calibration_layers": cal_choice,
            **({"sensitivity_kl": [None if v is None else round(v, 6) for v in sensitivity]}
               if sensitivity is not None else {}),
            "layers": layer_reports,
            "dense_pass": plan.dense_pass,  # what the dense pass measured (None: no dense pass)
            "timings": timings,
            "peak_memory": _peak_memory(run.device),
            "device": str(run.device),
        }
        writer.finish(config=out_config, report=report, copy_from=source.path)
    return report


def _keep_best_branches(run: _Run, plan: _Plan, layer_reports: list[dict[str, Any]], *,
                        writer: CheckpointWriter, out_dtype: torch.dtype) -> list[LayerSpec]:
    """Ranking on the pruned stream: write the branches of the ``cal_layers_n`` layers
    whose branch explained most; returns the specs with only those branches."""
    cal_rank = plan.cal_rank
    explained = {r["layer"]: r["calibration_explained"] for r in layer_reports if "calibration_explained" in r}
    chosen = sorted(sorted(explained, key=lambda i: -explained[i])[:plan.cal_layers_n])
    for i in chosen:
        for name, tensor in run.branches[i].items():
            writer.add(f"model.layers.{i}.{name}", tensor.to(out_dtype))
    specs = [dataclasses.replace(sp, calibration_rank=cal_rank if i in chosen else 0)
             for i, sp in enumerate(plan.specs)]
    for r in layer_reports:
        r["calibration_rank"] = cal_rank if r["layer"] in chosen else 0
    return specs


def _olica_spec(source: _Source, specs: list[LayerSpec], config: PruneConfig, ids: torch.Tensor) -> OlicaSpec:
    """The checkpoint's ``olica`` block: the widths, the sparsity reached, the calibration."""
    params_dense = count_parameters(None, source.dims, qkv_bias=source.qkv_bias)
    spec = OlicaSpec(source_architecture=source.adapter.architecture, qkv_bias=source.qkv_bias, layers=specs)
    params_pruned = count_parameters(spec, source.dims)
    spec.sparsity = {"target": config.sparsity, "achieved": round(1 - params_pruned / params_dense, 5),
                     "params_dense": params_dense, "params_pruned": params_pruned}
    spec.calibration = {"dataset": config.dataset, "num_samples": int(ids.shape[0]),
                        "seq_len": int(ids.shape[1]), "seed": config.seed}
    return spec


def _output_config(source: _Source, spec: OlicaSpec) -> dict[str, Any]:
    """The source's config.json as an Olica checkpoint's."""
    out_config = dict(source.raw_config)
    out_config["architectures"] = [ARCHITECTURE]
    out_config.setdefault("model_type", source.hf_config.model_type)
    out_config.pop("quantization_config", None)
    out_config["dtype"] = str(source.out_dtype).removeprefix("torch.")
    out_config.pop("torch_dtype", None)
    out_config["olica"] = spec.to_dict()
    return out_config


def _prune_and_recover(model: str, *, output: Path, config: PruneConfig, overwrite: bool, progress: bool,
                       calibration_ids, layer_specs, recover_config) -> dict[str, Any]:
    """Prune into a hidden sibling of ``output`` (named like a writer's partial directory, so a
    killed run's is swept by the next), recover from it into ``output``, drop it. Recovery that
    would not fit in memory fails before any work (or is skipped, ``skip_if_too_large``); one that
    runs out of memory anyway leaves the un-recovered prune at ``output``."""
    from .recover import RecoveryError, recover

    check_output_path(output, overwrite=overwrite)
    source = _open_source(model, output, config, check_tokenizer=calibration_ids is None)  # fails before work
    too_large = _recovery_too_large(source.dims, config, recover_config)
    if too_large and recover_config.skip_if_too_large:
        print(f"olica: skipping recovery: {too_large}", file=sys.stderr)
        return prune(model, output=output, config=config, overwrite=overwrite, progress=progress,
                     calibration_ids=calibration_ids, layer_specs=layer_specs)
    if too_large:
        raise RecoveryError(too_large)
    recover_ids = None
    if calibration_ids is None and _same_self_stream(config, recover_config):
        _branch_layer_count(source.dims, config, config.num_samples * config.seq_len)
        recover_ids = _calibration_ids(source.path, config, max(config.num_samples, recover_config.num_samples),
                                       progress=progress)
        calibration_ids = recover_ids[:config.num_samples]
        recover_ids = recover_ids[:recover_config.num_samples]
    stage = output.resolve().parent / f".{output.name}.partial-{os.getpid()}-unrecovered"
    try:
        report = prune(model, output=stage, config=config, overwrite=True, progress=progress,
                       calibration_ids=calibration_ids, layer_specs=layer_specs)
        try:
            report["recovery"] = recover(stage, output=output, reference=model, config=recover_config,
                                         overwrite=overwrite, progress=progress, calibration_ids=recover_ids,
                                         check_memory=False)  # checked above, before the prune
        except (MemoryError, torch.OutOfMemoryError) as exc:  # the prune is done: keep it
            report = _keep_unrecovered(stage, output, report, f"out of memory ({type(exc).__name__})",
                                       overwrite=overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _recovery_too_large(dims: ModelDims, config: PruneConfig, recover_config) -> str | None:
    """Why recovery would not fit in the device's free memory (None when it fits)."""
    from .recover import memory_shortfall

    shortfall = memory_shortfall(dims, round((1 - config.sparsity) * count_parameters(None, dims)), recover_config)
    if shortfall is None:
        return None
    return f"{shortfall}; prune with --no-recover (and recover elsewhere with `olica recover`)"


def _keep_unrecovered(stage: Path, output: Path, report: dict, reason: str, *, overwrite: bool) -> dict:
    """Move the staged, un-recovered prune to ``output``, its report saying why recovery is missing."""
    print(f"olica: recovery failed, {reason}; writing the un-recovered prune", file=sys.stderr)
    report["recovery"] = {"applied": False, "failed": reason}
    (stage / "olica_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if overwrite and output.exists():
        shutil.rmtree(output)
    os.replace(stage, output)
    return report


def _same_self_stream(config: PruneConfig, recover_config) -> bool:
    """Prune and recovery both calibrate on the model's own text, sampled the same way: the
    prune's windows are then the first rows of the recovery's, and one sampling run serves both."""
    return (config.dataset == recover_config.dataset == "self" and config.seq_len == recover_config.seq_len
            and config.seed == recover_config.seed and config.sampler == recover_config.sampler)


def _calibration_ids(src: Path, config: PruneConfig, num_samples: int, *, progress: bool) -> torch.Tensor:
    """``num_samples`` calibration windows of ``config``'s source (dataset, length, seed, sampler)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    return calibration_mix(src, tokenizer, config.dataset, num_samples=num_samples, seq_len=config.seq_len,
                           seed=config.seed, device=preflight.parse_device(config.device), progress=progress,
                           sampler=config.sampler)


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


def _peak_memory(device: torch.device) -> dict[str, float]:
    out = {"cpu_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        out["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


class _Run(DensePass, AttentionStep, FfnStep):
    """One pruning run: the dense pass (``sensitivity.DensePass``), then the prune pass
    below, layer by layer: the attention step (``attention.AttentionStep``), then the FFN
    step (``ffn.FfnStep``) on the pruned attention's output."""


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
            return_freed_memory()
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
