"""Why magnitude pruning collapses SmolLM2-135M even at 10 %.

For every layer: of the FFN neurons that magnitude pruning (Σ|W| of the
neuron's gate/up rows and down column) removes at --sparsity, how strong is the
strongest one by its measured contribution to the residual stream,
``sqrt(E[h²]) · ‖W_down[:, k]‖`` (the score Olica ranks by), and where does it
rank in its layer (0 = the layer's strongest neuron)?

    python bench/magnitude_diagnosis.py [--sparsity 0.1] [--samples 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olica_prune.io.data import calibration_batches  # noqa: E402
from olica_prune.method.linalg import ffn_magnitude_scores  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402
from olica_prune.io.sources import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.1, help="fraction of each layer's FFN neurons removed")
    ap.add_argument("--samples", type=int, default=8, help="calibration windows of 128 tokens")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from transformers import AutoTokenizer

    src = resolve_model(args.model)
    ids = calibration_batches(AutoTokenizer.from_pretrained(str(src)), "pydoc", num_samples=args.samples,
                              seq_len=128, seed=0)
    model = load_causal_lm(src)
    h_sq = {}
    for i, layer in enumerate(model.model.layers):
        def hook(_mod, inp, i=i):
            h = inp[0].double().reshape(-1, inp[0].shape[-1])
            h_sq[i] = (h * h).mean(0)
        layer.mlp.down_proj.register_forward_pre_hook(hook)
    model(ids)

    print("| layer | strongest magnitude-pruned neuron | layer's strongest | median | its rank |")
    print("|---|---|---|---|---|")
    top_lost = 0
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        mag = ffn_magnitude_scores(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        removed = torch.argsort(mag)[: int(args.sparsity * mag.numel())]
        contrib = h_sq[i].sqrt() * torch.linalg.vector_norm(mlp.down_proj.weight.double(), dim=0)
        worst = contrib[removed].max()
        rank = int((contrib > worst).sum())
        top_lost += rank == 0
        print(f"| {i} | {worst:.3g} | {contrib.max():.3g} | {contrib.median():.3g} | {rank} |")
    print(f"\nmagnitude pruning at {args.sparsity:.0%} removes the strongest FFN neuron of "
          f"{top_lost} of {len(model.model.layers)} layers")


if __name__ == "__main__":
    main()
