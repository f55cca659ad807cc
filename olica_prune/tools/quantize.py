"""``olica quantize``: a checkpoint (Olica or plain Llama-family) -> W8A8 int8 in
compressed-tensors format, which stock ``vllm serve`` loads (CPU and GPU).

    olica quantize runs/smol-20 --output runs/smol-20-w8a8

Scheme (compressed-tensors' ``W8A8`` preset): every linear layer of the decoder
stores int8 weights with one symmetric scale per output row; activations are
quantized per token at run time by vLLM. Embeddings, norms and ``lm_head`` stay
in ``--dtype``. Weights are rounded to nearest (no GPTQ, no SmoothQuant): at 8
bits per channel that is the usual near-lossless choice, and it needs no
calibration data.

Why the compressed-tensors library and not llm-compressor's ``oneshot``:
llm-compressor 0.14 pins transformers <= 5.17 and compressed-tensors 0.19,
while vLLM 0.32 pins compressed-tensors 0.17, so the two cannot live in one
environment with this project. compressed-tensors itself (vLLM's dependency)
gives the scheme, the quantization arithmetic and the config vLLM reads; this
module only walks the tensors.

Olica specifics: the FFN's ``[down | B]`` (down_proj and the calibration
branch's lowrank_b) runs as one GEMM in vLLM, so both get the same per-row
scale (the larger of the two); the vLLM model checks it on load.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path

import torch

# Tensors that share their input dimension in one vLLM GEMM, hence one scale per output row.
SHARED_SCALE_GROUPS = (("mlp.down_proj.weight", "mlp.calibration.lowrank_b.weight"),)
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@functools.lru_cache(maxsize=1)
def w8a8_scheme():
    from compressed_tensors.quantization import preset_name_to_scheme

    return preset_name_to_scheme("W8A8", ["Linear"])


def quantization_config() -> dict:
    """The ``quantization_config`` block of config.json, built by compressed-tensors."""
    from compressed_tensors import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    cfg = QuantizationConfig(config_groups={"group_0": w8a8_scheme()}, ignore=["lm_head"],
                             format=CompressionFormat.int_quantized.value,
                             quantization_status=QuantizationStatus.COMPRESSED)
    return json.loads(json.dumps(cfg.model_dump(exclude_none=False), default=str))


def is_linear_weight(name: str, tensor_dims: int) -> bool:
    """A decoder linear layer's weight (embeddings, norms and lm_head are not)."""
    return bool(_LAYER_RE.match(name)) and name.endswith(".weight") and tensor_dims == 2


def row_scales(weights: list[torch.Tensor]) -> torch.Tensor:
    """One symmetric int8 scale per output row, shared by all ``weights`` (same rows)."""
    from compressed_tensors.quantization.utils import calculate_qparams

    amax = torch.stack([w.float().abs().amax(dim=1) for w in weights]).amax(dim=0).unsqueeze(1)
    scale, _ = calculate_qparams(-amax, amax, w8a8_scheme().weights)
    return scale


def quantize_int8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    from compressed_tensors.quantization.lifecycle.forward import quantize

    args = w8a8_scheme().weights
    zero = torch.zeros_like(scale, dtype=torch.int8)
    return quantize(weight.float(), scale, zero, args, dtype=torch.int8)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def _partner_names(name: str) -> list[str]:
    """The tensors that must share ``name``'s row scales (itself included)."""
    m = _LAYER_RE.match(name)
    if m:
        for group in SHARED_SCALE_GROUPS:
            if m.group(2) in group:
                return [f"model.layers.{m.group(1)}.{g}" for g in group]
    return [name]


def quantize_checkpoint(src: str | Path, output: str | Path, *, dtype: str = "auto", overwrite: bool = False,
                        progress: bool = True) -> dict:
    """Write ``output``: ``src`` with W8A8 int8 linear layers. Returns a summary."""
    from tqdm import tqdm

    from ..method.layers import SourceWeights
    from ..io.preflight import check_not_quantized, check_output, read_raw_config
    from ..io.sources import resolve_model
    from ..io.writer import CheckpointWriter

    src = resolve_model(str(src))
    output = Path(output)
    raw = read_raw_config(src)
    check_not_quantized(src, raw)
    check_output(output, src)
    weights = SourceWeights(src)
    out_dtype = weights.source_dtype() if dtype == "auto" else DTYPES[dtype]
    names = weights.names()
    present = set(names)
    scales: dict[str, torch.Tensor] = {}
    n_linear = n_q_params = n_other = 0
    worst_rel = 0.0
    with CheckpointWriter(output, overwrite=overwrite) as w:
        for name in tqdm(names, desc="quantizing (W8A8 int8)", unit="tensor", disable=not progress):
            t = weights.get(name)
            if not is_linear_weight(name, t.dim()):
                w.add(name, t.to(out_dtype))
                n_other += t.numel()
                continue
            if name not in scales:
                group = [g for g in _partner_names(name) if g in present]
                # rounded to the dtype it is stored in, so the int8 values match the stored scale
                shared = row_scales([t if g == name else weights.get(g) for g in group]).to(out_dtype).float()
                scales.update({g: shared for g in group})
            scale = scales.pop(name)
            q = quantize_int8(t, scale)
            err = (dequantize_int8(q, scale) - t).abs().amax(dim=1) / t.abs().amax(dim=1).clamp_min(1e-12)
            worst_rel = max(worst_rel, float(err.max()))
            w.add(name, q)
            w.add(name[: -len(".weight")] + ".weight_scale", scale.to(out_dtype).clone())  # own storage
            n_linear += 1
            n_q_params += t.numel()
        config = dict(raw)
        config["quantization_config"] = quantization_config()
        config["torch_dtype"] = str(out_dtype).removeprefix("torch.")
        config.pop("dtype", None)
        w.finish(config=config, copy_from=src)
    summary = {"source": str(src), "output": str(output), "scheme": "W8A8 int8 (compressed-tensors, "
               "per-channel weights, dynamic per-token activations)", "linear_layers": n_linear,
               "int8_params": n_q_params, "other_params": n_other, "other_dtype": str(out_dtype),
               "max_row_error_vs_row_absmax": worst_rel}
    report = src / "olica_report.json"
    if report.is_file():  # keep the pruning report, with the quantization added
        data = json.loads(report.read_text())
        data["quantization"] = summary
        (output / "olica_report.json").write_text(json.dumps(data, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="olica quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="checkpoint directory (Olica or dense), .gguf or alias such as smollm2-135m")
    p.add_argument("--output", required=True, help="directory to write (must not exist unless --overwrite)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="dtype of what stays unquantized (embeddings, norms, lm_head) and of the scales "
                        "(auto: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    s = quantize_checkpoint(args.model, args.output, dtype=args.dtype, overwrite=args.overwrite,
                            progress=not args.quiet)
    print(f"quantized {s['linear_layers']} linear layers ({s['int8_params'] / 1e6:.1f} M params to int8, "
          f"{s['other_params'] / 1e6:.1f} M kept in {s['other_dtype'].removeprefix('torch.')}); "
          f"worst row error {s['max_row_error_vs_row_absmax']:.4f} of the row's largest weight")
    print(f"wrote {args.output}  (serve: vllm serve {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
