"""Checks that run before any pruning work: a source or an option the pruner
cannot handle is refused with one line that names the problem, before any
calibration text is sampled and before anything is written.

Each check raises one of the package's expected errors (``ModelSourceError``,
``UnsupportedModelError``, ``BadWeightsError``, ``PruneError``), which the
command line prints as one line with exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .adapters import UnsupportedModelError
from .sources import ModelSourceError

# Files a Hugging Face tokenizer can be built from (any one of these sets).
_TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))


class OptionError(ValueError):
    """A command-line option that cannot work (checked before any work)."""


def read_raw_config(src: Path) -> dict[str, Any]:
    try:
        raw = json.loads((src / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{src / 'config.json'} cannot be read as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelSourceError(f"{src / 'config.json'} is not a JSON object")
    return raw


def check_not_quantized(src: Path, raw: dict[str, Any]) -> None:
    """A quantized source (FP8, AWQ, GPTQ, bitsandbytes, compressed-tensors ...) stores
    scaled or packed weights; read as plain tensors they are garbage."""
    q = raw.get("quantization_config") or raw.get("compression_config")
    if q:
        method = (q.get("quant_method") or q.get("format") or "unknown method") if isinstance(q, dict) else q
        raise ModelSourceError(
            f"{src} is a quantized checkpoint (quantization_config: {method}); Olica prunes full-precision "
            "weights. Prune the model's unquantized release (bf16/fp16/fp32; on the hub usually the repo "
            "without an -FP8/-AWQ/-GPTQ/-bnb suffix) and quantize the pruned checkpoint afterwards")


def check_architecture(raw: dict[str, Any]):
    """The source family's adapter; remote-code and unknown families are refused
    before transformers tries to load them."""
    from .adapters import MODEL_TYPES, adapter_for

    archs = raw.get("architectures") or []
    known = any(a in MODEL_TYPES.values() for a in archs) or (not archs and raw.get("model_type") in MODEL_TYPES)
    if not known and raw.get("auto_map"):
        raise UnsupportedModelError(
            f"model_type {raw.get('model_type')!r} ({', '.join(archs) or 'no architecture'}) needs remote code "
            "(auto_map in config.json); Olica prunes only the built-in Llama, Mistral and Qwen2 families")
    return adapter_for(raw)  # unknown architecture, unsupported activation or bias: one line each


def check_tokenizer(src: Path) -> None:
    if not any(all((src / f).is_file() for f in files) for files in _TOKENIZER_SETS):
        raise ModelSourceError(
            f"{src} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json + merges.txt); copy the "
            "tokenizer files of the model next to its config.json: the calibration text is tokenized with it "
            "and the pruned checkpoint ships it for serving")


def check_output(output: Path, src: Path) -> None:
    """The output may not be the source, nor a directory that holds it: --overwrite
    would replace the model being read."""
    out, source = output.resolve(), src.resolve()
    if out == source or out in source.parents:
        raise OptionError(f"--output {output} is (or contains) the source model {src}; write the pruned "
                          "checkpoint to a new directory")


def parse_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {name} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise OptionError(f"--device {name!r}: the pruner runs on cpu or cuda")
    return device
