"""What a prune is asked to do: :class:`PruneConfig`, filled from a preset (``PRESETS``)
and validated on construction."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..io.selfcal import ENGINES
from .budget import default_kl_alpha

METHODS = ("olica", "magnitude", "wanda-sp")


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
        # spread over the layers by their measured output KL (alpha: budget.default_kl_alpha, by sparsity and model size).
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
    #   (None: budget.default_kl_alpha by sparsity and model size, set by for_model() once the model is known)
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
        if self.kl_alpha is not None and not (0 <= self.kl_alpha <= 4):
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

    def for_model(self, dense_params: int) -> PruneConfig:
        """This config with what depends on the model filled in: an unset kl alpha
        becomes ``budget.default_kl_alpha`` for this sparsity and model size."""
        if self.kl_alpha is not None:
            return self
        return dataclasses.replace(self, kl_alpha=default_kl_alpha(self.sparsity, dense_params))
