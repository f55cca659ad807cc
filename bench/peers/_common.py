"""What the peer pruners share: loading the dense model, counting parameters the
way Olica counts them, and the calibration inputs of the first decoder layer."""

from __future__ import annotations

from pathlib import Path

import torch


def load_dense(src: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The dense transformers model at ``src`` (a resolved model directory), in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype)
    return model.to(device).eval()


def count_params(model: torch.nn.Module) -> int:
    """Every parameter once (tied embeddings once; norms and biases counted), which is
    how Olica counts sparsity (``count_parameters`` in its contract module)."""
    return sum(p.numel() for p in model.parameters())


def sparsity_report(target: float, dense: int, pruned: int) -> dict:
    return {"target": target, "achieved": round(1 - pruned / dense, 5), "params_dense": dense,
            "params_pruned": pruned}


def decoder_layers(model) -> torch.nn.ModuleList:
    return model.model.layers


def check_single_attention_type(model) -> None:
    """The peers run every layer with the attention mask captured at layer 0; models
    that mix sliding-window and full layers would need one mask per layer type."""
    kinds = set(getattr(model.config, "layer_types", None) or ["full_attention"])
    if len(kinds) > 1:
        raise NotImplementedError(f"layers of several attention types ({sorted(kinds)}) are not supported")


class _Stop(Exception):
    pass


@torch.no_grad()
def layer0_inputs(model, ids: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """Per batch of calibration windows: the hidden states entering the first decoder
    layer and the keyword arguments the model passes to it (mask, rotary embeddings,
    positions), captured by a hook that stops the forward pass there."""
    check_single_attention_type(model)
    device = next(model.parameters()).device
    got: list[tuple[torch.Tensor, dict]] = []

    def hook(_module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        got.append((h.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, len(ids), batch_size):
            try:
                model(input_ids=ids[start:start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return got


def layer_output(out):
    """A decoder layer's hidden states (transformers 5 returns the tensor, 4 a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def linear(weight: torch.Tensor, bias: torch.Tensor | None, like: torch.nn.Linear) -> torch.nn.Linear:
    """A new ``nn.Linear`` holding ``weight`` [out, in] (and ``bias``) in ``like``'s dtype and device."""
    dtype, device = like.weight.dtype, like.weight.device
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=dtype, device=device)
    with torch.no_grad():
        out.weight.copy_(weight.to(dtype))
        if bias is not None:
            out.bias.copy_(bias.to(dtype))
    out.weight.requires_grad_(False)
    if bias is not None:
        out.bias.requires_grad_(False)
    return out
