"""The retraining-free peers in bench/peers (FLAP, SliceGPT) on tiny random models."""

from __future__ import annotations

import copy
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers import PEERS, flap, slicegpt  # noqa: E402
from bench.peers._common import count_params  # noqa: E402


def tiny(*, family: str = "llama", tie: bool = False, hidden: int = 64, heads: int = 4, kv: int = 2,
         head_dim: int = 16, inter: int = 128, layers: int = 3, vocab: int = 256, dtype=torch.float64, seed: int = 0):
    """A random model of ``family``; norm scales drawn around 1 so a misplaced norm shows."""
    import transformers

    cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[family]
    cfg = getattr(transformers, cls[0])(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                                        head_dim=head_dim, intermediate_size=inter, num_hidden_layers=layers,
                                        vocab_size=vocab, tie_word_embeddings=tie, rms_norm_eps=1e-6,
                                        max_position_embeddings=256)
    torch.manual_seed(seed)
    model = getattr(transformers, cls[1])(cfg).to(dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def ids(n: int = 16, seq: int = 32, vocab: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def projection_inputs(model, batch: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """The dense inputs of every o_proj / down_proj on ``batch``, as [tokens, channels]."""
    got, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        for key, mod in (("attn", layer.self_attn.o_proj), ("mlp", layer.mlp.down_proj)):
            handles.append(mod.register_forward_pre_hook(
                lambda _m, args, k=(key, i): got.__setitem__(k, args[0].reshape(-1, args[0].shape[-1]).clone())))
    model(batch, use_cache=False)
    for h in handles:
        h.remove()
    return got


# ------------------------------------------------------------------------ FLAP


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@torch.no_grad()
def test_flap_bias_compensation_reproduces_the_dense_mean_output(family):
    """On the calibration tokens (dense inputs), each pruned o_proj / down_proj has the
    dense projection's mean output exactly, including a branch that lost every unit."""
    model = tiny(family=family, layers=3)
    cal = ids()
    x = projection_inputs(model, cal)
    dense_mean = {k: model.model.layers[k[1]].self_attn.o_proj(v).mean(0) if k[0] == "attn"
                  else model.model.layers[k[1]].mlp.down_proj(v).mean(0) for k, v in x.items()}
    stats = flap.input_moments(model, cal, batch_size=5)  # batches of unequal size: the merged moments
    for (kind, i), v in x.items():
        assert torch.allclose(stats[i][kind].mean, v.mean(0), rtol=0, atol=1e-12)
        assert torch.allclose(stats[i][kind].variance, v.var(0), rtol=1e-10, atol=1e-14)
    units = flap.unit_scores(model, stats)
    ranked = sorted(units, key=lambda u: u.score)
    # the 30 % lowest-ranked units, plus every attention group of layer 0 and every FFN neuron of layer 1
    chosen = {(u.kind, u.layer, u.index): u for u in ranked[: len(ranked) * 3 // 10]}
    chosen.update({(u.kind, u.layer, u.index): u for u in units
                   if (u.kind, u.layer) in (("attn", 0), ("mlp", 1))})
    flap.apply_removal(model, list(chosen.values()), stats)
    _, _, n_rep, head_dim = flap._geometry(model)
    kv = model.config.num_key_value_heads
    for (kind, i), v in x.items():
        gone = {idx for (k, l, idx) in chosen if k == kind and l == i}
        layer = model.model.layers[i]
        if kind == "attn":
            keep = [(g * n_rep + r) * head_dim + c for g in range(kv) if g not in gone
                    for r in range(n_rep) for c in range(head_dim)]
            branch = layer.self_attn
            out = branch(v[:, keep])[0] if isinstance(branch, flap.ConstantBranch) else branch.o_proj(v[:, keep])
        else:
            keep = [j for j in range(v.shape[1]) if j not in gone]
            branch = layer.mlp
            out = branch(v[:, keep]) if isinstance(branch, flap.ConstantBranch) else branch.down_proj(v[:, keep])
        if not gone:
            continue
        assert torch.allclose(out.mean(0), dense_mean[(kind, i)], rtol=0, atol=1e-12), (kind, i)
    assert isinstance(model.model.layers[0].self_attn, flap.ConstantBranch)
    assert isinstance(model.model.layers[1].mlp, flap.ConstantBranch)
    assert torch.isfinite(model(ids(2, 16, seed=3)).logits).all()  # the pruned model runs end to end


@torch.no_grad()
def test_flap_ranks_globally_after_per_layer_standardisation():
    model = tiny(layers=3)
    # Scale layer 1's down_proj up: raw metrics grow 100x, standardised ones do not move.
    stats = flap.input_moments(model, ids())
    before = [u.score for u in flap.unit_scores(model, stats)]
    model.model.layers[1].mlp.down_proj.weight.mul_(10)
    after = [u.score for u in flap.unit_scores(model, stats)]
    assert before == pytest.approx(after, abs=1e-9)
    # Pooled over layers ("type"), the scaled layer's neurons would rank above everything else.
    pooled = flap.unit_scores(model, stats, standardize="type")
    top = sorted((u for u in pooled if u.kind == "mlp"), key=lambda u: -u.score)[:64]
    assert all(u.layer == 1 for u in top)


@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("tie", [False, True])
def test_flap_parameter_count_matches_the_target(sparsity, tie):
    model = tiny(tie=tie, hidden=64, heads=8, kv=4, head_dim=8, inter=256, layers=4)
    dense = count_params(model)
    pruned, rep = flap.flap(model, ids(), sparsity)
    assert rep["sparsity"]["params_dense"] == dense
    assert rep["sparsity"]["params_pruned"] == count_params(pruned)
    assert abs(rep["sparsity"]["achieved"] - sparsity) <= 0.005
    assert 1 - count_params(pruned) / dense == pytest.approx(rep["sparsity"]["achieved"], abs=1e-5)


# -------------------------------------------------------------------- SliceGPT


@pytest.mark.parametrize("family, tie", [("llama", True), ("llama", False), ("qwen2", True)])
@torch.no_grad()
def test_slicegpt_rotation_without_slicing_keeps_the_logits(family, tie):
    """Slicing 0 % (dim = hidden size): norm fusion, PCA rotations and shortcuts only,
    which is the identity on the model's function."""
    model = tiny(family=family, tie=tie)
    test = ids(4, 24, seed=7)
    ref = model(test).logits
    rotated = slicegpt.slice_model(copy.deepcopy(model), ids(), model.config.hidden_size, batch_size=5)
    assert rel(rotated(test).logits, ref) <= 1e-4
    # It really rotated: the embedding changed, the shortcuts are orthogonal, not identities.
    assert not torch.allclose(rotated.model.embed_tokens.weight, model.model.embed_tokens.weight)
    s = rotated.model.layers[0].attn_shortcut.weight
    eye = torch.eye(s.shape[0], dtype=s.dtype)
    assert torch.allclose(s @ s.T, eye, atol=1e-10) and not torch.allclose(s.abs(), eye, atol=1e-3)
    if tie:
        assert rotated.lm_head.weight is rotated.model.embed_tokens.weight


@torch.no_grad()
def test_slicegpt_slicing_keeps_the_leading_directions():
    """Sliced, the model differs from dense but stays close, with every stream cut to
    ``dim`` except the last layer's output (the head is not sliced)."""
    model = tiny(tie=True)
    test = ids(4, 24, seed=7)
    ref = model(test).logits
    sliced = slicegpt.slice_model(copy.deepcopy(model), ids(), 56)
    err = rel(sliced(test).logits, ref)
    assert 0 < err < 1
    assert sliced.model.embed_tokens.weight.shape == (256, 56)
    assert sliced.model.layers[-1].mlp.down_proj.out_features == 64  # the head is not sliced


@torch.no_grad()
def projected_dense_logits(dense, rotations, batch: torch.Tensor, tie: bool) -> torch.Tensor:
    """The dense model with its residual stream projected onto the kept PCA subspace
    (Q_k Q_k^T) at every point SliceGPT slices: what the sliced model must compute."""
    from bench.peers._common import layer0_inputs

    (h, kw), = layer0_inputs(dense, batch, len(batch))

    def proj(x, q):
        return x @ q @ q.T

    h = proj(h, rotations["embed"])
    for layer, r in zip(dense.model.layers, rotations["layers"]):
        mid = proj(h + layer.self_attn(hidden_states=layer.input_layernorm(h), **kw)[0], r["mid"])
        out = mid + layer.mlp(layer.post_attention_layernorm(mid))
        h = out if r["out"] is None else proj(out, r["out"])
    y = dense.model.norm(h)
    return dense.lm_head(proj(y, rotations["embed"]) if tie else y)


@pytest.mark.parametrize("family, tie", [("llama", True), ("llama", False), ("qwen2", True)])
def test_slicegpt_sliced_model_is_the_dense_model_on_the_kept_subspace(family, tie):
    model = tiny(family=family, tie=tie)
    test = ids(4, 24, seed=7)
    sliced = slicegpt.slice_model(copy.deepcopy(model), ids(), 40, keep_rotations=True)
    with torch.no_grad():
        got = sliced(test).logits
    want = projected_dense_logits(model, sliced.slicegpt_rotations, test, tie)
    assert rel(got, want) <= 1e-5
    assert rel(got, model(test).logits) > 1e-3  # and slicing did change the function


@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("tie", [False, True])
def test_slicegpt_parameter_count_matches_the_target(sparsity, tie):
    model = tiny(tie=tie, hidden=128, heads=4, kv=2, head_dim=32, inter=256, layers=2, dtype=torch.float32)
    dense = count_params(model)
    sliced, rep = slicegpt.slicegpt(model, ids(), sparsity)
    assert count_params(sliced) == rep["sparsity"]["params_pruned"]
    assert abs(rep["sparsity"]["achieved"] - sparsity) <= 0.005
    assert rep["peer"]["slicing"] == pytest.approx(1 - rep["peer"]["dim"] / 128, abs=1e-5)
    assert rep["peer"]["slicing"] > sparsity  # shortcuts and the unsliced head cost slicing
    assert rep["sparsity"]["params_dense"] == dense


def test_slicegpt_untied_diagnostic_slices_alike_with_a_full_head():
    """head="untied": the tied model's slicing for the target, the head a full-width copy of the
    embedding (gamma fused in), and the extra parameters counted, not hidden."""
    model = tiny(tie=True, hidden=128, heads=4, kv=2, head_dim=32, inter=256, layers=2, dtype=torch.float32)
    _, tied = slicegpt.slicegpt(copy.deepcopy(model), ids(), 0.2)
    untied, rep = slicegpt.slicegpt(copy.deepcopy(model), ids(), 0.2, head="untied")
    assert rep["peer"]["dim"] == tied["peer"]["dim"]
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert untied.lm_head.weight.shape == (256, 128) and untied.model.embed_tokens.weight.shape[1] < 128
    assert rep["sparsity"]["params_pruned"] == count_params(untied)
    assert rep["sparsity"]["params_pruned"] - tied["sparsity"]["params_pruned"] == 256 * 128 - 128 * rep["peer"]["dim"]
    assert torch.allclose(untied.lm_head.weight, model.lm_head.weight * model.model.norm.weight)
    with pytest.raises(ValueError, match="head must be"):
        slicegpt.slicegpt(copy.deepcopy(model), ids(), 0.2, head="sliced")


def _olica_count_parameters():
    """Olica's own counter (its contract module, wherever the package keeps it)."""
    import olica_prune

    for mod in pkgutil.walk_packages(olica_prune.__path__, "olica_prune."):
        if mod.name.rsplit(".", 1)[-1] == "contract":
            m = importlib.import_module(mod.name)
            return m.count_parameters, m.ModelDims
    pytest.fail("olica_prune has no contract module")


@pytest.mark.parametrize("tie", [False, True])
def test_dense_count_is_olicas(tie):
    count_parameters, ModelDims = _olica_count_parameters()
    model = tiny(tie=tie)
    assert count_params(model) == count_parameters(None, ModelDims.from_config(model.config))


def test_peers_are_quality_bench_methods():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    assert set(PEERS) == {"flap", "slicegpt"}
    for name in PEERS:
        assert quality.METHODS[name]["method"] == name
