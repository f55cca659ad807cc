"""Recovery: fit a few of a pruned model's parameters end to end to the dense model.

The retraining-free prune fits every layer on its own; the errors that are left
compound from layer to layer. Recovery fits a chosen set of the pruned model's
parameters (by default small ones: the norms and the linear calibration
branches, see ``PARAM_SETS``) so that the pruned model's next-token distribution
matches the dense model's, minimising KL(dense || pruned) on text the dense
model sampled itself (``self``) or on the user's calibration text. No data is
needed and the output is an ordinary Olica checkpoint: same tensors, same
shapes, nothing added at serving time.

Overfitting is guarded by construction: the last ``heldout`` sequences are never
trained on; the weights are evaluated on them every ``eval_every`` steps, the
best step's weights are kept, training stops after ``patience`` evaluations
without a gain, and if no step beats the un-recovered weights on them, those
are written unchanged (and the report says so).

Memory stays bounded like the pruner's: the teacher's logits exist for one batch
at a time, never for the whole calibration set.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

# name -> the parameter-name fragments a set trains ("" matches every parameter)
PARAM_SETS: dict[str, tuple[str, ...]] = {
    "norms": ("layernorm.weight", "model.norm.weight"),
    "calibration": (".mlp.calibration.",),
    "down": (".mlp.down_proj.",),
    "o": (".self_attn.o_proj.",),
    "ffn": (".mlp.",),
    "attn": (".self_attn.",),
    "all": ("",),
}
FROZEN = ("embed_tokens", "lm_head")  # the vocabulary matrices stay the dense model's


class RecoveryError(ValueError):
    """A bad recovery setting or input (one line, exit code 2 at the command line)."""


@dataclasses.dataclass
class RecoverConfig:
    """What to fit and how long. Defaults: chosen on the dev domains (README)."""

    # Dev (SmolLM2 20 %, 512 sequences, one epoch): every layer weight at 5e-5 reached a dev
    # ratio of 1.609 against 1.647 for norms + branches + down/o at 3e-4 (un-recovered: 1.738);
    # bench/results/dev/recover_smol20.json
    params: str = "all"  # '+'-joined names of PARAM_SETS
    lr: float = 5e-5
    num_samples: int = 512  # calibration sequences (the last `heldout` of them held out)
    seq_len: int = 128
    heldout: int = 32
    batch_size: int = 8
    epochs: float = 1.0  # passes over the training sequences (fractions allowed)
    eval_every: int = 16  # optimizer steps between held-out evaluations
    patience: int = 4  # evaluations without a gain before stopping
    warmup: float = 0.05  # fraction of steps with a rising learning rate
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Weight of the hidden-state term: the mean over decoder layers of each token's squared error
    # against the dense residual stream, relative to the dense token's squared norm. 0: KL only.
    hidden_weight: float = 0.0
    # An evaluation without a gain restores the best weights and halves the learning rate (fit()).
    backoff: bool = True
    # With prune: skip recovery (one line) instead of failing when its memory estimate exceeds what the
    # device has free; the CLI sets it when recovery is on by default rather than asked for.
    skip_if_too_large: bool = False
    dataset: str = "self"  # calibration text: as the pruner's --calibration
    sampler: str = "auto"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [p for p in self.param_names() if p not in PARAM_SETS]
        if unknown or not self.param_names():
            raise RecoveryError(f"unknown recovery parameter set {self.params!r}; join names of "
                                f"{', '.join(PARAM_SETS)} with '+'")
        if not 0 < self.lr < 1:
            raise RecoveryError(f"recovery learning rate must be in (0, 1), got {self.lr}")
        if self.heldout < 1 or self.num_samples < self.heldout + self.batch_size:
            raise RecoveryError(f"recovery needs at least heldout + batch_size = {self.heldout + self.batch_size} "
                                f"sequences, got --recover-samples {self.num_samples}")
        if self.hidden_weight < 0:
            raise RecoveryError(f"recovery hidden-state weight must be >= 0, got {self.hidden_weight}")
        if self.epochs <= 0 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise RecoveryError("recovery epochs, batch size, eval interval and patience must be positive")

    def param_names(self) -> list[str]:
        return [p for p in self.params.split("+") if p]


def memory_needed(dims, pruned_params: int, cfg: RecoverConfig) -> int:
    """Bytes a recovery holds at its peak, estimated: both models in fp32; per trained weight (at most
    every layer weight: the vocabulary matrices stay frozen) a gradient, two AdamW moments and the
    best step's copy; one batch's activations, the vocabulary-wide logit tensors of the KL and its
    gradient, and 1 GiB for the interpreter and libraries. Qwen2.5-Coder-0.5B at 20 %: 15.6 GiB
    estimated, 14.9 GiB peak resident memory measured during the fit."""
    from ..contract import count_parameters

    dense = count_parameters(None, dims)
    vocab_matrices = dims.vocab_size * dims.hidden_size * (1 if dims.tie_word_embeddings else 2)
    trained = max(0, pruned_params - vocab_matrices)
    tokens = cfg.batch_size * cfg.seq_len
    activations = tokens * dims.num_layers * (12 * dims.hidden_size + 4 * dims.intermediate_size) * 4
    logits = 8 * tokens * dims.vocab_size * 4
    return 4 * (dense + pruned_params) + 16 * trained + activations + logits + (1 << 30)


def memory_shortfall(dims, pruned_params: int, cfg: RecoverConfig) -> str | None:
    """Why recovery would not fit in the device's free memory (None when it fits)."""
    from ..io import preflight

    need = memory_needed(dims, pruned_params, cfg)
    free = memory_free(preflight.parse_device(cfg.device))
    if need <= free:
        return None
    return f"recovery needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free on {cfg.device}"


def _check_memory(pruned: Path, cfg: RecoverConfig) -> None:
    """Refuse, before any work, a recovery of ``pruned`` that would not fit in memory."""
    import json

    from ..contract import ModelDims, OlicaSpec, count_parameters

    config = json.loads((pruned / "config.json").read_text())
    dims = ModelDims.from_config(config)
    shortfall = memory_shortfall(dims, count_parameters(OlicaSpec.from_config(config), dims), cfg)
    if shortfall:
        raise RecoveryError(f"{shortfall}; recover on a machine with more memory, or with a smaller "
                            "--recover-batch-size")


def memory_free(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def select_parameters(model: torch.nn.Module, params: str) -> list[str]:
    """Freeze every parameter but those of the named sets; returns the names of the trained ones."""
    fragments = [f for name in params.split("+") if name for f in PARAM_SETS[name]]
    trained = []
    for name, p in model.named_parameters():
        on = any(f in name for f in fragments) and not any(f in name for f in FROZEN)
        p.requires_grad_(on)
        if on:
            trained.append(name)
    return trained


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) of the next-token distributions, in nats."""
    s = F.log_softmax(student_logits.float().flatten(0, -2), dim=-1)
    t = F.log_softmax(teacher_logits.float().flatten(0, -2), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def hidden_error(student_hidden, teacher_hidden) -> torch.Tensor:
    """Mean over layers and tokens of |h_s - h_t|^2 / |h_t|^2 along the residual stream.

    Per token, so that the few tokens with huge activations (the first one) weigh no more than the
    rest; the embeddings (index 0) are shared and skipped."""
    terms = []
    for hs, ht in zip(student_hidden[1:], teacher_hidden[1:]):
        ht = ht.float()
        err = (hs.float() - ht).pow(2).sum(-1) / ht.pow(2).sum(-1).clamp_min(1e-6)
        terms.append(err.mean())
    return torch.stack(terms).mean()


def _objective(student, teacher, batch: torch.LongTensor, hidden_weight: float) -> tuple[torch.Tensor, float]:
    """The training loss of one batch and its KL part (a float, for the running display)."""
    with torch.no_grad():
        t_out = teacher(input_ids=batch, output_hidden_states=hidden_weight > 0)
    s_out = student(input_ids=batch, output_hidden_states=hidden_weight > 0)
    kl = kl_to_teacher(s_out.logits, t_out.logits)
    loss = kl if hidden_weight == 0 else kl + hidden_weight * hidden_error(s_out.hidden_states,
                                                                           t_out.hidden_states)
    return loss, kl.item()


@torch.no_grad()
def mean_kl(student, teacher, ids: torch.LongTensor, *, batch_size: int) -> float:
    """KL(teacher || student) per token over ``ids`` ``[n, seq]``."""
    was_training = student.training
    student.eval()
    total, count = 0.0, 0
    device = next(student.parameters()).device
    for s in range(0, ids.shape[0], batch_size):
        batch = ids[s:s + batch_size].to(device)
        kl = kl_to_teacher(student(input_ids=batch).logits, teacher(input_ids=batch).logits)
        total += kl.item() * batch.numel()
        count += batch.numel()
    student.train(was_training)
    return total / count


def _lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    w = max(1, int(warmup * total))
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, total - w)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclasses.dataclass
class FitResult:
    best_state: dict[str, torch.Tensor] | None  # None: no step beat the starting weights
    history: list[dict[str, float]]
    heldout_before: float
    heldout_best: float
    best_step: int
    steps_run: int
    seconds: float


def _train_step(student, teacher, batch, opt, params, cfg: RecoverConfig, lr: float) -> float:
    """One optimizer step on ``batch``; returns its KL."""
    with torch.enable_grad():  # the CLI turns gradients off for the whole run
        loss, kl_value = _objective(student, teacher, batch, cfg.hidden_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        del loss
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return kl_value


def fit(student, teacher, train: torch.LongTensor, heldout: torch.LongTensor, cfg: RecoverConfig, *,
        trained: list[str], start_state, progress: bool = True) -> FitResult:
    """Minimise KL(teacher || student) over ``train``, keeping the weights best on ``heldout``.

    An evaluation without a gain puts the best weights so far back (``start_state()`` gives the
    starting ones), clears the optimizer's moments and halves the learning rate: a rate too high
    for a model costs an evaluation interval, not the recovery (``cfg.backoff``)."""
    t0 = time.perf_counter()
    device = next(student.parameters()).device
    named = dict(student.named_parameters())
    params = [named[n] for n in trained]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, int(cfg.epochs * train.shape[0]) // cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat([torch.randperm(train.shape[0], generator=gen) for _ in range(math.ceil(cfg.epochs))])
    before = best = mean_kl(student, teacher, heldout, batch_size=cfg.batch_size)
    history = [{"step": 0, "heldout_kl": before}]
    best_state, best_step, stale, running, lr_scale = None, 0, 0, None, 1.0
    bar = tqdm(total=steps, desc="recovering", unit="step", disable=not progress)
    student.train()
    step = 0
    for step in range(1, steps + 1):
        batch = train[order[(step - 1) * cfg.batch_size: step * cfg.batch_size]].to(device)
        lr = cfg.lr * lr_scale * _lr_factor(step - 1, steps, cfg.warmup)
        kl_value = _train_step(student, teacher, batch, opt, params, cfg, lr)
        running = kl_value if running is None else 0.9 * running + 0.1 * kl_value
        bar.update(1)
        bar.set_postfix(kl=f"{running:.4f}", heldout=f"{best:.4f}")
        if step % cfg.eval_every and step != steps:
            continue
        kl = mean_kl(student, teacher, heldout, batch_size=cfg.batch_size)
        history.append({"step": step, "train_kl_running": running, "heldout_kl": kl, "lr": lr})
        if math.isfinite(kl) and kl < best:
            best, best_step, stale = kl, step, 0
            best_state = {n: named[n].detach().clone() for n in trained}
            continue
        stale += 1
        if stale >= cfg.patience or not (cfg.backoff or math.isfinite(kl)):
            break
        if cfg.backoff:
            _load(named, best_state if best_state is not None else start_state())
            opt.state.clear()
            lr_scale *= 0.5
    bar.close()
    return FitResult(best_state=best_state, history=history, heldout_before=before, heldout_best=best,
                     best_step=best_step, steps_run=step, seconds=time.perf_counter() - t0)


@torch.no_grad()
def _load(named: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    for name, value in state.items():
        named[name].copy_(value)


def _checkpoint_tensors(path: Path):
    """(name, tensor) of every tensor of a checkpoint directory, shard by shard."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                yield name, sf.get_tensor(name)


def _calibration(reference: Path, cfg: RecoverConfig, *, device, progress: bool) -> torch.LongTensor:
    from transformers import AutoTokenizer

    from .pruner import calibration_mix

    tokenizer = AutoTokenizer.from_pretrained(str(reference))
    return calibration_mix(reference, tokenizer, cfg.dataset, num_samples=cfg.num_samples, seq_len=cfg.seq_len,
                           seed=cfg.seed, device=device, progress=progress, sampler=cfg.sampler)


def _reference_of(pruned: Path, reference: str | None) -> str:
    if reference:
        return reference
    from .pruner import load_report

    source = load_report(pruned).get("source") if (pruned / "olica_report.json").is_file() else None
    if not source:
        raise RecoveryError(f"{pruned} does not name its dense model; pass --reference DENSE")
    return source


def recover(pruned: str | Path, *, output: str | Path, reference: str | None = None,
            config: RecoverConfig | None = None, overwrite: bool = False, progress: bool = True,
            calibration_ids: torch.LongTensor | None = None, check_memory: bool = True) -> dict[str, Any]:
    """Recover the Olica checkpoint ``pruned`` against the dense ``reference`` into ``output``.

    ``calibration_ids`` (``[n, seq]``) replaces the sampled text; its last ``heldout`` rows are held
    out. A recovery that would not fit in memory fails first (``check_memory``; the pruner checks
    before it prunes). Returns the ``recovery`` section added to ``olica_report.json``.
    """
    from ..io import preflight
    from ..model.modeling import OlicaForCausalLM, is_olica_checkpoint, load_causal_lm
    from ..io.sources import resolve_model
    from ..io.writer import check_output_path

    cfg = config or RecoverConfig()
    pruned, output = Path(pruned), Path(output)
    if not is_olica_checkpoint(pruned):
        raise RecoveryError(f"{pruned} is not an Olica checkpoint (no config.json naming OlicaForCausalLM)")
    same = output.exists() and output.resolve() == pruned.resolve()
    if not same:
        check_output_path(output, overwrite=overwrite)
    if check_memory:
        _check_memory(pruned, cfg)
    device = preflight.parse_device(cfg.device)
    ref_dir = resolve_model(_reference_of(pruned, reference))
    t0 = time.perf_counter()
    ids = calibration_ids if calibration_ids is not None else _calibration(ref_dir, cfg, device=device,
                                                                          progress=progress)
    if ids.shape[0] < cfg.heldout + cfg.batch_size:
        raise RecoveryError(f"recovery needs at least {cfg.heldout + cfg.batch_size} sequences, got {ids.shape[0]}")
    sample_s = time.perf_counter() - t0
    train, heldout = ids[:-cfg.heldout], ids[-cfg.heldout:]
    torch.manual_seed(cfg.seed)
    teacher = load_causal_lm(ref_dir, dtype=torch.float32, device=str(device))
    teacher.requires_grad_(False)
    student = OlicaForCausalLM.from_pretrained(str(pruned), dtype=torch.float32).to(device)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise RecoveryError(f"{ref_dir} has a vocabulary of {teacher.config.vocab_size}, the pruned model "
                            f"{student.config.vocab_size}: not its dense model")
    trained = select_parameters(student, cfg.params)
    if not trained:
        raise RecoveryError(f"the parameter set {cfg.params!r} matches no parameter of {pruned}")
    calib_slice = train[:cfg.heldout]
    calib_before = mean_kl(student, teacher, calib_slice, batch_size=cfg.batch_size)
    wanted = set(trained)
    result = fit(student, teacher, train, heldout, cfg, trained=trained, progress=progress,
                 start_state=lambda: {n: t for n, t in _checkpoint_tensors(pruned) if n in wanted})
    kept = result.best_state is not None
    named = dict(student.named_parameters())
    if kept:
        _load(named, result.best_state)
    else:
        print("olica: recovery did not lower the held-out KL; the un-recovered weights are written unchanged",
              file=sys.stderr)
    calib_after = mean_kl(student, teacher, calib_slice, batch_size=cfg.batch_size) if kept else calib_before
    section = {
        "applied": kept,
        "config": dataclasses.asdict(cfg),
        "reference": str(ref_dir),
        "trained_parameters": sum(named[n].numel() for n in trained),
        "trained_tensors": len(trained),
        "tokens": {"train": int(train.numel()), "heldout": int(heldout.numel()),
                   "seen": int(result.steps_run * cfg.batch_size * ids.shape[1])},
        "heldout_kl": {"before": result.heldout_before, "after": result.heldout_best if kept else
                       result.heldout_before},
        "calibration_kl": {"before": calib_before, "after": calib_after},
        "best_step": result.best_step, "steps": result.steps_run, "history": result.history,
        "timings": {"sampling_s": round(sample_s, 1), "fit_s": round(result.seconds, 1),
                    "total_s": round(time.perf_counter() - t0, 1)},
    }
    _write(pruned, output, {n: named[n] for n in trained} if kept else {}, section, overwrite=overwrite or same)
    return section


def _write(pruned: Path, output: Path, fitted: dict[str, torch.Tensor], section: dict, *, overwrite: bool) -> None:
    """The pruned checkpoint with the ``fitted`` tensors replaced (in their stored dtype); every
    other tensor, the config and the tokenizer byte for byte."""
    import json

    from .pruner import load_report
    from ..io.writer import CheckpointWriter

    config = json.loads((pruned / "config.json").read_text())
    report = load_report(pruned) if (pruned / "olica_report.json").is_file() else {}
    report["recovery"] = section
    shard_bytes = max((f.stat().st_size for f in pruned.glob("*.safetensors")), default=2 << 30)
    with CheckpointWriter(output, overwrite=overwrite, max_shard_bytes=shard_bytes + (1 << 20)) as writer:
        for name, tensor in _checkpoint_tensors(pruned):
            if name in fitted:
                tensor = fitted[name].detach().to(tensor.dtype)
            writer.add(name, tensor)
        writer.finish(config=config, report=report, copy_from=pruned)  # tokenizer, generation config
