"""Model sizes from config.json, and the native same-size Llama the speed benchmarks compare with.

``native_model_for(dense_dir, params, workdir)`` builds a stock ``LlamaForCausalLM``
with the dense model's width, heads and vocabulary and a uniformly smaller FFN
(fewer layers if the FFN alone cannot absorb the cut), random weights, sized to
a pruned checkpoint's parameter count. Olica vs native shows what our layers
(low-rank Q/K, padded V, calibration branch, uneven widths) cost over a plain
model of the same size. Used by ``bench/serving.py`` and ``bench/gap_profile.py``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from olica_prune.contract import ModelDims, OlicaSpec, count_parameters  # noqa: E402


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def param_count(config: dict) -> int:
    """Parameters of a dense or Olica checkpoint, from its config alone."""
    spec = OlicaSpec.from_config(config) if "olica" in config else None
    return count_parameters(spec, ModelDims.from_config(config))


def native_config(dense: dict, target_params: int, *, align: int = 32, min_ffn: int = 64) -> dict:
    """A plain Llama config like ``dense`` with about ``target_params`` parameters.

    The FFN width shrinks uniformly first (it is what pruning mostly removes);
    only if that would leave fewer than ``min_ffn`` neurons do layers go too.
    """
    dims = ModelDims.from_config(dense)
    d, L, m = dims.hidden_size, dims.num_layers, dims.intermediate_size
    ffn_per_neuron = 3 * d  # gate row + up row + down column
    base = count_parameters(None, dataclasses.replace(dims, num_layers=0))  # embeddings + final norm
    per_layer_rest = (param_count(dense) - base) // L - ffn_per_neuron * m  # attention + norms
    new_m = round((target_params - base - L * per_layer_rest) / (ffn_per_neuron * L) / align) * align
    new_L = L
    if new_m < min_ffn:  # the cut is deeper than the FFNs: keep the dense width, drop layers
        new_m = m
        new_L = max(1, round((target_params - base) / (per_layer_rest + ffn_per_neuron * m)))
    cfg = {k: v for k, v in dense.items() if k not in ("olica", "_name_or_path", "_model_name_or_path")}
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", intermediate_size=int(new_m),
               num_hidden_layers=int(new_L))
    return cfg


def build_native_model(dense_dir: Path, config: dict, out: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised LlamaForCausalLM of ``config`` with the dense tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from olica_prune.io.writer import TOKENIZER_FILES

    torch.manual_seed(seed)
    hf_cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    hf_cfg.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(hf_cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (dense_dir / name).is_file() and name != "config.json":
            shutil.copy2(dense_dir / name, out / name)
    return out


def native_model_for(dense_dir: Path, target_params: int, workdir: Path) -> Path:
    """``workdir/native``: the native Llama of ``target_params`` built from ``dense_dir``,
    reused when one of the same FFN width is already there (rebuilt otherwise)."""
    config = native_config(read_config(dense_dir), target_params)
    native_dir = Path(workdir) / "native"
    if not (native_dir / "config.json").is_file() or read_config(native_dir).get("intermediate_size") != \
            config["intermediate_size"]:
        shutil.rmtree(native_dir, ignore_errors=True)
        build_native_model(dense_dir, config, native_dir)
    return native_dir
