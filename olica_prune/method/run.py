"""What every pass of a prune reads: the source layers, the calibration stream, the device.

:class:`RunState` is the base of the pruner's run (``pruner._Run``) and of its steps
(``attention.AttentionStep``, ``ffn.FfnStep``, ``sensitivity.DensePass``).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..contract import ModelDims
from .layers import SourceWeights, read_dense_layer, rotary

REPORT_BATCHES = 2  # batches on which per-layer errors are reported (token-relative)


class RunState:
    """State of one pruning run: the source, the calibration ids, the device."""

    def __init__(self, *, weights: SourceWeights, config, dims: ModelDims, qkv_bias: bool, device: torch.device,
                 cfg, ids: torch.Tensor, progress: bool) -> None:
        self.weights, self.config, self.dims, self.qkv_bias = weights, config, dims, qkv_bias
        self.device, self.cfg, self.ids, self.progress = device, cfg, ids, progress  # cfg: a PruneConfig
        self.rope = rotary(config, device)
        pos_ids = torch.arange(ids.shape[1], device=device)[None]
        dummy = torch.zeros(1, device=device)
        self.pos = self.rope(dummy, pos_ids)

    def _embed(self, sequences: int | None = None) -> list[torch.Tensor]:
        """The calibration batches' embeddings (the first ``sequences`` sequences only, when given)."""
        emb = self.weights.get("model.embed_tokens.weight").to(self.device)
        ids = self.ids if sequences is None else self.ids[:sequences]
        return [nn.functional.embedding(b.to(self.device), emb) for b in ids.split(self.cfg.batch_size)]

    def _layer(self, i: int) -> nn.Module:
        return read_dense_layer(self.weights, self.config, i, qkv_bias=self.qkv_bias, device=self.device)

    def _bar(self, desc: str):
        return tqdm(range(self.dims.num_layers), desc=desc, unit="layer", disable=not self.progress)

    @staticmethod
    def _ffn_input(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The FFN's input tokens ``[T, d]`` for a stream batch after attention."""
        return layer.post_attention_layernorm(h).reshape(-1, h.shape[-1])

    def _attention(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        out, _ = layer.self_attn(layer.input_layernorm(h), position_embeddings=self.pos, attention_mask=None)
        return out


def token_weights(h: torch.Tensor) -> torch.Tensor:
    """1/‖h_t‖² per token of a residual-stream batch [B, S, d] -> [B·S], mean 1/d-ish."""
    sq = h.reshape(-1, h.shape[-1]).double().pow(2).sum(-1)
    return 1.0 / sq.clamp_min(1e-12)


def return_freed_memory() -> None:
    """With glibc, hand the heap's free pages back to the system (``malloc_trim``):
    called after each layer, so what the per-batch activations of one layer leave
    fragmented does not add up over the layers. Elsewhere nothing happens. (A fixed
    4 MB mmap threshold returned more, but made SmolLM2's prune 32 % slower.)"""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
