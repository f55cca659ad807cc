"""The Olica checkpoint contract (format version 1), shared by the pruner,
the transformers model and the vLLM plugin.

See ``shared/DESIGN.md`` §3. Everything that decides whether a checkpoint is
well formed lives here, so the two halves cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

FORMAT_VERSION = 1
ARCHITECTURE = "OlicaForCausalLM"
# Source architectures an Olica checkpoint may come from; the model code for
# all of them is the Llama decoder with per-layer widths.
SOURCE_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


class OlicaCheckpointError(ValueError):
    """A checkpoint that does not satisfy the contract."""


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Per-layer widths of a pruned decoder layer."""

    q_rank: int | None  # None: q_proj kept dense
    k_rank: int | None
    v_head_dim: int  # value / o_proj-input width per head
    intermediate_size: int  # FFN width
    calibration_rank: int = 0  # rank of the linear calibration branch, 0 = none

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, index: int) -> LayerSpec:
        keys = {f.name for f in dataclasses.fields(cls)}
        missing = keys - set(d) - {"calibration_rank"}
        if missing:
            raise OlicaCheckpointError(f"olica.layers[{index}] lacks {sorted(missing)}")
        out = cls(**{k: d[k] for k in keys if k in d})
        for name in ("q_rank", "k_rank"):
            v = getattr(out, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise OlicaCheckpointError(f"olica.layers[{index}].{name} must be null or a positive int, got {v!r}")
        for name in ("v_head_dim", "intermediate_size"):
            v = getattr(out, name)
            if not isinstance(v, int) or v <= 0:
                raise OlicaCheckpointError(f"olica.layers[{index}].{name} must be a positive int, got {v!r}")
        if not isinstance(out.calibration_rank, int) or out.calibration_rank < 0:
            raise OlicaCheckpointError(
                f"olica.layers[{index}].calibration_rank must be an int >= 0, got {out.calibration_rank!r}"
            )
        return out


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """The source model's sizes that the contract refers to."""

    hidden_size: int  # d
    num_heads: int  # h
    num_kv_heads: int  # g
    head_dim: int  # e (QK head dim, also the dense V head dim)
    intermediate_size: int  # dense FFN width m
    num_layers: int
    vocab_size: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        get = config.get if isinstance(config, Mapping) else (lambda k, default=None: getattr(config, k, default))
        d = get("hidden_size")
        h = get("num_attention_heads")
        g = get("num_key_value_heads") or h
        e = get("head_dim") or d // h
        return cls(
            hidden_size=d,
            num_heads=h,
            num_kv_heads=g,
            head_dim=e,
            intermediate_size=get("intermediate_size"),
            num_layers=get("num_hidden_layers"),
            vocab_size=get("vocab_size"),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        )

    def dense_layer(self) -> LayerSpec:
        return LayerSpec(None, None, self.head_dim, self.intermediate_size, 0)


@dataclasses.dataclass
class OlicaSpec:
    """The ``olica`` block of ``config.json``."""

    source_architecture: str
    qkv_bias: bool
    layers: list[LayerSpec]
    sparsity: dict[str, Any] = dataclasses.field(default_factory=dict)
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "source_architecture": self.source_architecture,
            "qkv_bias": self.qkv_bias,
            "layers": [layer.to_dict() for layer in self.layers],
            "sparsity": dict(self.sparsity),
            "calibration": dict(self.calibration),
        }

    @classmethod
    def from_config(cls, config: Any) -> OlicaSpec:
        """Read and validate the ``olica`` block of a config (dict or HF config)."""
        block = config.get("olica") if isinstance(config, Mapping) else getattr(config, "olica", None)
        if block is None:
            raise OlicaCheckpointError(
                "config.json has no 'olica' block: this is not an Olica checkpoint "
                "(prune a model with `olica prune` first)"
            )
        if "format_version" not in block:
            raise OlicaCheckpointError("config.json 'olica' block has no format_version; cannot tell how to read it")
        if block["format_version"] != FORMAT_VERSION:
            raise OlicaCheckpointError(
                f"olica.format_version {block['format_version']!r} is not supported "
                f"(this version of olica reads format {FORMAT_VERSION}); upgrade olica or re-prune"
            )
        src = block.get("source_architecture")
        if src not in SOURCE_ARCHITECTURES:
            raise OlicaCheckpointError(
                f"olica.source_architecture {src!r} is not supported; supported: {', '.join(SOURCE_ARCHITECTURES)}"
            )
        layers = block.get("layers")
        if not isinstance(layers, list) or not layers:
            raise OlicaCheckpointError("olica.layers must be a non-empty list, one entry per decoder layer")
        spec = cls(
            source_architecture=src,
            qkv_bias=bool(block.get("qkv_bias", False)),
            layers=[LayerSpec.from_dict(entry, index=i) for i, entry in enumerate(layers)],
            sparsity=dict(block.get("sparsity") or {}),
            calibration=dict(block.get("calibration") or {}),
        )
        n = config.get("num_hidden_layers") if isinstance(config, Mapping) else getattr(config, "num_hidden_layers")
        if n != len(spec.layers):
            raise OlicaCheckpointError(f"olica.layers has {len(spec.layers)} entries but num_hidden_layers is {n}")
        dims = ModelDims.from_config(config)
        for i, layer in enumerate(spec.layers):
            if layer.v_head_dim > dims.head_dim:
                raise OlicaCheckpointError(
                    f"olica.layers[{i}].v_head_dim={layer.v_head_dim} exceeds head_dim={dims.head_dim}"
                )
        return spec


def layer_tensor_shapes(layer: LayerSpec, dims: ModelDims, *, qkv_bias: bool) -> dict[str, tuple[int, ...]]:
    """Tensor name (relative to ``model.layers.{i}.``) -> shape for one layer."""
    d, h, g, e = dims.hidden_size, dims.num_heads, dims.num_kv_heads, dims.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    for name, rank, rows in (("q_proj", layer.q_rank, h * e), ("k_proj", layer.k_rank, g * e)):
        if rank is None:
            shapes[f"self_attn.{name}.weight"] = (rows, d)
            if qkv_bias:
                shapes[f"self_attn.{name}.bias"] = (rows,)
        else:
            shapes[f"self_attn.{name}.lowrank_a.weight"] = (rank, d)
            shapes[f"self_attn.{name}.lowrank_b.weight"] = (rows, rank)
            if qkv_bias:
                shapes[f"self_attn.{name}.lowrank_b.bias"] = (rows,)
    shapes["self_attn.v_proj.weight"] = (g * layer.v_head_dim, d)
    if qkv_bias:
        shapes["self_attn.v_proj.bias"] = (g * layer.v_head_dim,)
    shapes["self_attn.o_proj.weight"] = (d, h * layer.v_head_dim)
    m = layer.intermediate_size
    shapes["mlp.gate_proj.weight"] = (m, d)
    shapes["mlp.up_proj.weight"] = (m, d)
    shapes["mlp.down_proj.weight"] = (d, m)
    if layer.calibration_rank:
        shapes["mlp.calibration.lowrank_a.weight"] = (layer.calibration_rank, d)
        shapes["mlp.calibration.lowrank_b.weight"] = (d, layer.calibration_rank)
    return shapes


def expected_tensor_shapes(spec: OlicaSpec, dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Every tensor an Olica checkpoint must hold, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (dims.vocab_size, dims.hidden_size),
        "model.norm.weight": (dims.hidden_size,),
    }
    if not dims.tie_word_embeddings:
        shapes["lm_head.weight"] = (dims.vocab_size, dims.hidden_size)
    for i, layer in enumerate(spec.layers):
        for name, shape in layer_tensor_shapes(layer, dims, qkv_bias=spec.qkv_bias).items():
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def check_tensor_shape(name: str, expected: tuple[int, ...] | None, found: tuple[int, ...]) -> None:
    """Raise naming the tensor, the expected and the found shape."""
    if expected is None:
        raise OlicaCheckpointError(f"unexpected tensor {name} with shape {list(found)}: the olica block has no place for it")
    if tuple(found) != tuple(expected):
        raise OlicaCheckpointError(
            f"tensor {name} has shape {list(found)} but the olica block implies {list(expected)}; "
            "the checkpoint and its config.json disagree"
        )


# Per-output-row quantization tensors that ride with ``X.weight`` in a quantized
# checkpoint (compressed-tensors names), one row each.
QUANT_SUFFIXES = (".weight_scale", ".weight_zero_point")


def split_quant_suffix(name: str) -> tuple[str, str]:
    """``X.weight_scale`` -> (``X.weight``, ``_scale``); any other name -> (name, "")."""
    for sfx in QUANT_SUFFIXES:
        if name.endswith(sfx):
            return name[: -len(sfx)] + ".weight", sfx[len(".weight"):]
    return name, ""


def expected_shape(expected: Mapping[str, tuple[int, ...]], name: str, *,
                   quantized: bool = False) -> tuple[int, ...] | None:
    """The shape ``name`` must have, or None when the checkpoint has no place for it. In a
    quantized checkpoint, ``X.weight_scale`` / ``X.weight_zero_point`` of a 2-D ``X.weight``
    hold one value per output row; the weight itself keeps its shape (its dtype may change)."""
    if name in expected:
        return expected[name]
    base, tail = split_quant_suffix(name)
    if tail and quantized and len(expected.get(base, ())) == 2:
        return (expected[base][0], 1)
    return None


def check_checkpoint_tensors(
    spec: OlicaSpec, dims: ModelDims, found: Mapping[str, tuple[int, ...]], *, allow_extra: tuple[str, ...] = (),
    quantized: bool = False,
) -> None:
    """Check a whole checkpoint's tensor shapes against its olica block (``quantized``:
    per-row scales beside the linear weights are expected too)."""
    expected = expected_tensor_shapes(spec, dims)
    for name, shape in found.items():
        want = expected_shape(expected, name, quantized=quantized)
        if want is not None:
            check_tensor_shape(name, want, shape)
        elif name == "lm_head.weight" and dims.tie_word_embeddings:
            continue  # some writers keep the tied copy; it is ignored
        elif not any(name.endswith(sfx) for sfx in ("rotary_emb.inv_freq",) + allow_extra):
            check_tensor_shape(name, None, shape)
    missing = sorted(set(expected) - set(found))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise OlicaCheckpointError(
            f"tensor {missing[0]} with shape {list(expected[missing[0]])} is missing from the checkpoint{more}"
        )


def check_tensor_parallel(spec: OlicaSpec, dims: ModelDims, tp_size: int) -> None:
    """Refuse a tensor-parallel size that does not split every width evenly."""
    if tp_size <= 1:
        return
    heads = []
    if dims.num_heads % tp_size:
        heads.append(f"num_attention_heads={dims.num_heads}")
    # vLLM replicates KV heads when g < tp, so g only needs to divide or be divided.
    if dims.num_kv_heads % tp_size and tp_size % dims.num_kv_heads:
        heads.append(f"num_key_value_heads={dims.num_kv_heads}")
    if heads:
        raise OlicaCheckpointError(
            f"tensor_parallel_size={tp_size} does not divide the model's {' and '.join(heads)}; "
            "pruning keeps head counts, so choose a tensor-parallel size that divides them"
        )
    widths = []
    for i, layer in enumerate(spec.layers):
        for name in ("q_rank", "k_rank", "intermediate_size", "calibration_rank"):
            v = getattr(layer, name)
            if v and v % tp_size:
                widths.append(f"layers[{i}].{name}={v}")
    if widths:
        raise OlicaCheckpointError(
            f"tensor_parallel_size={tp_size} does not divide these widths: {', '.join(widths[:6])}"
            + (f" (and {len(widths) - 6} more)" if len(widths) > 6 else "")
            + "; use a tensor-parallel size that divides them, or re-prune with --align set to a multiple of it"
        )


def count_parameters(spec: OlicaSpec | None, dims: ModelDims, *, qkv_bias: bool = False) -> int:
    """Parameter count of a checkpoint (dense when ``spec`` is None), tied embeddings counted once."""
    layers = spec.layers if spec is not None else [dims.dense_layer()] * dims.num_layers
    bias = spec.qkv_bias if spec is not None else qkv_bias
    total = dims.vocab_size * dims.hidden_size * (1 if dims.tie_word_embeddings else 2) + dims.hidden_size
    for layer in layers:
        total += sum(_numel(s) for s in layer_tensor_shapes(layer, dims, qkv_bias=bias).values())
    return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
