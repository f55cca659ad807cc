"""Tiny random models and checkpoints with awkward shapes, for tests and benchmarks (not
installed with the package: tests import ``tinymodels``, bench scripts ``tests.tinymodels``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from olica_prune.contract import ARCHITECTURE, LayerSpec, OlicaSpec
from olica_prune.io.writer import CheckpointWriter

FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig"),
    "mistral": ("MistralForCausalLM", "MistralConfig"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
}


def tiny_config(*, family: str = "llama", hidden_size: int = 64, num_heads: int = 4, num_kv_heads: int = 2,
                head_dim: int = 16, intermediate_size: int = 128, num_layers: int = 3, vocab_size: int = 256,
                tie_word_embeddings: bool = False, max_position_embeddings: int = 512, **extra: Any):
    """A small source config of ``family`` (llama | mistral | qwen2)."""
    import transformers

    arch, cfg_name = FAMILIES[family]
    cfg = getattr(transformers, cfg_name)(
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        **extra,
    )
    cfg.architectures = [arch]
    return cfg


def random_dense_model(config, *, seed: int = 0):
    """A transformers model of the source family with random weights (fp32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize_norms(model, seed)
    return model.eval()


def random_checkpoint(config, output: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0,
                      device: str | torch.device = "cpu", overwrite: bool = False) -> Path:
    """Write a dense source checkpoint of ``config`` with random weights, tensor by tensor,
    without building the model: a 7B-shaped checkpoint this way needs one layer in
    memory, not 27 GB of fp32 parameters. Linear and embedding weights are
    ``N(0, initializer_range)`` like transformers' init, norm weights ``1 + 0.2·N(0, 1)``
    (as :func:`random_dense_model`). ``device`` only generates the numbers (cuda is faster)."""
    from olica_prune.io.adapters import adapter_for
    from olica_prune.contract import ModelDims, layer_tensor_shapes

    dims = ModelDims.from_config(config)
    std = float(getattr(config, "initializer_range", 0.02))
    qkv_bias = adapter_for(config).qkv_bias
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(shape, norm: bool) -> torch.Tensor:
        t = torch.randn(shape, generator=gen, device=device)
        t = 1 + 0.2 * t if norm else t * std
        return t.to(dtype).cpu()

    cfg = config.to_dict()
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    with CheckpointWriter(output, overwrite=overwrite) as w:
        w.add("model.embed_tokens.weight", rand((dims.vocab_size, dims.hidden_size), False))
        w.add("model.norm.weight", rand((dims.hidden_size,), True))
        if not dims.tie_word_embeddings:
            w.add("lm_head.weight", rand((dims.vocab_size, dims.hidden_size), False))
        for i in range(dims.num_layers):
            for name, shape in layer_tensor_shapes(dims.dense_layer(), dims, qkv_bias=qkv_bias).items():
                w.add(f"model.layers.{i}.{name}", rand(shape, name.endswith("norm.weight")))
        return w.finish(config=cfg)


def random_olica_model(config, layers: list[LayerSpec], *, qkv_bias: bool = False, seed: int = 0):
    """An ``OlicaForCausalLM`` with random weights and the given per-layer widths."""
    from olica_prune.model.modeling import OlicaForCausalLM

    cfg = olica_config_dict(config, layers, qkv_bias=qkv_bias)
    from transformers import AutoConfig

    hf_cfg = AutoConfig.for_model(**cfg)
    torch.manual_seed(seed)
    model = OlicaForCausalLM(hf_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    _randomize_norms(model, seed)
    return model.eval()


def _randomize_norms(model, seed: int) -> None:
    # Norm weights initialise to one; random ones catch a norm applied wrongly.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))


def olica_config_dict(config, layers: list[LayerSpec], *, qkv_bias: bool = False,
                      sparsity: dict | None = None, calibration: dict | None = None) -> dict[str, Any]:
    """The config.json of an Olica checkpoint derived from a source config."""
    cfg = copy.deepcopy(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    source_arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    cfg["architectures"] = [ARCHITECTURE]
    spec = OlicaSpec(source_architecture=source_arch, qkv_bias=qkv_bias, layers=list(layers),
                     sparsity=sparsity or {}, calibration=calibration or {})
    cfg["olica"] = spec.to_dict()
    return cfg


def save_model_checkpoint(model, output: str | Path, *, tokenizer_dir: str | Path | None = None,
                          overwrite: bool = False) -> Path:
    """Write any in-memory Olica/dense model through the atomic writer."""
    cfg = model.config.to_dict()
    state = model.state_dict()
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    with CheckpointWriter(output, overwrite=overwrite) as w:
        for name, t in state.items():
            w.add(name, t)
        return w.finish(config=cfg, copy_from=tokenizer_dir)


def tiny_checkpoint_with_real_tokenizer(path):
    """A random 2-layer Olica checkpoint (pruned widths, low-rank Q) with SmolLM2's tokenizer and chat
    template, its weights scaled so that log-likelihoods differ clearly between choices."""
    import json
    import math

    from olica_prune.contract import LayerSpec
    from olica_prune.io.sources import resolve_model

    source = resolve_model("smollm2-135m")
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    cfg = tiny_config(family="llama", hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                      intermediate_size=128, num_layers=2, vocab_size=vocab, max_position_embeddings=1024)
    layers = [LayerSpec(q_rank=None, k_rank=None, v_head_dim=32, intermediate_size=128, calibration_rank=0),
              LayerSpec(q_rank=32, k_rank=None, v_head_dim=16, intermediate_size=96, calibration_rank=32)]
    model = random_olica_model(cfg, layers, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                continue
            if "embed_tokens" in name:
                scale = 1.0
            elif name.startswith("lm_head"):  # logits with std ~6
                scale = 6 / math.sqrt(p.shape[1])
            else:
                scale = 1 / math.sqrt(p.shape[1])
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return save_model_checkpoint(model, path, tokenizer_dir=source)
