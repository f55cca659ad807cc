"""A transformers model for Olica checkpoints.

``OlicaForCausalLM.from_pretrained(path)`` loads an Olica checkpoint so that
the usual transformers tooling (``generate``, perplexity scripts, lm-eval)
works on it. It is the Llama decoder of transformers with three modules
swapped per layer: attention with optional low-rank Q/K and a reduced value
width, and an FFN of its own width with an optional linear calibration branch.

The same layer modules hold a *dense* layer too (``ModelDims.dense_layer()``),
which is how the pruner runs the source model layer by layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, LlamaForCausalLM, PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

from ..contract import (
    ARCHITECTURE,
    LayerSpec,
    ModelDims,
    OlicaCheckpointError,
    OlicaSpec,
    check_checkpoint_tensors,
)


class LowRankLinear(nn.Module):
    """``x -> B(A x)``: the factorised form of a linear layer."""

    def __init__(self, in_features: int, rank: int, out_features: int, *, bias: bool = False) -> None:
        super().__init__()
        self.lowrank_a = nn.Linear(in_features, rank, bias=False)
        self.lowrank_b = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowrank_b(self.lowrank_a(x))


def _projection(in_features: int, out_features: int, rank: int | None, *, bias: bool) -> nn.Module:
    if rank is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return LowRankLinear(in_features, rank, out_features, bias=bias)


class OlicaAttention(nn.Module):
    """Llama attention with optional low-rank Q/K and value width ``v_head_dim``."""

    def __init__(self, config: PretrainedConfig, layer_idx: int, layer: LayerSpec, *, qkv_bias: bool) -> None:
        super().__init__()
        dims = ModelDims.from_config(config)
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = dims.num_heads
        self.num_kv_heads = dims.num_kv_heads
        self.num_key_value_groups = dims.num_heads // dims.num_kv_heads
        self.head_dim = dims.head_dim
        self.v_head_dim = layer.v_head_dim
        # The softmax temperature belongs to the QK head dim, which pruning keeps.
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = getattr(config, "attention_dropout", 0.0)
        self.is_causal = True
        d = dims.hidden_size
        self.q_proj = _projection(d, self.num_heads * self.head_dim, layer.q_rank, bias=qkv_bias)
        self.k_proj = _projection(d, self.num_kv_heads * self.head_dim, layer.k_rank, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.v_head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, d, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        bsz, seq = hidden_states.shape[:-1]
        # q: [B, h, S, e]   k: [B, g, S, e]   v: [B, g, S, v_head_dim]
        q = self.q_proj(hidden_states).view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, seq, self.num_kv_heads, self.v_head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        # out: [B, S, h, v_head_dim] -> [B, S, h * v_head_dim]
        out = out.reshape(bsz, seq, self.num_heads * self.v_head_dim).contiguous()
        return self.o_proj(out), weights


class OlicaMLP(nn.Module):
    """Gated FFN of width ``intermediate_size`` plus ``x -> B(A x)`` calibration."""

    def __init__(self, config: PretrainedConfig, layer: LayerSpec) -> None:
        super().__init__()
        d, m = config.hidden_size, layer.intermediate_size
        self.intermediate_size = m
        self.gate_proj = nn.Linear(d, m, bias=False)
        self.up_proj = nn.Linear(d, m, bias=False)
        self.down_proj = nn.Linear(m, d, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]
        self.calibration = (
            LowRankLinear(d, layer.calibration_rank, d) if layer.calibration_rank else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        if self.calibration is not None:
            out = out + self.calibration(x)
        return out


def _llama_compatible(config: PretrainedConfig) -> PretrainedConfig:
    # Mistral/Qwen2 configs lack these Llama attributes; the swapped modules
    # ignore them, the Llama constructor only reads them.
    for name in ("attention_bias", "mlp_bias"):
        if not hasattr(config, name):
            setattr(config, name, False)
    if not hasattr(config, "head_dim") or config.head_dim is None:
        config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def swap_layer_modules(decoder_layer: nn.Module, config: PretrainedConfig, layer_idx: int,
                       layer: LayerSpec, *, qkv_bias: bool) -> None:
    """Give a transformers Llama decoder layer Olica attention and FFN modules."""
    decoder_layer.self_attn = OlicaAttention(config, layer_idx, layer, qkv_bias=qkv_bias)
    decoder_layer.mlp = OlicaMLP(config, layer)


class OlicaForCausalLM(LlamaForCausalLM):
    """transformers model of an Olica checkpoint (any supported source family)."""

    config_class = PretrainedConfig

    def __init__(self, config: PretrainedConfig) -> None:
        spec = OlicaSpec.from_config(config)
        super().__init__(_llama_compatible(config))
        for i, decoder_layer in enumerate(self.model.layers):
            swap_layer_modules(decoder_layer, config, i, spec.layers[i], qkv_bias=spec.qkv_bias)
        self.olica_spec = spec
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        path = Path(pretrained_model_name_or_path)
        if config is None:
            config = AutoConfig.from_pretrained(path)
        if ARCHITECTURE not in (getattr(config, "architectures", None) or []):
            raise OlicaCheckpointError(
                f"{path} is not an Olica checkpoint (architectures={config.architectures}); "
                "load dense models with transformers.AutoModelForCausalLM"
            )
        if path.is_dir():
            check_checkpoint_tensors(OlicaSpec.from_config(config), ModelDims.from_config(config),
                                     read_tensor_shapes(path))
        return super().from_pretrained(path, *args, config=config, **kwargs)


def read_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers of a directory (no data read)."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise OlicaCheckpointError(f"{path} holds no *.safetensors files")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                shapes[name] = tuple(sf.get_slice(name).get_shape())
    return shapes


def is_olica_checkpoint(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    return ARCHITECTURE in (json.loads(cfg.read_text()).get("architectures") or [])


def load_causal_lm(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a dense HF model or an Olica checkpoint, whichever ``path`` holds."""
    from transformers import AutoModelForCausalLM

    cls = OlicaForCausalLM if is_olica_checkpoint(path) else AutoModelForCausalLM
    model = cls.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()
