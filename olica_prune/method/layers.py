"""Streaming access to a source model: lazy safetensors reads, one decoder
layer built at a time, and the pieces of its forward pass the pruner needs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from ..contract import LayerSpec, layer_tensor_shapes, ModelDims
from ..model.modeling import _llama_compatible, swap_layer_modules


class BadWeightsError(ValueError):
    pass


class SourceWeights:
    """Tensor name -> tensor, read one at a time from safetensors files."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            bins = list(self.path.glob("*.bin"))
            hint = " (found PyTorch *.bin files: convert them to safetensors first)" if bins else ""
            raise BadWeightsError(f"{self.path} holds no *.safetensors weights{hint}")
        self._where: dict[str, Path] = {}
        self._dtype: dict[str, str] = {}  # safetensors dtype string, e.g. "BF16", "F8_E4M3"
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as sf:
                    for name in sf.keys():
                        self._where[name] = f
                        self._dtype[name] = sf.get_slice(name).get_dtype()
            except Exception as exc:  # SafetensorError: truncated, corrupt, not a safetensors file
                raise BadWeightsError(f"{f} is truncated or corrupt ({str(exc).splitlines()[0]}); "
                                      "download or copy it again") from None
        self._open = {}
        self._finite: set[str] = set()  # tensors already checked for NaN/Inf (the pruner reads a layer twice)

    def check_complete(self, names, *, what: str = "the source model") -> None:
        """Refuse before any work: a tensor the pruner will need is missing, or is
        stored quantized (8-bit floats, packed integers), which would read as garbage."""
        missing = [n for n in names if n not in self._where]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise BadWeightsError(f"{what} at {self.path} lacks tensor {missing[0]}{more}; "
                                  "it is not a complete Llama-family checkpoint")
        odd = sorted({self._dtype[n] for n in names} - set(_FLOAT_DTYPES))
        if odd:
            raise BadWeightsError(
                f"{what} at {self.path} stores weights as {', '.join(odd)} (quantized); Olica prunes "
                "full-precision weights: use the model's unquantized (bf16/fp16/fp32) release")

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._where:
            raise BadWeightsError(f"tensor {name} is missing from {self.path}")
        f = self._where[name]
        try:
            if f not in self._open:
                self._open[f] = safe_open(str(f), framework="pt")
            t = self._open[f].get_tensor(name).to(dtype)
        except Exception as exc:  # the file changed or broke since it was opened
            raise BadWeightsError(f"cannot read tensor {name} from {f} ({str(exc).splitlines()[0]}); "
                                  "the file is truncated or corrupt") from None
        if name not in self._finite:
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise BadWeightsError(f"tensor {name} holds {bad} NaN/Inf values; the source checkpoint is corrupt")
            self._finite.add(name)
        return t

    def source_dtype(self) -> torch.dtype:
        from safetensors import safe_open

        name = next(n for n in self._where if n.endswith("embed_tokens.weight"))
        with safe_open(str(self._where[name]), framework="pt") as sf:
            return _safetensors_dtype(sf.get_slice(name).get_dtype())


_FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _safetensors_dtype(s: str) -> torch.dtype:
    return _FLOAT_DTYPES.get(s, torch.float32)


def load_config(path: str | Path):
    cfg = AutoConfig.from_pretrained(str(path))
    raw = json.loads((Path(path) / "config.json").read_text())
    return cfg, raw


def build_layer(config, index: int, layer: LayerSpec, state: dict[str, torch.Tensor], *,
                qkv_bias: bool, device: str | torch.device = "cpu") -> nn.Module:
    """A transformers Llama decoder layer with Olica modules, holding ``state``."""
    config = _llama_compatible(config)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        module = LlamaDecoderLayer(config, index)
        swap_layer_modules(module, config, index, layer, qkv_bias=qkv_bias)
    expected = layer_tensor_shapes(layer, ModelDims.from_config(config), qkv_bias=qkv_bias)
    missing = set(expected) - set(state)
    if missing:
        raise BadWeightsError(f"layer {index} lacks tensors {sorted(missing)}")
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    return module.to(device).eval()


def read_dense_layer(weights: SourceWeights, config, index: int, *, qkv_bias: bool,
                     device: str | torch.device = "cpu") -> nn.Module:
    dims = ModelDims.from_config(config)
    prefix = f"model.layers.{index}."
    names = layer_tensor_shapes(dims.dense_layer(), dims, qkv_bias=qkv_bias)
    state = {}
    for name, shape in names.items():
        t = weights.get(prefix + name)
        if tuple(t.shape) != tuple(shape):
            raise BadWeightsError(f"tensor {prefix + name} has shape {list(t.shape)}, expected {list(shape)} "
                                  "from config.json")
        state[name] = t
    return build_layer(config, index, dims.dense_layer(), state, qkv_bias=qkv_bias, device=device)


def rotary(config, device) -> LlamaRotaryEmbedding:
    return LlamaRotaryEmbedding(_llama_compatible(config)).to(device)


def layer_forward(layer: nn.Module, hidden: torch.Tensor, pos) -> torch.Tensor:
    """Full decoder layer on ``hidden`` [B, S, d] (causal, no cache)."""
    return layer(hidden, attention_mask=None, position_embeddings=pos)


def attention_output(layer: nn.Module, hidden: torch.Tensor, pos) -> torch.Tensor:
    x = layer.input_layernorm(hidden)
    out, _ = layer.self_attn(x, position_embeddings=pos, attention_mask=None)
    return out
