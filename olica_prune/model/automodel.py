"""``AutoModelForCausalLM`` loads Olica checkpoints once ``olica_prune`` is imported.

An Olica checkpoint keeps its source family's ``model_type`` (``llama``,
``mistral``, ``qwen2``: vLLM and tokenizers read it) and names
``OlicaForCausalLM`` in ``architectures``; transformers alone would build the
family's dense class and fail on the pruned shapes. ``import olica_prune``
wraps ``AutoModelForCausalLM.from_pretrained`` and ``from_config``: when the
config names ``OlicaForCausalLM`` they build that class, and every other model
goes to transformers untouched (its auto mapping is not changed). No remote
code, no pickle.

Importing transformers' model classes costs seconds, and transformers imports
its auto-model module part-way through importing the Llama model itself; so
the wrapping happens right after that module is first imported (or at once,
if it already is), and the Olica class is imported on the first Olica load.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
from pathlib import Path

_AUTO_MODULE = "transformers.models.auto.modeling_auto"
ARCHITECTURE = "OlicaForCausalLM"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def _architectures(path, kwargs: dict) -> list[str]:
    """``architectures`` of the config for ``path`` (a local directory or a hub id), or []."""
    config = kwargs.get("config")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        return list(getattr(config, "architectures", None) or [])
    try:
        local = Path(config if config is not None else path) / "config.json"
        if local.is_file():
            return list(json.loads(local.read_text()).get("architectures") or [])
        from transformers import PretrainedConfig

        cfg, _ = PretrainedConfig.get_config_dict(str(path), **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
        return list(cfg.get("architectures") or [])
    except Exception:  # transformers reports whatever is wrong with the path
        return []


def _wrap(auto_module) -> None:
    auto = auto_module.AutoModelForCausalLM
    if getattr(auto, "_olica_wrapped", False):
        return
    original_pretrained = auto.from_pretrained.__func__
    original_config = auto.from_config.__func__

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if ARCHITECTURE in _architectures(pretrained_model_name_or_path, kwargs):
            from .modeling import OlicaForCausalLM

            kwargs.pop("trust_remote_code", None)
            return OlicaForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return original_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)

    def from_config(cls, config, *args, **kwargs):
        if ARCHITECTURE in (getattr(config, "architectures", None) or []):
            from .modeling import OlicaForCausalLM

            kwargs.pop("trust_remote_code", None)
            return OlicaForCausalLM._from_config(config, **kwargs)
        return original_config(cls, config, *args, **kwargs)

    for name, fn, original in (("from_pretrained", from_pretrained, original_pretrained),
                               ("from_config", from_config, original_config)):
        fn.__doc__ = original.__doc__
        fn.__name__ = name
        setattr(auto, name, classmethod(fn))
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

        def exec_then_wrap(module):
            exec_module(module)
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            _wrap(module)

        loader.exec_module = exec_then_wrap
        return spec


def install() -> None:
    module = sys.modules.get(_AUTO_MODULE)
    if module is not None and hasattr(module, "AutoModelForCausalLM"):
        _wrap(module)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
