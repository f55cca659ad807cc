"""The dense pass before the prune: how much each layer's output distribution depends on
its FFN (the kl allocation's sensitivity probes), which layers' FFN residuals a
calibration branch predicts best (their ranking), and what every FFN neuron and V/O
direction carries (the adaptive allocation's costs).

:class:`DensePass` is a part of the pruner's run (``pruner._Run``); it measures with
the statistics of the attention and FFN steps.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .attention import AttentionStep
from .budget import LayerCosts
from .ffn import FfnActs, FfnStats, FfnStep
from .layers import layer_forward
from .linalg import damped_cholesky
from .run import return_freed_memory, token_weights


class DensePass(AttentionStep, FfnStep):
    """One pass over the dense layers that measures what the width planner needs."""

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
                slot_energy = self._vo_slot_energy(layer, hidden)  # [e]
            else:
                slot_energy = torch.zeros(self.dims.head_dim, dtype=torch.float64)
            mid = [h.add_(self._attention(layer, h)) for h in hidden]  # in place: nothing reads hidden again
            ffn = FfnStats(layer.mlp, d, self.device)
            acts = [ffn.forward(self._ffn_input(layer, h)) for h in mid]  # each computed once
            for h, a in zip(mid, acts):
                ffn.add_h(a, weights=token_weights(h))
            energy = ffn.contribution_scores() ** 2
            if probe_keep is not None and i not in skip:
                t = time.perf_counter()
                probes[i] = self._probe(layer, mid, acts, takes, probe_keep)
                self.probe_seconds += time.perf_counter() - t
            gain = 0.0
            if cal_rank:
                gain = self._branch_gain(ffn, energy, mid, acts, ffn_keep=ffn_keep, cal_rank=cal_rank)
            hidden = [h.add_(a.f.view_as(h)) for h, a in zip(mid, acts)]
            del acts, mid
            costs.append(LayerCosts(ffn=energy.cpu(), vo=slot_energy.cpu(), stream=1.0))
            predict.append(gain)
            del layer
            return_freed_memory()
        kl = None
        if probe_keep is not None:
            t = time.perf_counter()
            kl = self._output_kl([hb[:n] for hb, n in zip(hidden, takes) if n], probes)
            self.probe_seconds += time.perf_counter() - t
        return costs, predict, kl

    def _vo_slot_energy(self, layer: nn.Module, hidden: list[torch.Tensor]) -> torch.Tensor:
        """What the t-th strongest value direction of the layer carries, over its KV heads: ``[e]``."""
        chol = damped_cholesky(self._attn_stats(layer, hidden, weighted=True))
        ctx_cov = self._context_covariance(layer, hidden, weighted=True)
        vo = self._vo_bases(layer, chol, self.cfg.ond, ctx_cov if self.cfg.vo_stats == "context" else None)
        return self._slot_energy(layer, vo, ctx_cov)

    def _probe(self, layer: nn.Module, mid: list[torch.Tensor], acts: list[FfnActs], takes: list[int],
               probe_keep: int) -> list[torch.Tensor]:
        """The probe: only this layer's FFN cut to its best ``probe_keep`` neurons, scored as
        the prune pass scores them (unweighted statistics of the probed sequences), no refit.
        Returns the probed stream after the layer, the first ``takes[b]`` sequences of each batch."""
        seq_len = int(self.ids.shape[1])
        probe_stats = FfnStats(layer.mlp, self.dims.hidden_size, self.device)
        for a, n in zip(acts, takes):
            if n:
                probe_stats.add_h(FfnActs(x=a.x[:n * seq_len], h=a.h[:n * seq_len], f=a.f[:n * seq_len]))
        keep = torch.argsort(self._ffn_scores(probe_stats), descending=True)[:probe_keep]
        w = layer.mlp.down_proj.weight[:, keep]
        return [mb[:n] + (a.h[:n * seq_len, keep] @ w.T).view_as(mb[:n])
                for mb, a, n in zip(mid, acts, takes) if n]

    def _branch_gain(self, ffn: FfnStats, energy: torch.Tensor, mid: list[torch.Tensor], acts: list[FfnActs], *,
                     ffn_keep: int, cal_rank: int) -> float:
        """How much of the residual of the FFN cut to its ``ffn_keep`` strongest neurons a
        rank-``cal_rank`` branch explains, per token: the layer's predictability."""
        keep = torch.argsort(energy, descending=True)[:ffn_keep].sort().values
        for h, a in zip(mid, acts):
            ffn.add_residual(a, keep, weights=token_weights(h))
        cal = ffn.fit(cal_rank, self.cfg.ridge)
        return (cal.residual_energy - cal.remaining_energy) / ffn.n

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
