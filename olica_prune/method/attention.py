"""The attention step of the prune pass: Q/K by activation-aware low rank, V/O by the
orthogonal neuron decomposition (OND; a baseline's scored selection instead), per KV head.

:class:`AttentionStep` is a part of the pruner's run (``pruner._Run``); the dense pass
(``sensitivity.DensePass``) reuses its V/O statistics to measure the value directions.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .layers import build_layer
from .linalg import damped_cholesky, lowrank_factorize, ranked_basis, truncate_vo, vo_basis
from .run import REPORT_BATCHES, RunState, token_weights


class AttentionStep(RunState):
    """Q/K low rank and V/O decomposition of one layer, and the statistics they read."""

    def _attention_step(self, i: int, layer: nn.Module, spec, hidden: list[torch.Tensor], *, weighted: bool):
        """Q/K low rank and the V/O decomposition (or a baseline's V/O selection) of
        one layer. Returns the layer's attention tensors and norms, the residual
        stream after the pruned attention, and its relative output error."""
        cov = self._attn_stats(layer, hidden, weighted=weighted)
        chol = damped_cholesky(cov)
        state: dict[str, torch.Tensor] = {
            "input_layernorm.weight": layer.input_layernorm.weight,
            "post_attention_layernorm.weight": layer.post_attention_layernorm.weight,
        }
        self._qk_lowrank(layer.self_attn, spec, chol, state)
        dense_out = self._vo_step(layer, spec, hidden, cov, chol, state, weighted=weighted)
        mid, rel_error = self._pruned_attention(i, layer, spec, state, hidden, dense_out)
        return state, mid, rel_error

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
            xw = x * token_weights(h).to(x.dtype)[:, None] if weighted else x
            cov += (xw.T @ x).double()
            n += x.shape[0]
        return cov / n

    @staticmethod
    def _qk_lowrank(attn: nn.Module, spec, chol: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Q / K: activation-aware low rank (``spec.q_rank``/``k_rank``; None keeps the projection)."""
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

    def _vo_step(self, layer: nn.Module, spec, hidden: list[torch.Tensor], cov: torch.Tensor, chol: torch.Tensor,
                 state: dict[str, torch.Tensor], *, weighted: bool) -> list[torch.Tensor]:
        """V / O: OND (olica) or scored selection (baselines), shared per KV head, into
        ``state``. Returns the dense attention's output on the first batches where the
        statistics computed it (else [])."""
        cfg, dims, attn = self.cfg, self.dims, layer.self_attn
        d, e, g, h = dims.hidden_size, dims.head_dim, dims.num_kv_heads, dims.num_heads
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
        return dense_out

    def _pruned_attention(self, i: int, layer: nn.Module, spec, state: dict[str, torch.Tensor],
                          hidden: list[torch.Tensor], dense_out: list[torch.Tensor]):
        """The stream after the pruned attention (``hidden`` updated in place), on which the
        FFN is calibrated, and the attention's relative output error."""
        # Build the pruned attention to calibrate the FFN on its output.
        attn_spec = dataclasses.replace(spec, intermediate_size=self.dims.intermediate_size, calibration_rank=0)
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
                w = token_weights(hb)
                attn_err += float((out - ref).double().pow(2).sum(-1).flatten() @ w)
                attn_ref += float(ref.double().pow(2).sum(-1).flatten() @ w)
            mid.append(hb.add_(out))  # in place: the caller replaces its stream with what this returns
        return mid, attn_err / max(attn_ref, 1e-30)

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
                w = token_weights(hb)
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

    def _vo_scores(self, wv_j, wo_group, x_sq, ctx_sq_group):
        """Baseline score of each value dim of one KV head: [e]."""
        if self.cfg.method == "wanda-sp":
            xn = x_sq.double().clamp_min(0).sqrt()
            cn = ctx_sq_group.double().clamp_min(0).sqrt()  # [group, e]
            return wv_j.double().abs() @ xn + (wo_group.double().abs().sum(0) * cn).sum(0)
        return wv_j.double().abs().sum(1) + wo_group.double().abs().sum((0, 1))
