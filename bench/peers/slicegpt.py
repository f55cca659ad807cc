"""SliceGPT (Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting
Rows and Columns", ICLR 2024), written for this bench from the paper's description.

Produces an IN-MEMORY transformers model (decoder layers replaced by ones with
shortcut matrices on the residual path, scale-free norms); the checkpoint contract
change that would let Olica's loaders read it is out of scope.

The method, with the paper's defaults where this bench has a choice:

1. Norm fusion: each RMSNorm's scale is multiplied into the linear weights that read
   its output (q/k/v, gate/up, and the LM head), leaving norms without weights,
   which commute with orthogonal maps of the residual stream. A sliced stream has
   fewer coordinates, so the norms divide the squared sum by the ORIGINAL hidden size
   (as the paper's RMSN does).
2. PCA rotations, computed sequentially on calibration activations of the already
   sliced preceding layers: Q_0 from the embeddings entering layer 0, and per layer
   one for the stream entering the MLP norm (after attention) and one for the layer
   output. Q is the eigenvectors of sum_t x_t^T x_t (float64), largest eigenvalue
   first. Inputs of a block are rotated by the Q of the stream they read (W Q),
   outputs by the Q of the stream they write (Q^T W); the residual path gets the
   shortcut Q_a^T Q_b between the two streams (two per layer).
3. Slicing: every stream keeps its first ``dim`` principal coordinates (one constant
   dimension, the paper's default schedule); the embedding columns, the inputs of
   q/k/v and gate/up, the outputs of o_proj and down_proj and the shortcuts are cut to
   match. The last layer's output and the head are not sliced (the paper's default,
   no ``--slice-head``); the head keeps the original basis, where a rotation of the
   full stream would change nothing.

Tied embeddings (SmolLM2 and Qwen2.5-0.5B tie them). The authors' code unties them
(a copy of the embedding becomes the head), which with Olica's count (a tied matrix
counts once) adds a whole vocabulary x hidden matrix: 21 % of SmolLM2-135M, 27 % of
Qwen2.5-0.5B, more than a 10-20 % budget. This keeps the tie instead: the rotated,
sliced embedding E Q_0[:, :dim] is also the head, and the final hidden state reaches
it through one extra hidden x dim matrix, diag(gamma_final) Q_0[:, :dim] (counted as a
shortcut). Unsliced, this is exact; sliced, the head sees the final state's
projection on the embedding stream's leading PCA directions. Untied models get the
paper's head (gamma fused in, full width).

The slicing fraction is not a parameter fraction (shortcuts add parameters back, the
head is not sliced): ``dim`` is chosen, in steps of one coordinate (the paper rounds
to multiples of 8, too coarse for a +-0.5 pp target on a 576-wide model), so that
the parameter count, shortcuts included, is closest to the requested fraction of
ALL parameters (embeddings included, tied ones once) as Olica counts. The report
records the slicing fraction 1 - dim/hidden.

Calibration is the bench's windows (the ones every method gets) instead of the
paper's 1,024 WikiText-2 sequences of 2,048 tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import count_params, decoder_layers, layer0_inputs, linear, load_dense, sparsity_report


class RMSN(nn.Module):
    """Weightless RMSNorm over a possibly sliced stream: the squared sum is divided by
    the ORIGINAL hidden size, so slicing off (near-zero) coordinates keeps the scale."""

    def __init__(self, mean_dim: int, eps: float) -> None:
        super().__init__()
        self.mean_dim = mean_dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = x if x.dtype == torch.float64 else x.float()
        y = y * torch.rsqrt(y.pow(2).sum(-1, keepdim=True) / self.mean_dim + self.eps)
        return y.to(dtype)


class SlicedDecoderLayer(nn.Module):
    """A pre-norm decoder layer with rotated residual shortcuts:
    ``h = S_a(x) + attn(norm(x)); out = S_m(h) + mlp(norm(h))``."""

    def __init__(self, layer: nn.Module, hidden: int, eps: float) -> None:
        super().__init__()
        self.self_attn = layer.self_attn
        self.mlp = layer.mlp
        self.input_layernorm = RMSN(hidden, eps)
        self.post_attention_layernorm = RMSN(hidden, eps)
        self.attn_shortcut: nn.Linear | None = None
        self.mlp_shortcut: nn.Linear | None = None
        for name in ("attention_type", "layer_idx"):
            if hasattr(layer, name):
                setattr(self, name, getattr(layer, name))

    def attention_half(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return self.attn_shortcut(hidden_states) + out

    def mlp_half(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mlp_shortcut(hidden_states) + self.mlp(self.post_attention_layernorm(hidden_states))

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.mlp_half(self.attention_half(hidden_states, **kwargs))


class ProjectedNorm(nn.Module):
    """The final norm of a tied model: weightless RMSN, then the hidden -> dim map onto
    the sliced embedding basis (the final norm's scale folded in)."""

    def __init__(self, norm: RMSN, proj: nn.Linear) -> None:
        super().__init__()
        self.norm = norm
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


@torch.no_grad()
def pca(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of sum_t x_t^T x_t, float64."""
    h = None
    for x in xs:
        x = x.reshape(-1, x.shape[-1]).double()
        h = x.T @ x if h is None else h + x.T @ x
    vals, vecs = torch.linalg.eigh(h)
    order = torch.argsort(vals, descending=True)
    return vals[order], vecs[:, order]


def _tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def _linear_params(p: nn.Linear, in_features: int | None = None, out_features: int | None = None) -> int:
    i = p.in_features if in_features is None else in_features
    o = p.out_features if out_features is None else out_features
    return o * i + (o if p.bias is not None else 0)


def sliced_param_count(model, dim: int) -> int:
    """Parameters of ``model`` (dense) after slicing to ``dim``, shortcuts and the tied
    model's projection included, norms weightless."""
    emb = model.get_input_embeddings()
    vocab, hidden = emb.weight.shape
    total = vocab * dim + (hidden * dim if _tied(model) else vocab * hidden)
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        out_dim = hidden if i == len(layers) - 1 else dim
        a, m = layer.self_attn, layer.mlp
        total += sum(_linear_params(getattr(a, n), in_features=dim) for n in ("q_proj", "k_proj", "v_proj"))
        total += _linear_params(a.o_proj, out_features=dim)
        total += sum(_linear_params(getattr(m, n), in_features=dim) for n in ("gate_proj", "up_proj"))
        total += _linear_params(m.down_proj, out_features=out_dim)
        total += dim * dim + dim * out_dim  # the two shortcuts
    return total


def choose_dim(model, sparsity: float) -> int:
    """The sliced width whose parameter count is closest to (1 - sparsity) of dense."""
    dense = count_params(model)
    hidden = model.get_input_embeddings().weight.shape[1]
    return min(range(1, hidden + 1), key=lambda d: abs(1 - sliced_param_count(model, d) / dense - sparsity))


@torch.no_grad()
def slice_model(model, calibration_ids: torch.Tensor, dim: int, *, batch_size: int = 8,
                keep_rotations: bool = False):
    """Rotate ``model`` by calibration PCA and slice every stream to ``dim``, in place;
    ``dim`` = hidden size rotates without slicing (the same function). With
    ``keep_rotations``, ``model.slicegpt_rotations`` holds the kept PCA bases (float64,
    hidden x dim): ``embed`` and, per layer, ``mid`` and ``out`` (None for the last)."""
    cfg = model.config
    emb = model.get_input_embeddings()
    hidden = emb.weight.shape[1]
    if not 0 < dim <= hidden:
        raise ValueError(f"dim must be in [1, {hidden}], not {dim}")
    eps = float(cfg.rms_norm_eps)
    dtype = emb.weight.dtype
    tied = _tied(model)

    def rot(xs, q):
        return [(x.double() @ q).to(dtype) for x in xs]

    captured = layer0_inputs(model, calibration_ids, batch_size)
    kws = [kw for _, kw in captured]
    xs = [h for h, _ in captured]
    del captured
    _, q = pca(xs)
    q_in = q[:, :dim]
    q_embed = q_in
    new_emb = nn.Embedding(emb.num_embeddings, dim, dtype=dtype, device=emb.weight.device)
    new_emb.weight.copy_((emb.weight.double() @ q_in).to(dtype))
    new_emb.weight.requires_grad_(False)
    gamma_final = model.model.norm.weight.detach().double()
    xs = rot(xs, q_in)
    kept = {"embed": q_in, "layers": []}

    layers = decoder_layers(model)
    for li, layer in enumerate(layers):
        last = li == len(layers) - 1
        new = SlicedDecoderLayer(layer, hidden, eps)
        attn, mlp = layer.self_attn, layer.mlp
        g = layer.input_layernorm.weight.detach().double()
        for name in ("q_proj", "k_proj", "v_proj"):
            p = getattr(attn, name)
            setattr(attn, name, linear((p.weight.double() * g) @ q_in, p.bias, p))
        new.attn_shortcut = linear(q_in, None, attn.o_proj)  # back to the original basis for now
        mids = [new.attention_half(x, **kw) for x, kw in zip(xs, kws)]
        _, q = pca(mids)
        q_mid = q[:, :dim]
        new.attn_shortcut = linear((q_in.T @ q_mid).T, None, attn.o_proj)
        o = attn.o_proj
        attn.o_proj = linear(q_mid.T @ o.weight.double(), None if o.bias is None else q_mid.T @ o.bias.double(), o)
        g = layer.post_attention_layernorm.weight.detach().double()
        for name in ("gate_proj", "up_proj"):
            p = getattr(mlp, name)
            setattr(mlp, name, linear((p.weight.double() * g) @ q_mid, p.bias, p))
        mids = rot(mids, q_mid)
        new.mlp_shortcut = linear(q_mid, None, mlp.down_proj)
        if last:  # the head is not sliced: the output stays in the original basis
            xs = None
            kept["layers"].append({"mid": q_mid, "out": None})
        else:
            outs = [new.mlp_half(m) for m in mids]
            _, q = pca(outs)
            q_out = q[:, :dim]
            new.mlp_shortcut = linear((q_mid.T @ q_out).T, None, mlp.down_proj)
            dp = mlp.down_proj
            mlp.down_proj = linear(q_out.T @ dp.weight.double(),
                                   None if dp.bias is None else q_out.T @ dp.bias.double(), dp)
            xs = rot(outs, q_out)
            q_in = q_out
            kept["layers"].append({"mid": q_mid, "out": q_out})
            del outs
        del mids
        layers[li] = new

    model.model.embed_tokens = new_emb
    norm = RMSN(hidden, eps)
    if tied:
        proj = linear((gamma_final[:, None] * q_embed).T, None, model.lm_head)
        model.model.norm = ProjectedNorm(norm, proj)
        head = nn.Linear(dim, emb.num_embeddings, bias=False, dtype=dtype, device=emb.weight.device)
        head.weight = new_emb.weight
        model.lm_head = head
    else:
        model.model.norm = norm
        h = model.lm_head
        model.lm_head = linear(h.weight.double() * gamma_final, h.bias, h)
    if keep_rotations:
        model.slicegpt_rotations = kept
    return model


def untie(model) -> None:
    """Give the head its own copy of the tied embedding (what the authors' code does)."""
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False


@torch.no_grad()
def slicegpt(model, calibration_ids: torch.Tensor, sparsity: float, *, batch_size: int = 8,
             tolerance: float = 0.005, head: str = "tied"):
    """Slice ``model`` in place to remove ``sparsity`` of ALL its parameters (shortcuts
    counted); returns ``(model, report)``.

    ``head="untied"`` (a diagnostic for tied models): the slicing the tied model gets at
    ``sparsity``, but with the authors' untied, full-width head. It isolates what keeping the
    tie costs in quality; it removes fewer parameters than asked (the head's copy counts).
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), not {sparsity}")
    if head not in ("tied", "untied"):
        raise ValueError(f"head must be 'tied' or 'untied', not {head!r}")
    dense = count_params(model)
    hidden = model.get_input_embeddings().weight.shape[1]
    dim = choose_dim(model, sparsity)
    untied_diagnostic = head == "untied" and _tied(model)
    if untied_diagnostic:
        untie(model)
    expected = sliced_param_count(model, dim)
    tied = _tied(model)
    slice_model(model, calibration_ids, dim, batch_size=batch_size)
    pruned = count_params(model)
    if pruned != expected:
        raise RuntimeError(f"SliceGPT: {pruned} parameters after slicing, {expected} planned")
    rep = {"method": "slicegpt", "sparsity": sparsity_report(sparsity, dense, pruned)}
    if not untied_diagnostic and abs(rep["sparsity"]["achieved"] - sparsity) > tolerance:
        raise RuntimeError(f"SliceGPT reached {rep['sparsity']['achieved']:.4f}, not {sparsity} +- {tolerance}")
    n_layers = len(decoder_layers(model))
    rep["peer"] = {
        "method": "slicegpt", "hidden": hidden, "dim": dim, "slicing": round(1 - dim / hidden, 5),
        "schedule": "constant", "slice_head": False,
        "tied_head": ("kept tied via a hidden x dim projection" if tied else
                      "untied (a full-width copy of the embedding), at the tied model's slicing" if untied_diagnostic
                      else "untied model: head not sliced"),
        # attention shortcuts, MLP shortcuts (the last one dim x hidden), the tied head's projection
        "shortcut_params": n_layers * dim * dim + (n_layers - 1) * dim * dim + dim * hidden + (hidden * dim if tied else 0),
        "calibration_tokens": int(calibration_ids.numel()),
    }
    return model, rep


def prune(src, *, sparsity: float, calibration_ids: torch.Tensor, device: str = "cpu", **kwargs):
    """Load the dense model at ``src`` and slice it: ``(model, report)``."""
    return slicegpt(load_dense(src, device=device), calibration_ids, sparsity, **kwargs)
