"""Turning a target sparsity into per-layer widths.

The target is a fraction of *all* parameters (embeddings included) and is hit
within a tolerance after rounding every width to its alignment, calibration
branches counted. Three allocations:

- ``uniform``: every layer loses the same fraction of its V/O and FFN widths
  (the paper's and the baselines' protocol).
- ``adaptive``: V/O directions and FFN neurons of all layers compete in one
  ranking by *cost per parameter*, the cost of a unit being the calibration
  energy it carries relative to the residual-stream energy at its layer
  (measured on the dense model). Layers whose units matter little to their
  stream give up more; the first and last layers are usually spared.
- ``kl``: V/O loses the uniform fraction in every pruned layer, and the FFN
  budget is spread over the layers by their measured *sensitivity*: the KL
  divergence of the model's next-token distribution when that layer alone
  loses the uniform FFN fraction (``sensitivity.DensePass.measure_sensitivity``). Layer ``i``
  loses an FFN fraction proportional to ``k_i ** -alpha`` (``alpha`` 0 is
  uniform; 1 minimises ``sum k_i f_i**2`` if KL grew with the square of the
  removed fraction), capped so every layer keeps ``min_keep``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..contract import LayerSpec, ModelDims, count_parameters, OlicaSpec
from .linalg import lowrank_pays_off


class BudgetError(ValueError):
    pass


@dataclasses.dataclass
class LayerCosts:
    """Per-layer unit energies from the dense model (any order; sorted here)."""

    ffn: torch.Tensor  # [m]   E‖contribution‖² per FFN neuron
    vo: torch.Tensor  # [e]   E‖contribution‖² per value slot (summed over KV heads)
    stream: float  # E‖h‖² of the residual stream at this layer's output


@dataclasses.dataclass(frozen=True)
class Alignment:
    ffn: int = 32
    v: int = 8
    rank: int = 32


def qk_rank(out_features: int, in_features: int, sparsity: float, align: int) -> int | None:
    """Rank removing ``sparsity`` of a projection's params, or None (keep dense)."""
    if sparsity <= 0:
        return None
    r = int(math.floor((1 - sparsity) * out_features * in_features / (in_features + out_features) / align)) * align
    r = max(align, r)
    return r if lowrank_pays_off(r, in_features, out_features) else None


def plan_widths(dims: ModelDims, *, sparsity: float, qkv_bias: bool, allocation: str,
                costs: list[LayerCosts] | None, qk_sparsity: float, calibration_layers: list[int],
                calibration_rank: int, align: Alignment, tolerance: float = 0.005,
                min_keep: float = 0.1, spare_layers: tuple[int, ...] = (),
                vo_sparsity: float | None = None, sensitivity: list[float] | None = None,
                kl_alpha: float = 1.0, kl_vo: bool = False) -> list[LayerSpec]:
    """Per-layer widths whose total parameter count is ``(1 - sparsity)`` of dense.

    ``vo_sparsity`` (uniform allocation only): the fraction of each pruned
    layer's V/O width to remove; the FFN then takes whatever the budget still
    needs. ``None``: V/O and FFN lose the same fraction.
    ``sensitivity`` (``kl`` allocation): one non-negative number per layer
    (spared layers' are ignored); ``kl_alpha`` how strongly it moves the FFN
    budget between layers (this function's default is 1; the pruner passes
    ``default_kl_alpha(sparsity, dense_params)`` unless told otherwise); with ``kl_vo`` each
    layer's V/O fraction is scaled by the same factor as its FFN fraction
    (otherwise V/O stays uniform).
    """
    budget = _Budget(dims, sparsity=sparsity, qkv_bias=qkv_bias, qk_sparsity=qk_sparsity,
                     calibration_layers=calibration_layers, calibration_rank=calibration_rank, align=align,
                     min_keep=min_keep)
    L = dims.num_layers
    spared = {i % L for i in spare_layers} if L > 2 else set()
    if allocation in ("uniform", "kl"):
        ffn_keep, v_keep = _fractional_widths(budget, spared, allocation=allocation, vo_sparsity=vo_sparsity,
                                              sensitivity=sensitivity, kl_alpha=kl_alpha, kl_vo=kl_vo)
    elif allocation == "adaptive":
        if costs is None:
            raise ValueError("adaptive allocation needs per-layer costs")
        ffn_keep, v_keep = _greedy(costs, budget.to_remove, budget.ffn_unit, budget.vo_unit, dims.intermediate_size,
                                   dims.head_dim, budget.min_ffn, budget.min_v)
    else:
        raise ValueError(f"unknown allocation {allocation!r}; choose adaptive, kl or uniform")
    return _round_widths(budget, ffn_keep, v_keep, costs=costs, spared=spared, tolerance=tolerance)


class _Budget:
    """What a width plan is held to: the parameter target, the widths' units and floors.
    Raises :class:`BudgetError` when the target is out of reach of the FFN and V/O widths."""

    def __init__(self, dims: ModelDims, *, sparsity: float, qkv_bias: bool, qk_sparsity: float,
                 calibration_layers: list[int], calibration_rank: int, align: Alignment, min_keep: float) -> None:
        d, h, g, e, m, L = (dims.hidden_size, dims.num_heads, dims.num_kv_heads, dims.head_dim,
                            dims.intermediate_size, dims.num_layers)
        self.dims, self.sparsity, self.qkv_bias, self.align, self.min_keep = dims, sparsity, qkv_bias, align, min_keep
        self.dense_total = count_parameters(None, dims, qkv_bias=qkv_bias)
        self.target_total = (1 - sparsity) * self.dense_total
        self.q_rank = qk_rank(h * e, d, qk_sparsity, align.rank)
        self.k_rank = qk_rank(g * e, d, qk_sparsity, align.rank)
        self.cal = set(calibration_layers)
        self.calibration_rank = calibration_rank
        self.ffn_unit = 3 * d
        self.vo_unit = (g + h) * d + (g if qkv_bias else 0)
        self.min_ffn = max(align.ffn, int(math.ceil(min_keep * m / align.ffn)) * align.ffn)
        self.min_v = max(align.v, int(math.ceil(min_keep * e / align.v)) * align.v)
        base = self.spec_for([m] * L, [e] * L)
        self.to_remove = self.total(base) - self.target_total
        if self.to_remove < 0:
            raise BudgetError(
                f"sparsity {sparsity:.3f} is reached by the Q/K factorisation and calibration settings alone; "
                "lower --qk-sparsity or the calibration rank"
            )
        max_removable = L * ((m - self.min_ffn) * self.ffn_unit + (e - self.min_v) * self.vo_unit)
        if self.to_remove > max_removable:
            raise BudgetError(
                f"sparsity {sparsity:.3f} needs removing {self.to_remove:,.0f} parameters but the FFN and V/O "
                f"widths can give at most {max_removable:,.0f} (embeddings are not pruned; each layer keeps at "
                f"least {self.min_ffn} FFN neurons and {self.min_v} value dims at alignment "
                f"{align.ffn}/{align.v}); choose a lower sparsity, or a smaller --align for a small model"
            )

    def spec_for(self, ffn_keep: list[int], v_keep: list[int]) -> list[LayerSpec]:
        return [LayerSpec(self.q_rank, self.k_rank, v_keep[i], ffn_keep[i],
                          self.calibration_rank if i in self.cal else 0)
                for i in range(self.dims.num_layers)]

    def total(self, specs: list[LayerSpec]) -> int:
        return count_parameters(OlicaSpec("LlamaForCausalLM", self.qkv_bias, specs), self.dims)


def _fractional_widths(budget: _Budget, spared: set[int], *, allocation: str, vo_sparsity: float | None,
                       sensitivity: list[float] | None, kl_alpha: float, kl_vo: bool
                       ) -> tuple[list[float], list[float]]:
    """Unrounded FFN and V/O widths of the uniform and kl allocations: every layer but the
    spared ones loses the same fraction of its widths (kl: its FFN fraction by sensitivity)."""
    m, e, L = budget.dims.intermediate_size, budget.dims.head_dim, budget.dims.num_layers
    sparsity, min_keep, to_remove = budget.sparsity, budget.min_keep, budget.to_remove
    ffn_unit, vo_unit = budget.ffn_unit, budget.vo_unit
    pruned = L - len(spared)
    if vo_sparsity is None:
        frac = v_frac = to_remove / (pruned * (m * ffn_unit + e * vo_unit))
    else:
        v_frac = vo_sparsity
        frac = (to_remove - pruned * v_frac * e * vo_unit) / (pruned * m * ffn_unit)
        if frac < 0:
            raise BudgetError(f"sparsity {sparsity:.3f} is exceeded by the V/O and Q/K settings alone; "
                              "lower --vo-sparsity or --qk-sparsity")
    if max(frac, v_frac) > 1 - min_keep:
        raise BudgetError(f"sparsity {sparsity:.3f} cannot be reached while sparing layers {sorted(spared)}"
                          + (" with this V/O share" if vo_sparsity is not None else "")
                          + "; choose a lower sparsity")
    fracs = [0.0 if i in spared else frac for i in range(L)]
    if allocation == "kl":
        if sensitivity is None or len(sensitivity) != L:
            raise ValueError("kl allocation needs one sensitivity per layer")
        fracs = spread_by_sensitivity(frac, sensitivity, [i for i in range(L) if i not in spared],
                                      alpha=kl_alpha, cap=1 - min_keep, L=L)
    v_fracs = [0.0 if i in spared else v_frac for i in range(L)]
    if allocation == "kl" and kl_vo and frac > 0:
        v_fracs = [min(1 - min_keep, v_frac * f / frac) for f in fracs]
    return [m - f * m for f in fracs], [e - f * e for f in v_fracs]


def _round_widths(budget: _Budget, ffn_keep: list[float], v_keep: list[float], *,
                  costs: list[LayerCosts] | None, spared: set[int], tolerance: float) -> list[LayerSpec]:
    """The widths rounded to their alignment, then FFN chunks traded until the total is
    within ``tolerance`` of the target."""
    align, min_ffn, min_v = budget.align, budget.min_ffn, budget.min_v
    m, e, L = budget.dims.intermediate_size, budget.dims.head_dim, budget.dims.num_layers
    ffn_w = [min(m, max(min_ffn, int(round(k / align.ffn)) * align.ffn)) for k in ffn_keep]
    v_w = [min(e, max(min_v, int(round(k / align.v)) * align.v)) for k in v_keep]
    # Rounding moves the total; trade FFN chunks until within tolerance,
    # taking from (or giving to) the layer where the chunk matters least (most).
    order_cost = _chunk_costs(costs, align.ffn) if costs is not None else None
    best, best_err = budget.spec_for(ffn_w, v_w), math.inf
    last_sign = 0
    for _ in range(4 * L * max(1, m // align.ffn)):
        specs = budget.spec_for(ffn_w, v_w)
        excess = (budget.total(specs) - budget.target_total) / budget.dense_total
        if abs(excess) < best_err:
            best, best_err = specs, abs(excess)
        sign = 1 if excess > 0 else -1
        if abs(excess) <= tolerance / 4 or (last_sign and sign != last_sign):
            break  # close enough, or one chunk overshoots: keep the closer side
        last_sign = sign
        if excess > 0:
            cands = [i for i in range(L) if ffn_w[i] - align.ffn >= min_ffn and i not in spared]
            if not cands:
                break
            i = min(cands, key=lambda i: order_cost(i, ffn_w[i] - align.ffn) if order_cost else -ffn_w[i])
            ffn_w[i] -= align.ffn
        else:
            cands = [i for i in range(L) if ffn_w[i] + align.ffn <= m]
            if not cands:
                break
            i = max(cands, key=lambda i: order_cost(i, ffn_w[i]) if order_cost else -ffn_w[i])
            ffn_w[i] += align.ffn
    if best_err <= tolerance:
        return best
    raise BudgetError(
        f"cannot reach sparsity {budget.sparsity:.3f} within ±{tolerance * 100:.1f} pp with FFN widths aligned to "
        f"{align.ffn}: the model is too small for this alignment; use a smaller --align"
    )


# kl allocation: how strongly the measured sensitivities move the FFN budget,
# by sparsity. Chosen on SmolLM2-135M's dev domains (bench/results/dev/sweep5,
# sweep7-10): up to 30 % alpha 1 wins or ties; at 40 % 0.5 is best (1 is no
# better than uniform) and at 50 % 0.25 (1 is worse than uniform). Deeper cuts
# make each layer's probe a larger perturbation and the measured sensitivities
# spread further apart, so the same alpha moves more.
KL_ALPHA_POINTS = ((0.3, 1.0), (0.5, 0.25))
# Larger models want a sharper allocation: from LARGE_MODEL_PARAMS parameters up
# the schedule is KL_ALPHA_LARGE times as steep. Dev domains at 20 %: SmolLM2-135M
# is best at alpha 1 (3 is 2.2 % worse, sweep7), Qwen2.5-Coder-0.5B at 3-4 (3 is
# 5.8 % better than 1, sweep6/6b) and Qwen2.5-Coder-1.5B at 3 (17 % better than
# 1, sweep14). Three models cannot separate size from family; the boundary is the
# geometric midpoint of 135 M and 494 M. Above 30 % the larger models' schedule
# is an extrapolation (on Qwen-0.5B at 30 % alpha 2 beat 1 by 0.9 %, sweep6c/8b).
LARGE_MODEL_PARAMS = 250_000_000
KL_ALPHA_LARGE = 3.0


def default_kl_alpha(sparsity: float, dense_params: int | None = None) -> float:
    """The kl allocation's alpha for ``sparsity`` when none is given: 1 up to
    30 %, then falling linearly to 0.25 at 50 % and staying there; three times
    that for a model of at least ``LARGE_MODEL_PARAMS`` parameters."""
    (s0, a0), (s1, a1) = KL_ALPHA_POINTS
    if sparsity <= s0:
        alpha = a0
    elif sparsity >= s1:
        alpha = a1
    else:
        alpha = a0 + (a1 - a0) * (sparsity - s0) / (s1 - s0)
    if dense_params is not None and dense_params >= LARGE_MODEL_PARAMS:
        alpha *= KL_ALPHA_LARGE
    return alpha


def spread_by_sensitivity(mean_frac: float, sensitivity: list[float], layers: list[int], *, alpha: float,
                          cap: float, L: int) -> list[float]:
    """Per-layer removed fractions over ``layers`` (others 0) with mean ``mean_frac``,
    proportional to ``sensitivity ** -alpha`` where no layer exceeds ``cap``."""
    if not layers:
        return [0.0] * L
    k = torch.tensor([float(sensitivity[i]) for i in layers], dtype=torch.float64)
    if not bool(torch.isfinite(k).all()) or bool((k < 0).any()):
        raise ValueError("sensitivities must be finite and non-negative")
    # A layer measured at exactly 0 (nothing changed) is treated as the least sensitive
    # measured one, so one layer cannot swallow the whole budget.
    floor = float(k[k > 0].min()) if bool((k > 0).any()) else 1.0
    k = k.clamp_min(floor)
    w = (k / torch.exp(torch.log(k).mean())) ** -alpha  # relative to the geometric mean
    target = mean_frac * len(layers)
    lo, hi = 0.0, cap / float(w.min())  # at hi every layer is at the cap
    if float(torch.clamp(w * hi, max=cap).sum()) < target:
        raise BudgetError("the FFN budget cannot be spread under the per-layer cap")
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(torch.clamp(w * mid, max=cap).sum()) < target:
            lo = mid
        else:
            hi = mid
    f = torch.clamp(w * hi, max=cap)
    out = [0.0] * L
    for j, i in enumerate(layers):
        out[i] = float(f[j])
    return out


def _greedy(costs: list[LayerCosts], to_remove: float, ffn_unit: int, vo_unit: int, m: int, e: int,
            min_ffn: int, min_v: int) -> tuple[list[float], list[float]]:
    keys, layer_of, kind_of = [], [], []
    for i, c in enumerate(costs):
        ffn = torch.sort(c.ffn.double()).values[: m - min_ffn] / c.stream / ffn_unit
        vo = torch.sort(c.vo.double()).values[: e - min_v] / c.stream / vo_unit
        keys += [ffn, vo]
        layer_of += [torch.full_like(ffn, i), torch.full_like(vo, i)]
        kind_of += [torch.zeros_like(ffn), torch.ones_like(vo)]
    key = torch.cat(keys)
    layer = torch.cat(layer_of).long()
    kind = torch.cat(kind_of).long()
    order = torch.argsort(key)
    params = torch.where(kind[order] == 0, float(ffn_unit), float(vo_unit))
    n = int(torch.searchsorted(torch.cumsum(params, 0), torch.tensor(to_remove, dtype=params.dtype))) + 1
    taken = order[:n]
    L = len(costs)
    ffn_removed = torch.bincount(layer[taken][kind[taken] == 0], minlength=L)
    vo_removed = torch.bincount(layer[taken][kind[taken] == 1], minlength=L)
    return [float(m - r) for r in ffn_removed], [float(e - r) for r in vo_removed]


def _chunk_costs(costs: list[LayerCosts], chunk: int):
    sorted_ffn = [torch.sort(c.ffn.double()).values for c in costs]

    def cost(i: int, keep_after: int) -> float:
        # Energy of the neurons between keep_after and keep_after + chunk (by rank).
        vals = sorted_ffn[i]
        m = vals.numel()
        lo, hi = max(0, m - keep_after - chunk), m - keep_after
        return float(vals[lo:hi].sum() / costs[i].stream)

    return cost
