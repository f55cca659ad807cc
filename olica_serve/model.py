"""vLLM model for Olica checkpoints (shared/DESIGN.md §3-4).

vLLM's Llama (``model_executor/models/llama.py``) with the decoder layer
swapped through its ``layer_type=`` hook. Each layer reads its widths from
``olica.layers[i]``, ``i`` taken from the module prefix:

- Q and K dense or low-rank (``x -> B(A x)``);
- V and the ``o_proj`` input at ``v_head_dim <= head_dim`` per head. Attention
  kernels want one head size, so V is zero-padded to ``head_dim`` for the
  attention call and the output sliced back before ``o_proj``. Padding V with
  zeros is exact: each output channel is a softmax-weighted sum of the same
  channel of V, so the padded channels come out zero and are dropped. It works
  on every backend (CPU included); the KV cache keeps the padding;
- an FFN of its own width whose linear calibration branch rides inside the
  FFN GEMMs: ``[gate; up; A]`` is one column-parallel matmul and ``[down | B]``
  one row-parallel matmul, so tensor parallelism adds no all-reduce.

The same model serves Llama, Mistral and Qwen2 sources (``olica.qkv_bias``
gives Qwen2's Q/K/V bias). Weights are checked tensor by tensor against the
olica block (``olica_prune.contract``) while they stream in.

Quantization: every linear layer takes vLLM's ``quant_config``, so vLLM's
online quantization (``--quantization fp8_per_channel`` ...) and checkpoints in
a per-output-channel compressed-tensors scheme (``olica quantize``: W8A8
int8) load. Per-channel scales stack along the output dim like the weights;
``[down | B]`` shares its input dim, so both parts must carry the same scale
per output row (``olica quantize`` writes it so; a checkpoint that does not
is refused by name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Parameter

from olica_prune.contract import (
    LayerSpec,
    ModelDims,
    OlicaCheckpointError,
    OlicaSpec,
    check_checkpoint_tensors,
    check_tensor_parallel,
    check_tensor_shape,
    expected_shape,
    expected_tensor_shapes,
    split_quant_suffix,
)
from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import LinearBase, MergedColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import WeightsMapper, extract_layer_index, is_pp_missing_parameter
from vllm.model_executor.utils import set_weight_attrs

# ----------------------------------------------------------------------------
# Fused linear layers


@dataclasses.dataclass(frozen=True)
class OutputShard:
    """One checkpoint weight stacked into a fused column-parallel linear."""

    name: str  # shard id used when loading
    num_heads: int
    head_size: int
    replicated: bool = False  # every rank holds all rows (no TP split)

    @property
    def rows(self) -> int:
        return self.num_heads * self.head_size

    def local_rows(self, tp_size: int) -> int:
        if self.replicated:
            return self.rows
        # Fewer heads than ranks (KV heads under GQA): each rank holds one
        # head and ranks share it, as vLLM's QKVParallelLinear does.
        return max(self.num_heads // tp_size, 1) * self.head_size

    def first_row(self, tp_rank: int, tp_size: int) -> int:
        if self.replicated:
            return 0
        if self.num_heads >= tp_size:
            return tp_rank * self.local_rows(tp_size)
        return tp_rank // (tp_size // self.num_heads) * self.head_size


class FusedColumnParallelLinear(LinearBase):
    """Weights stacked along the output dim, each split across ranks its own way.

    The Olica generalisation of vLLM's QKVParallelLinear: a layer may hold the
    low-rank ``A`` of Q and/or K (replicated), dense Q and/or K, and V at its
    own head size, all computed by one GEMM on the layer input.
    ``forward`` returns this rank's output, shards in the order given.
    """

    def __init__(self, input_size: int, shards: list[OutputShard], *, bias: bool,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__(input_size, sum(s.rows for s in shards), bias=bias, quant_config=quant_config,
                         prefix=prefix)
        self.shards = {s.name: i for i, s in enumerate(shards)}
        self._shards = list(shards)
        self.local_sizes = [s.local_rows(self.tp_size) for s in shards]
        self.offsets = [sum(self.local_sizes[:i]) for i in range(len(shards))]
        self.quant_method.create_weights(
            self, input_size, self.local_sizes, input_size, self.output_size, self.params_dtype,
            weight_loader=self.weight_loader,
        )
        if bias:
            # Zeros: shards without a bias in the checkpoint (low-rank A) keep them.
            self.bias = Parameter(torch.zeros(sum(self.local_sizes), dtype=self.params_dtype), requires_grad=False)
            set_weight_attrs(self.bias, {"weight_loader": self.weight_loader})
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: Parameter, loaded_weight: torch.Tensor, shard_id: str) -> None:
        # Weights and per-output-channel scales alike: rows of this shard.
        if param.dim() == 0 or (param.dim() == 1 and param.shape[0] == len(self._shards)):
            raise OlicaCheckpointError(f"{self.prefix}: per-tensor quantization scales are not supported for "
                                       "Olica checkpoints; use a per-channel scheme (olica quantize writes one)")
        i = self.shards[shard_id]
        rows = self.local_sizes[i]
        start = self._shards[i].first_row(self.tp_rank, self.tp_size)
        param.data.narrow(0, self.offsets[i], rows).copy_(loaded_weight.narrow(0, start, rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def extra_repr(self) -> str:
        parts = ", ".join(f"{s.name}={n}" for s, n in zip(self._shards, self.local_sizes))
        return f"in_features={self.input_size}, out_features=[{parts}], tp_size={self.tp_size}"


class MergedRowParallelLinear(RowParallelLinear):
    """Row-parallel linear over inputs concatenated from several weights.

    ``[down | B]``: the input is ``[act(gate) * up | A x]``, each part split
    across ranks, so one GEMM and one all-reduce give
    ``down(h) + B(A x)``. Shard ``i`` is the checkpoint weight of part ``i``.
    """

    def __init__(self, input_sizes: list[int], output_size: int, *, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        self.input_sizes = list(input_sizes)
        super().__init__(sum(input_sizes), output_size, bias=False, quant_config=quant_config, prefix=prefix)

    def weight_loader_v2(self, param: Parameter, loaded_weight: torch.Tensor, shard_id: int = 0) -> None:
        if getattr(param, "input_dim", None) is None and param.dim() == loaded_weight.dim() and param.dim() > 0 \
                and param.shape[0] == self.output_size and loaded_weight.shape[0] == self.output_size:
            # A per-output-channel scale (no input dim): one for all parts,
            # equal in each part's copy (checked_weights made sure).
            param.data.copy_(loaded_weight)
            return
        local = [n // self.tp_size for n in self.input_sizes]
        dst = param.data.narrow(1, sum(local[:shard_id]), local[shard_id])
        dst.copy_(loaded_weight.narrow(1, self.tp_rank * local[shard_id], local[shard_id]))

    # RowParallelLinear hands weight_loader_v2 to unquantized weights; keep
    # the v1 name pointing at the same code in case that choice changes.
    weight_loader = weight_loader_v2


# ----------------------------------------------------------------------------
# Decoder layer


class OlicaAttention(nn.Module):
    """Llama attention with optional low-rank Q/K and value width ``v_head_dim``."""

    def __init__(self, *, config, layer: LayerSpec, qkv_bias: bool, cache_config: CacheConfig | None,
                 quant_config: QuantizationConfig | None = None, prefix: str) -> None:
        super().__init__()
        dims = ModelDims.from_config(config)
        tp_size = get_tensor_model_parallel_world_size()
        d, h, g, e, v = dims.hidden_size, dims.num_heads, dims.num_kv_heads, dims.head_dim, layer.v_head_dim
        self.num_heads = h // tp_size
        self.num_kv_heads = max(1, g // tp_size)
        self.head_dim, self.v_head_dim = e, v

        # A low-rank A is replicated: its output (rank r) feeds the rows of B
        # of every head, so splitting it would need an all-gather before B;
        # replicated it costs r*d MACs per token on each rank and no
        # communication. B is column-parallel per head like a dense Q/K.
        shards = []
        if layer.q_rank is not None:
            shards.append(OutputShard("q_a", 1, layer.q_rank, replicated=True))
        if layer.k_rank is not None:
            shards.append(OutputShard("k_a", 1, layer.k_rank, replicated=True))
        if layer.q_rank is None:
            shards.append(OutputShard("q", h, e))
        if layer.k_rank is None:
            shards.append(OutputShard("k", g, e))
        shards.append(OutputShard("v", g, v))
        self.qkv_proj = FusedColumnParallelLinear(d, shards, bias=qkv_bias, quant_config=quant_config,
                                                  prefix=f"{prefix}.qkv_proj")
        self.shard_names = [s.name for s in shards]
        self.q_b_proj = self.k_b_proj = None
        if layer.q_rank is not None:
            self.q_b_proj = FusedColumnParallelLinear(layer.q_rank, [OutputShard("q", h, e)], bias=qkv_bias,
                                                      quant_config=quant_config, prefix=f"{prefix}.q_b_proj")
        if layer.k_rank is not None:
            self.k_b_proj = FusedColumnParallelLinear(layer.k_rank, [OutputShard("k", g, e)], bias=qkv_bias,
                                                      quant_config=quant_config, prefix=f"{prefix}.k_b_proj")
        self.o_proj = RowParallelLinear(h * v, d, bias=False, quant_config=quant_config, prefix=f"{prefix}.o_proj")

        self.rotary_emb = get_rope(
            e,
            max_position=getattr(config, "max_position_embeddings", 8192),
            rope_parameters=getattr(config, "rope_parameters", None),
            is_neox_style=True,
        )
        sliding_window = None
        if layer_types := getattr(config, "layer_types", None):
            if layer_types[extract_layer_index(prefix)] == "sliding_attention":
                sliding_window = config.sliding_window
        # The softmax temperature belongs to the QK head dim, which pruning keeps.
        self.attn = Attention(
            self.num_heads,
            e,
            e**-0.5,
            num_kv_heads=self.num_kv_heads,
            cache_config=cache_config,
            per_layer_sliding_window=sliding_window,
            prefix=f"{prefix}.attn",
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        fused = self.qkv_proj(hidden_states)
        parts = dict(zip(self.shard_names, fused.split(self.qkv_proj.local_sizes, dim=-1)))
        # q: [T, h*e]   k: [T, g*e]   v: [T, g*v_head_dim]   (this rank's heads)
        q = self.q_b_proj(parts["q_a"]) if self.q_b_proj is not None else parts["q"]
        k = self.k_b_proj(parts["k_a"]) if self.k_b_proj is not None else parts["k"]
        v = parts["v"]
        q, k = self.rotary_emb(positions, q, k)
        pad = self.head_dim - self.v_head_dim
        if pad:
            # v: [T, g, v_head_dim] -> [T, g, e]; zero channels stay zero in the output
            v = F.pad(v.reshape(-1, self.num_kv_heads, self.v_head_dim), (0, pad)).flatten(1)
        out = self.attn(q, k, v)
        if pad:
            # out: [T, h, e] -> [T, h * v_head_dim]
            out = out.view(-1, self.num_heads, self.head_dim)[..., : self.v_head_dim].flatten(1)
        out, _ = self.o_proj(out)
        return out


class OlicaMLP(nn.Module):
    """Gated FFN of width ``intermediate_size`` plus calibration ``x -> B(A x)``."""

    def __init__(self, *, hidden_size: int, layer: LayerSpec, hidden_act: str,
                 quant_config: QuantizationConfig | None = None, prefix: str) -> None:
        super().__init__()
        if hidden_act != "silu":
            raise OlicaCheckpointError(f"hidden_act={hidden_act!r} is not supported; only silu")
        m, r = layer.intermediate_size, layer.calibration_rank
        tp_size = get_tensor_model_parallel_world_size()
        self.local_width = m // tp_size
        self.has_calibration = r > 0
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [m, m] + ([r] if r else []), bias=False, quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj"
        )
        self.down_proj = MergedRowParallelLinear([m] + ([r] if r else []), hidden_size, quant_config=quant_config,
                                                 prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, d] -> [T, m/tp (gate) | m/tp (up) | r/tp (A x)]
        x, _ = self.gate_up_proj(x)
        if self.has_calibration:
            gate, up, ax = x.split([self.local_width, self.local_width, x.shape[-1] - 2 * self.local_width], dim=-1)
            # [T, m/tp | r/tp]: the row-parallel [down | B] sums both parts
            x = torch.cat([F.silu(gate) * up, ax], dim=-1)
        else:
            x = self.act_fn(x)
        x, _ = self.down_proj(x)
        return x


class OlicaDecoderLayer(nn.Module):
    """A Llama decoder layer with the widths of ``olica.layers[i]``."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", config=None) -> None:
        super().__init__()
        config = config or vllm_config.model_config.hf_config
        spec = OlicaSpec.from_config(config)
        layer = spec.layers[extract_layer_index(prefix)]
        self.self_attn = OlicaAttention(
            config=config, layer=layer, qkv_bias=spec.qkv_bias, cache_config=vllm_config.cache_config,
            quant_config=vllm_config.quant_config, prefix=f"{prefix}.self_attn",
        )
        self.mlp = OlicaMLP(hidden_size=config.hidden_size, layer=layer, hidden_act=config.hidden_act,
                            quant_config=vllm_config.quant_config, prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # Same as vLLM's LlamaDecoderLayer.forward (fused residual-add norms).
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        hidden_states = self.mlp(hidden_states)
        return hidden_states, residual


# ----------------------------------------------------------------------------
# Model and weight loading

# Checkpoint name (after ``model.layers.{i}.``) -> (parameter, shard id) for
# weights that live inside a fused layer; all other names map to themselves.
STACKED_PARAMS = {
    "self_attn.q_proj.weight": ("self_attn.qkv_proj.weight", "q"),
    "self_attn.q_proj.bias": ("self_attn.qkv_proj.bias", "q"),
    "self_attn.k_proj.weight": ("self_attn.qkv_proj.weight", "k"),
    "self_attn.k_proj.bias": ("self_attn.qkv_proj.bias", "k"),
    "self_attn.v_proj.weight": ("self_attn.qkv_proj.weight", "v"),
    "self_attn.v_proj.bias": ("self_attn.qkv_proj.bias", "v"),
    "self_attn.q_proj.lowrank_a.weight": ("self_attn.qkv_proj.weight", "q_a"),
    "self_attn.k_proj.lowrank_a.weight": ("self_attn.qkv_proj.weight", "k_a"),
    "self_attn.q_proj.lowrank_b.weight": ("self_attn.q_b_proj.weight", "q"),
    "self_attn.q_proj.lowrank_b.bias": ("self_attn.q_b_proj.bias", "q"),
    "self_attn.k_proj.lowrank_b.weight": ("self_attn.k_b_proj.weight", "k"),
    "self_attn.k_proj.lowrank_b.bias": ("self_attn.k_b_proj.bias", "k"),
    "mlp.gate_proj.weight": ("mlp.gate_up_proj.weight", 0),
    "mlp.up_proj.weight": ("mlp.gate_up_proj.weight", 1),
    "mlp.calibration.lowrank_a.weight": ("mlp.gate_up_proj.weight", 2),
    "mlp.down_proj.weight": ("mlp.down_proj.weight", 0),
    "mlp.calibration.lowrank_b.weight": ("mlp.down_proj.weight", 1),
}


def param_for(name: str) -> tuple[str, str | int | None]:
    """Map a checkpoint tensor name to ``(parameter name, shard id)``."""
    if name.startswith("model.layers."):
        index, rest = name[len("model.layers."):].split(".", 1)
        base, tail = split_quant_suffix(rest)
        if base in STACKED_PARAMS:
            param, shard = STACKED_PARAMS[base]
            return f"model.layers.{index}.{param}{tail}", shard
    return name, None


def checked_weights(config, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the checkpoint tensors to load, checking each against the olica block.

    Raises ``OlicaCheckpointError`` naming the tensor, the expected and the
    found shape on the first mismatch or unknown tensor, and after the last
    tensor when one is missing. Skips tensors the contract tolerates (a tied
    ``lm_head.weight`` copy, rotary caches).
    """
    spec, dims = OlicaSpec.from_config(config), ModelDims.from_config(config)
    expected = expected_tensor_shapes(spec, dims)
    quantized = getattr(config, "quantization_config", None) is not None
    found: dict[str, tuple[int, ...]] = {}
    row_scales: dict[str, tuple[str, torch.Tensor]] = {}  # layer -> first [down | B] scale seen
    for name, tensor in weights:
        shape = tuple(tensor.shape)
        found[name] = shape
        if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and dims.tie_word_embeddings):
            continue
        check_tensor_shape(name, expected_shape(expected, name, quantized=quantized), shape)
        if quantized and name.endswith((".mlp.down_proj.weight_scale", ".mlp.calibration.lowrank_b.weight_scale")):
            _check_shared_scale(row_scales, name, tensor)
        yield name, tensor
    check_checkpoint_tensors(spec, dims, found, quantized=quantized)  # now only a missing tensor can fail


def _check_shared_scale(seen: dict[str, tuple[str, torch.Tensor]], name: str, scale: torch.Tensor) -> None:
    """``[down | B]`` is one GEMM in vLLM: both parts need the same scale per output row."""
    layer = name.split(".mlp.", 1)[0]
    if layer not in seen:
        seen[layer] = (name, scale.detach().clone())
        return
    other, first = seen.pop(layer)
    if not torch.equal(first.to(scale.dtype), scale):
        raise OlicaCheckpointError(
            f"{name} differs from {other}: down_proj and the calibration's lowrank_b run as one GEMM in vLLM "
            "and need the same per-row scale; quantize the checkpoint with `olica quantize`")


class OlicaForCausalLM(LlamaForCausalLM):
    """vLLM model of an Olica checkpoint (Llama, Mistral or Qwen2 source)."""

    # Checkpoint names reach the fused layers through load_weights below.
    hf_to_vllm_mapper = WeightsMapper()
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        spec = OlicaSpec.from_config(config)
        dims = ModelDims.from_config(config)
        check_tensor_parallel(spec, dims, get_tensor_model_parallel_world_size())
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=OlicaDecoderLayer)
        self.olica_spec = spec

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params: Mapping[str, Parameter] = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in checked_weights(self.config, weights):
            target, shard = param_for(name)
            if is_pp_missing_parameter(target, self):
                continue
            param = params[target]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(target)
        return loaded
