"""``AutoModelForCausalLM`` loads Olica checkpoints once ``olica_prune`` is imported.

An Olica checkpoint keeps its source family's ``model_type`` (``llama``,
``mistral``, ``qwen2``: vLLM and tokenizers read it) and names
``OlicaForCausalLM`` in ``architectures``. transformers' auto classes choose,
for one config class, between several model classes by that ``architectures``
entry when the mapping holds a tuple; so each supported family's entry becomes
``(its own class, OlicaForCausalLM)``: dense models load exactly as before and
Olica checkpoints load as ``OlicaForCausalLM``. No remote code, no pickle.

Importing transformers' model classes costs seconds, and transformers imports
its auto-model module part-way through importing the Llama model itself; so
``import olica_prune`` only wraps ``AutoModelForCausalLM.from_pretrained`` and
``from_config`` (once transformers' auto-model module is imported), and the
mapping is extended on their first call, when every import has finished.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_AUTO_MODULE = "transformers.models.auto.modeling_auto"
_FAMILIES = {  # config class -> module that defines it
    "LlamaConfig": "transformers.models.llama.configuration_llama",
    "MistralConfig": "transformers.models.mistral.configuration_mistral",
    "Qwen2Config": "transformers.models.qwen2.configuration_qwen2",
}
_done = False


def register() -> None:
    """Make AutoModelForCausalLM pick OlicaForCausalLM for Olica checkpoints (idempotent)."""
    global _done
    if _done:
        return
    _done = True
    import importlib

    from .modeling import OlicaForCausalLM

    # The module itself, not ``from transformers import ...``: this may run while
    # transformers' package is still part-way through importing it.
    mapping = sys.modules[_AUTO_MODULE].AutoModelForCausalLM._model_mapping
    for name, module in _FAMILIES.items():
        config_cls = getattr(importlib.import_module(module), name)
        current = mapping[config_cls]
        choices = tuple(current) if isinstance(current, (list, tuple)) else (current,)
        if OlicaForCausalLM not in choices:
            # The family's own class stays first: it is the default when architectures names neither.
            mapping.register(config_cls, (*choices, OlicaForCausalLM), exist_ok=True)


def _wrap(auto_module) -> None:
    auto = auto_module.AutoModelForCausalLM
    if getattr(auto, "_olica_wrapped", False):
        return
    for name in ("from_pretrained", "from_config"):
        original = getattr(auto, name).__func__

        def first_register(cls, *args, _original=original, **kwargs):
            register()
            return _original(cls, *args, **kwargs)

        first_register.__doc__ = original.__doc__
        first_register.__name__ = name
        setattr(auto, name, classmethod(first_register))
    auto._olica_wrapped = True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps the auto class right after transformers' auto-model module has been executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _AUTO_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            _wrap(module)

        loader.exec_module = exec_then_register
        return spec


def install() -> None:
    module = sys.modules.get(_AUTO_MODULE)
    if module is not None and hasattr(module, "AutoModelForCausalLM"):
        _wrap(module)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
