"""FLAP (An et al., "Fluctuation-based Adaptive Structured Pruning for Large Language
Models", AAAI 2024), written for this bench from the paper's description.

Produces an IN-MEMORY pruned transformers model (the source family's own classes,
modules replaced by narrower ones with biases). Writing it as an Olica checkpoint
would need the checkpoint contract to carry FLAP's per-layer head counts and output
biases; that contract change is out of scope here, so ``bench/quality.py`` scores the
model directly.

The method, with the paper's defaults (its WIFV metric and its AL-AM structure,
the configuration of the paper's main tables):

- Units. An FFN neuron (row of gate/up, column of down_proj); an attention unit is
  a KV group: its K and V heads, the query heads that share them, and their
  columns of o_proj (with multi-head attention a group is one head).
- Fluctuation metric (WIFV) per input channel ``j`` of ``o_proj`` and of
  ``down_proj``: the sample variance of the channel's input over the calibration
  tokens (N - 1 denominator) times the squared norm of weight column ``j``. All
  statistics come from one pass of the DENSE model (no layer is pruned before the
  next is measured), as in the paper.
- Standardisation and global ranking (AL-AM, "adaptive structure search"): within
  each layer, the channel metrics of each structure type (attention / MLP) are
  standardised to zero mean and unit standard deviation; an attention unit's score
  is the mean of its channels' standardised metrics. All units of all layers and
  both types are then ranked together, lowest first, and removed in that order
  until the parameter target is met (each unit weighted by its parameter count,
  as the paper's threshold does). ``standardize="type"`` pools each structure type
  over all layers instead (not the paper's default; not used by the bench).
- Bias compensation: the removed channels' mean contribution over the calibration
  tokens, ``W[:, removed] @ mean(x[removed])``, becomes (is added to) the output
  bias of ``o_proj`` / ``down_proj``; so on the calibration tokens the pruned
  projection's mean output equals the dense one's exactly.

Differences from the paper's setting: calibration is the bench's windows (the same
ones every method gets, e.g. 128 self-sampled windows of 128 tokens) rather than
1,024 WikiText-2 windows of 128 tokens; the target is a fraction of ALL parameters
(embeddings included, tied embeddings once, the added biases counted), as Olica
counts, where the paper's ratio counts the decoder layers' linear weights only; the
last unit is skipped when it is an attention unit that would overshoot the target
by more than ``tolerance`` (then FFN neurons of the same ranking fill in), which
only matters when a unit is a large share of the model (tiny test models). The
authors' code also squares the attention metric before standardising; the paper's
formula does not, and neither does this.

A layer may lose every attention unit or every FFN neuron; that branch then outputs
its compensation bias alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._common import (check_single_attention_type, count_params, decoder_layers, linear, load_dense,
                      sparsity_report)


class ConstantBranch(nn.Module):
    """A pruned-away attention or MLP branch: its compensation bias at every position."""

    def __init__(self, bias: torch.Tensor, returns_tuple: bool) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states=None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = kwargs["hidden_states"]
        out = self.bias.to(hidden_states.dtype).expand(*hidden_states.shape[:-1], -1)
        return (out, None) if self.returns_tuple else out


class _Moments:
    """Per-channel count, mean and sum of squared deviations of a projection's input,
    in float64, merged batch by batch (Chan et al.'s update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        nb = x.shape[0]
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / n)
        self.n = n

    @property
    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.n - 1, 1)


@torch.no_grad()
def input_moments(model, ids: torch.Tensor, *, batch_size: int = 8) -> list[dict[str, _Moments]]:
    """Per layer, the input moments of ``o_proj`` and ``down_proj`` over the calibration windows."""
    check_single_attention_type(model)
    device = next(model.parameters()).device
    stats = [{"attn": _Moments(), "mlp": _Moments()} for _ in decoder_layers(model)]
    handles = []
    for layer, st in zip(decoder_layers(model), stats):
        for mod, key in ((layer.self_attn.o_proj, "attn"), (layer.mlp.down_proj, "mlp")):
            handles.append(mod.register_forward_pre_hook(lambda _m, args, m=st[key]: m.add(args[0])))
    try:
        for start in range(0, len(ids), batch_size):  # the decoder alone: no logits needed
            model.model(input_ids=ids[start:start + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


@dataclass
class _Unit:
    score: float
    kind: str  # "attn" (a KV group) or "mlp" (an FFN neuron)
    layer: int
    index: int
    params: int


def _standardize(x: torch.Tensor) -> torch.Tensor:
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


def _geometry(model):
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return heads, kv, heads // kv, head_dim


def unit_scores(model, stats, *, standardize: str = "layer") -> list[_Unit]:
    """Every prunable unit with its standardised FLAP score and its parameter count."""
    if standardize not in ("layer", "type"):
        raise ValueError(f"standardize must be 'layer' or 'type', not {standardize!r}")
    _, _, n_rep, head_dim = _geometry(model)
    raw = {"attn": [], "mlp": []}
    for layer, st in zip(decoder_layers(model), stats):
        for key, proj in (("attn", layer.self_attn.o_proj), ("mlp", layer.mlp.down_proj)):
            w2 = proj.weight.detach().double().pow(2).sum(0)  # squared norm of each input column
            raw[key].append(st[key].variance.to(w2.device) * w2)
    if standardize == "layer":
        std = {k: [_standardize(m) for m in v] for k, v in raw.items()}
    else:
        std = {}
        for k, v in raw.items():
            pooled = _standardize(torch.cat(v))
            std[k] = list(pooled.split([m.numel() for m in v]))
    units = []
    for i, layer in enumerate(decoder_layers(model)):
        attn, mlp = layer.self_attn, layer.mlp
        d = attn.o_proj.out_features
        group_ch = n_rep * head_dim
        q_bias = n_rep * head_dim if attn.q_proj.bias is not None else 0
        kv_bias = 2 * head_dim if attn.k_proj.bias is not None else 0
        group_params = group_ch * d * 2 + 2 * head_dim * d + q_bias + kv_bias  # q rows + o cols + k/v rows
        for g, s in enumerate(std["attn"][i].reshape(-1, group_ch).mean(1).tolist()):
            units.append(_Unit(s, "attn", i, g, group_params))
        mlp_bias = int(mlp.gate_proj.bias is not None) + int(mlp.up_proj.bias is not None)
        neuron_params = 3 * mlp.down_proj.out_features + mlp_bias
        for j, s in enumerate(std["mlp"][i].tolist()):
            units.append(_Unit(s, "mlp", i, j, neuron_params))
    return units


def choose_removal(units: list[_Unit], *, params_dense: int, sparsity: float, hidden: int,
                   has_bias: dict[tuple[str, int], bool], tolerance: float = 0.005) -> list[_Unit]:
    """Lowest-scored units first until ``sparsity`` of ``params_dense`` is removed; the
    compensation bias a branch gains with its first removed unit is counted against it."""
    need = sparsity * params_dense
    slack = tolerance * params_dense
    removed, chosen, biased = 0, [], set()
    for u in sorted(units, key=lambda u: u.score):
        if removed >= need:
            break
        key = (u.kind, u.layer)
        cost = u.params - (hidden if key not in biased and not has_bias[key] else 0)
        if u.kind == "attn" and removed + cost > need + slack:
            continue  # this unit would overshoot the target; finer units further down the ranking fill in
        chosen.append(u)
        removed += cost
        biased.add(key)
    return chosen


@torch.no_grad()
def apply_removal(model, chosen: list[_Unit], stats, *, bias: bool = True) -> None:
    """Remove ``chosen`` units in place; with ``bias``, compensate their mean contribution."""
    heads, kv, n_rep, head_dim = _geometry(model)
    by_layer: dict[tuple[str, int], set[int]] = {}
    for u in chosen:
        by_layer.setdefault((u.kind, u.layer), set()).add(u.index)
    for i, layer in enumerate(decoder_layers(model)):
        gone = by_layer.get(("attn", i))
        if gone:
            attn = layer.self_attn
            keep_g = [g for g in range(kv) if g not in gone]
            keep_kv = torch.tensor([g * head_dim + c for g in keep_g for c in range(head_dim)], dtype=torch.long)
            keep_q = torch.tensor([(g * n_rep + r) * head_dim + c for g in keep_g for r in range(n_rep)
                                   for c in range(head_dim)], dtype=torch.long)
            new_bias = _compensation(attn.o_proj, keep_q, stats[i]["attn"]) if bias else attn.o_proj.bias
            if not keep_g:
                layer.self_attn = ConstantBranch(_or_zero(new_bias, attn.o_proj), returns_tuple=True)
            else:
                for name, keep in (("q_proj", keep_q), ("k_proj", keep_kv), ("v_proj", keep_kv)):
                    p = getattr(attn, name)
                    setattr(attn, name, linear(p.weight[keep], None if p.bias is None else p.bias[keep], p))
                attn.o_proj = linear(attn.o_proj.weight[:, keep_q], new_bias, attn.o_proj)
        gone = by_layer.get(("mlp", i))
        if gone:
            mlp = layer.mlp
            keep = torch.tensor([j for j in range(mlp.down_proj.in_features) if j not in gone], dtype=torch.long)
            new_bias = _compensation(mlp.down_proj, keep, stats[i]["mlp"]) if bias else mlp.down_proj.bias
            if keep.numel() == 0:
                layer.mlp = ConstantBranch(_or_zero(new_bias, mlp.down_proj), returns_tuple=False)
            else:
                for name in ("gate_proj", "up_proj"):
                    p = getattr(mlp, name)
                    setattr(mlp, name, linear(p.weight[keep], None if p.bias is None else p.bias[keep], p))
                mlp.down_proj = linear(mlp.down_proj.weight[:, keep], new_bias, mlp.down_proj)


def _compensation(proj: nn.Linear, keep: torch.Tensor, moments: _Moments) -> torch.Tensor:
    """``proj``'s bias plus the mean contribution of its input channels outside ``keep`` (float64)."""
    mask = torch.ones(proj.in_features, dtype=torch.bool)
    mask[keep] = False
    w = proj.weight.detach().double()
    b = w[:, mask] @ moments.mean.to(w.device)[mask]
    return b if proj.bias is None else b + proj.bias.detach().double()


def _or_zero(b: torch.Tensor | None, proj: nn.Linear) -> torch.Tensor:
    return b if b is not None else torch.zeros(proj.out_features, dtype=proj.weight.dtype)


@torch.no_grad()
def flap(model, calibration_ids: torch.Tensor, sparsity: float, *, batch_size: int = 8,
         standardize: str = "layer", bias: bool = True, tolerance: float = 0.005):
    """Prune ``model`` in place to remove ``sparsity`` of ALL its parameters; returns
    ``(model, report)``."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), not {sparsity}")
    params_dense = count_params(model)
    stats = input_moments(model, calibration_ids, batch_size=batch_size)
    units = unit_scores(model, stats, standardize=standardize)
    has_bias = {}
    for i, layer in enumerate(decoder_layers(model)):
        has_bias[("attn", i)] = layer.self_attn.o_proj.bias is not None or not bias
        has_bias[("mlp", i)] = layer.mlp.down_proj.bias is not None or not bias
    hidden = decoder_layers(model)[0].self_attn.o_proj.out_features
    chosen = choose_removal(units, params_dense=params_dense, sparsity=sparsity, hidden=hidden,
                            has_bias=has_bias, tolerance=tolerance)
    apply_removal(model, chosen, stats, bias=bias)
    pruned = count_params(model)
    rep = {"method": "flap", "sparsity": sparsity_report(sparsity, params_dense, pruned)}
    if abs(rep["sparsity"]["achieved"] - sparsity) > tolerance:
        raise RuntimeError(f"FLAP reached {rep['sparsity']['achieved']:.4f}, not {sparsity} +- {tolerance}")
    n_layers = len(decoder_layers(model))
    kv = _geometry(model)[1]
    removed_groups = [sum(1 for u in chosen if u.kind == "attn" and u.layer == i) for i in range(n_layers)]
    removed_neurons = [sum(1 for u in chosen if u.kind == "mlp" and u.layer == i) for i in range(n_layers)]
    m = model.config.intermediate_size
    rep["peer"] = {
        "method": "flap", "metric": "WIFV", "structure": "AL-AM", "standardize": standardize,
        "bias_compensation": bias, "calibration_tokens": int(calibration_ids.numel()),
        "kv_groups_kept": [kv - r for r in removed_groups],
        "ffn_kept": [m - r for r in removed_neurons],
    }
    return model, rep


def prune(src, *, sparsity: float, calibration_ids: torch.Tensor, device: str = "cpu", **kwargs):
    """Load the dense model at ``src`` and prune it with FLAP: ``(model, report)``."""
    return flap(load_dense(src, device=device), calibration_ids, sparsity, **kwargs)
