"""Olica for vLLM: serve Olica checkpoints with stock ``vllm serve``.

Installing the package registers the entry point ``vllm.general_plugins`` ->
``olica = "olica_serve:register"``; vLLM calls :func:`register` in every
process it starts (API server, engine core, workers), so it must be cheap,
idempotent and must not import torch model code: the model class is named as
a ``"module:Class"`` string and imported lazily by vLLM when a checkpoint
with ``architectures: ["OlicaForCausalLM"]`` is loaded.
"""

from __future__ import annotations

import logging
import os

ARCHITECTURE = "OlicaForCausalLM"
MODEL_CLASS = "olica_serve.model:OlicaForCausalLM"

logger = logging.getLogger(__name__)


def register() -> bool:
    """Register ``OlicaForCausalLM`` with vLLM's model registry.

    Safe to call any number of times. Returns True when the architecture is
    registered, False (with a log line saying why) when vLLM is not installed.
    """
    try:
        from vllm import ModelRegistry
    except ImportError as exc:
        logger.warning("olica_serve: vLLM is not importable (%s); OlicaForCausalLM not registered", exc)
        return False
    # Re-registering would only overwrite the entry with the same lazy class,
    # but vLLM logs each overwrite; skip when it is already there.
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    _register_config_check()
    _cpu_compile_settings()
    return True


def _cpu_compile_settings() -> None:
    # On CPU, vLLM 0.32 compiles the whole model with plain Inductor, and its AOT compile cache
    # cannot load what it saved there (the load fails with "'function' object has no attribute
    # 'finalize_loading'" and vLLM compiles again): every `vllm serve` start pays the full
    # compile. With AOT off, torch.compile's own caches are used, and a restart of a model
    # compiled before is much faster (SmolLM2 on 2 busy cores: 43-59 s against ~150 s).
    # (Not set: TORCHINDUCTOR_COMPILE_THREADS=2, which starts a cold pruned SmolLM2 in 122 s
    # instead of 138 s, but served it at 299-303 out tok/s against 309-318 with 1 thread.)
    # Set here, in every vLLM process before the model is compiled; a user's own value wins.
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return
    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def _register_config_check() -> None:
    # vLLM runs a per-architecture config hook (MODELS_CONFIG_MAP) while it
    # builds its config in the front-end process, before any engine process
    # starts. Hooking the olica block check in there turns a bad checkpoint
    # into an immediate error for `vllm serve` / `LLM(...)` instead of a
    # failure buried in an engine-core log. The map is internal to vLLM, so
    # this is best effort: the model class runs the same checks anyway.
    try:
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    except ImportError:
        return
    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, _OlicaConfigCheck)


class _OlicaConfigCheck:
    """The interface of vLLM's ``VerifyAndUpdateConfig``, without importing it."""

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        check_vllm_config(vllm_config)

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        return None


def check_vllm_config(vllm_config) -> None:
    """Validate an Olica checkpoint against a vLLM config, before any engine starts.

    Checks the olica block (present, known format_version), that the
    tensor-parallel size splits every width, and, for a local directory of
    safetensors, every tensor shape (headers only, no data read). Raises
    ``olica_prune.contract.OlicaCheckpointError`` with the contract's message.
    """
    from pathlib import Path

    from olica_prune.contract import ModelDims, OlicaSpec, check_checkpoint_tensors, check_tensor_parallel

    hf_config = vllm_config.model_config.hf_config
    spec, dims = OlicaSpec.from_config(hf_config), ModelDims.from_config(hf_config)
    check_tensor_parallel(spec, dims, vllm_config.parallel_config.tensor_parallel_size)
    path = Path(vllm_config.model_config.model)
    load_format = str(getattr(vllm_config.load_config, "load_format", "auto"))
    if path.is_dir() and any(path.glob("*.safetensors")) and load_format in ("auto", "safetensors"):
        from olica_prune.model.modeling import read_tensor_shapes

        quantized = getattr(hf_config, "quantization_config", None) is not None
        check_checkpoint_tensors(spec, dims, read_tensor_shapes(path), quantized=quantized)


__all__ = ["register", "ARCHITECTURE", "MODEL_CLASS"]
