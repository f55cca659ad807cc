"""Model-family adapters: what differs between Llama, Mistral and Qwen2.

The pruner and both model implementations run the Llama decoder; an adapter
only says how a family's config and tensors map onto it. Adding a family is
adding a row here (and a test), not an ``if`` in the algorithm.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class UnsupportedModelError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class FamilyAdapter:
    architecture: str
    qkv_bias: bool  # q/k/v projections carry a bias (Qwen2)
    examples: str

    def check_config(self, config: Any) -> None:
        """Refuse config features the Olica layers do not implement."""
        get = (lambda k, default=None: config.get(k, default)) if isinstance(config, dict) else (
            lambda k, default=None: getattr(config, k, default))
        if get("mlp_bias", False):
            raise UnsupportedModelError(f"{self.architecture} with mlp_bias=true is not supported")
        if self.architecture != "Qwen2ForCausalLM" and get("attention_bias", False):
            raise UnsupportedModelError(
                f"{self.architecture} with attention_bias=true (o_proj bias) is not supported"
            )
        act = get("hidden_act", "silu")
        if act != "silu":
            # The vLLM model (olica_serve) implements SiLU-gated MLPs only.
            raise UnsupportedModelError(f"hidden_act={act!r} is not supported: Olica checkpoints are served with "
                                        "SiLU-gated MLPs only (Llama, Mistral, Qwen2 use silu)")
        if get("num_attention_heads") % (get("num_key_value_heads") or get("num_attention_heads")):
            raise UnsupportedModelError("num_attention_heads must be a multiple of num_key_value_heads")


ADAPTERS = {
    a.architecture: a
    for a in (
        FamilyAdapter("LlamaForCausalLM", qkv_bias=False,
                      examples="Llama 1/2/3, TinyLlama, SmolLM/SmolLM2, Vicuna"),
        FamilyAdapter("MistralForCausalLM", qkv_bias=False, examples="Mistral 7B"),
        FamilyAdapter("Qwen2ForCausalLM", qkv_bias=True, examples="Qwen2, Qwen2.5"),
    )
}


MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def adapter_for(config: Any) -> FamilyAdapter:
    get = config.get if isinstance(config, dict) else (lambda k, default=None: getattr(config, k, default))
    archs = get("architectures") or []
    if not archs and get("model_type") in MODEL_TYPES:
        archs = [MODEL_TYPES[get("model_type")]]  # e.g. configs converted from GGUF
    for arch in archs:
        if arch in ADAPTERS:
            adapter = ADAPTERS[arch]
            adapter.check_config(config)
            return adapter
    supported = "; ".join(f"{a.architecture} ({a.examples})" for a in ADAPTERS.values())
    if "OlicaForCausalLM" in archs:
        raise UnsupportedModelError("this is already an Olica checkpoint; prune the dense source model instead")
    raise UnsupportedModelError(f"architecture {archs or 'unknown'} is not supported. Supported: {supported}")
