"""The FFN step of the prune pass: neuron selection by score, the least-squares refit of
the kept ``down_proj`` columns, and the low-rank linear calibration branch fitted to
what the pruned FFN leaves out.

:class:`FfnStep` is a part of the pruner's run (``pruner._Run``); :class:`FfnStats`
(the running statistics of one dense FFN) is shared with the dense pass
(``sensitivity.DensePass``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .layers import build_layer
from .linalg import (
    ffn_contribution_scores,
    ffn_magnitude_scores,
    ffn_paper_scores,
    ffn_wanda_scores,
    fit_calibration,
    ridge_solve,
)
from .run import REPORT_BATCHES, RunState, token_weights


@dataclasses.dataclass
class FfnActs:
    """One batch through a dense FFN, flattened to tokens: input ``x`` [T, d],
    intermediate ``h = act(gate x) * up x`` [T, m], output ``f = down h`` [T, d].
    Once the prune pass has chosen its neurons, ``h`` holds the kept ones only
    and ``x`` is dropped (None)."""

    x: torch.Tensor | None
    h: torch.Tensor
    f: torch.Tensor


class FfnStats:
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

    def forward(self, x: torch.Tensor) -> FfnActs:
        x = x.reshape(-1, x.shape[-1])
        h = self.mlp.act_fn(self.mlp.gate_proj(x)) * self.mlp.up_proj(x)
        return FfnActs(x=x, h=h, f=self.mlp.down_proj(h))

    def add_h(self, a: FfnActs, *, weights: torch.Tensor | None = None) -> None:
        # float32 per batch (a weighted sum is one GEMV), accumulated in float64
        h_sq = a.h.square()
        self.h_sq += (weights.to(h_sq.dtype) @ h_sq if weights is not None else h_sq.sum(0)).double()
        self.x_sq += a.x.square().sum(0).double()
        self.n += a.x.shape[0]

    def contribution_scores(self) -> torch.Tensor:
        return ffn_contribution_scores(self.h_sq / self.n, self.mlp.down_proj.weight)

    def add_residual(self, a: FfnActs, keep: torch.Tensor, *, weights: torch.Tensor | None = None) -> None:
        """Accumulate the ridge statistics of ``e = f(x) − f̂(x)``, ``f̂`` keeping the
        neurons ``keep`` with their original down_proj columns (``a.h``: every neuron)."""
        h = a.h
        w = self.mlp.down_proj.weight
        dropped = torch.ones(h.shape[1], dtype=torch.bool, device=h.device)
        dropped[keep] = False
        self._add_residual(a.x, (h[:, dropped] @ w[:, dropped].T).double(), weights)  # the dropped neurons' output

    def add_residual_kept(self, x: torch.Tensor, a: FfnActs, down: torch.Tensor, *,
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


class FfnStep(RunState):
    """FFN pruning of one layer on the stream after its pruned attention."""

    def _ffn_step(self, i: int, layer: nn.Module, spec, state: dict[str, torch.Tensor], mid: list[torch.Tensor],
                  *, weighted: bool, branch_aside: bool):
        """FFN neuron selection, the down_proj refit and the linear calibration branch
        of one layer, on the stream after its pruned attention (``mid``). ``state``
        holds the attention step's tensors. Returns the whole layer's tensors, the
        FFN's relative output error, the branch fit (or None) and the stream after
        the pruned layer."""
        # ---- FFN: neuron selection, then linear calibration of the residual
        ffn = FfnStats(layer.mlp, self.dims.hidden_size, self.device)
        # gate/up/down of the dense FFN, once per batch: scores, refit, residual and report all use them
        acts = [ffn.forward(self._ffn_input(layer, hb)) for hb in mid]
        self._select_neurons(layer, spec, state, ffn, mid, acts, weighted=weighted)
        cal, aside = None, {}
        if spec.calibration_rank:
            for hb, a in zip(mid, acts):
                ffn.add_residual_kept(self._ffn_input(layer, hb), a, state["mlp.down_proj.weight"],
                                      weights=token_weights(hb) if weighted else None)
            cal = ffn.fit(spec.calibration_rank, self.cfg.ridge)
            branch = {"mlp.calibration.lowrank_a.weight": cal.a.float(),
                      "mlp.calibration.lowrank_b.weight": cal.b.float()}
            if branch_aside:  # fitted and reported, but the stream (and this layer's output) goes on without it
                aside, spec = branch, dataclasses.replace(spec, calibration_rank=0)
            else:
                state.update(branch)
        pruned = build_layer(self.config, i, spec, state, qkv_bias=self.qkv_bias, device=self.device)
        rel_error, new_hidden = self._pruned_ffn_output(layer, pruned, mid, acts)
        del acts
        out_state = {n: t.detach() for n, t in pruned.state_dict().items()}
        out_state.update(aside)
        return out_state, rel_error, cal, new_hidden

    def _select_neurons(self, layer: nn.Module, spec, state: dict[str, torch.Tensor], ffn: FfnStats,
                        mid: list[torch.Tensor], acts: list[FfnActs], *, weighted: bool) -> None:
        """Keep the ``spec.intermediate_size`` best neurons (``state``: their gate/up rows and
        down_proj columns, refitted if configured); ``acts`` keep only their activations."""
        mlp = layer.mlp
        for hb, a in zip(mid, acts):
            ffn.add_h(a, weights=token_weights(hb) if weighted else None)
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
        if self.cfg.refit_down:
            state["mlp.down_proj.weight"] = self._refit_down(layer, mid, acts, keep, weighted=weighted).float()

    def _pruned_ffn_output(self, layer: nn.Module, pruned: nn.Module, mid: list[torch.Tensor],
                           acts: list[FfnActs]) -> tuple[float, list[torch.Tensor]]:
        """The pruned FFN's relative output error and the stream after it (``mid`` updated in place)."""
        ffn_err, ffn_ref, new_hidden = 0.0, 0.0, []
        for b, (hb, a) in enumerate(zip(mid, acts)):
            out = pruned.mlp.down_proj(a.h)  # = pruned.mlp(x) without recomputing gate/up
            if pruned.mlp.calibration is not None:
                out = out + pruned.mlp.calibration(self._ffn_input(layer, hb))
            out = out.view_as(hb)
            if b < REPORT_BATCHES:
                ref = a.f.view_as(hb)
                w = token_weights(hb)
                ffn_err += float((out - ref).double().pow(2).sum(-1).flatten() @ w)
                ffn_ref += float(ref.double().pow(2).sum(-1).flatten() @ w)
            new_hidden.append(hb.add_(out))  # in place: nothing reads mid after this
        return ffn_err / max(ffn_ref, 1e-30), new_hidden

    def _ffn_scores(self, ffn: FfnStats) -> torch.Tensor:
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

    def _refit_down(self, layer: nn.Module, mid: list[torch.Tensor], acts: list[FfnActs], keep: torch.Tensor, *,
                    weighted: bool) -> torch.Tensor:
        """Least-squares ``down_proj`` over the kept neurons: min E‖W' h_keep − f(x)‖² (ridge-damped)."""
        k = keep.numel()

        def statistics() -> tuple[torch.Tensor, torch.Tensor]:
            gram = torch.zeros(k, k, dtype=torch.float64, device=self.device)
            cross = torch.zeros(k, self.dims.hidden_size, dtype=torch.float64, device=self.device)
            for hb, a in zip(mid, acts):
                hk = a.h  # the kept neurons' activations
                hw = hk * token_weights(hb).to(hk.dtype)[:, None] if weighted else hk
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
