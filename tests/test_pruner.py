"""The pruner on tiny random models: exactness, round trips, budget, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from olica_prune.io.adapters import UnsupportedModelError
from olica_prune.method.budget import Alignment, BudgetError, LayerCosts, plan_widths
from olica_prune.contract import LayerSpec, ModelDims, OlicaSpec, count_parameters
from olica_prune.method.layers import BadWeightsError
from olica_prune.model.modeling import OlicaForCausalLM, load_causal_lm
from olica_prune.method.pruner import PRESETS, PruneConfig, PruneError, prune
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config
from olica_prune.io.writer import OutputExistsError

CASES = {
    "mha": dict(family="llama", num_heads=4, num_kv_heads=4),
    "gqa": dict(family="llama", num_heads=4, num_kv_heads=2),
    "gqa-bias": dict(family="qwen2", num_heads=6, num_kv_heads=2, head_dim=8),
    "mistral-tied": dict(family="mistral", num_heads=4, num_kv_heads=1, tie_word_embeddings=True),
}


@pytest.fixture(scope="module", params=list(CASES))
def dense_dir(request, tmp_path_factory):
    cfg = tiny_config(**CASES[request.param])
    model = random_dense_model(cfg, seed=1)
    path = tmp_path_factory.mktemp(request.param) / "dense"
    save_model_checkpoint(model, path)
    return path


def _ids(n=24, seq=48, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def _logits(path, ids):
    model = load_causal_lm(path)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("ond", ["fast", "exact", "separate"])
def test_keep_all_prune_reproduces_dense_logits(dense_dir, tmp_path, ond):
    """Rotating V/O into the OND basis at full width changes no logit."""
    cfg = json.loads((dense_dir / "config.json").read_text())
    dims = ModelDims.from_config(cfg)
    out = tmp_path / "keepall"
    prune(str(dense_dir), output=out, config=PruneConfig(sparsity=0.1, ond=ond, refit_down=False), calibration_ids=_ids(),
          layer_specs=[dims.dense_layer()] * dims.num_layers, progress=False)
    ids = _ids(4, 32, seed=9)
    ref, got = _logits(dense_dir, ids), _logits(out, ids)
    rel = float((got - ref).norm() / ref.norm())
    assert rel <= 1e-5, rel  # observed ~1e-7
    # the rotation really happened (else this test would prove nothing)
    a = load_file(str(dense_dir / "model.safetensors"))["model.layers.0.self_attn.v_proj.weight"]
    b = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.v_proj.weight"]
    assert not torch.allclose(a, b, atol=1e-3)


def test_pruned_checkpoint_round_trips(dense_dir, tmp_path):
    out = tmp_path / "p"
    report = prune(str(dense_dir), output=out, config=PruneConfig(sparsity=0.3, align=8, v_align=4, qk_sparsity=0.5,
                                                                  calibration_layers=2),
                   calibration_ids=_ids(), progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["OlicaForCausalLM"]
    spec = OlicaSpec.from_config(cfg)
    assert sum(1 for layer in spec.layers if layer.calibration_rank) == 2
    assert any(layer.q_rank for layer in spec.layers)
    assert json.loads((out / "olica_report.json").read_text())["sparsity"] == report["sparsity"]
    model = OlicaForCausalLM.from_pretrained(out)
    again = tmp_path / "again"
    save_model_checkpoint(model, again)
    ids = _ids(2, 16, seed=5)
    assert torch.equal(_logits(out, ids), _logits(again, ids))
    # a prune that keeps 70 % of the params still tracks the dense model: closer
    # to it than a model of the same widths whose kept weights are random
    ref = _logits(dense_dir, ids)
    err = float((_logits(out, ids) - ref).norm() / ref.norm())
    scrambled = tmp_path / "scrambled"
    state = {k: v for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for k, v in state.items():
        if k.startswith("model.layers.") and v.ndim == 2:
            state[k] = v[torch.randperm(v.shape[0], generator=gen)]
    model.load_state_dict(state)
    save_model_checkpoint(model, scrambled)
    err_scrambled = float((_logits(scrambled, ids) - ref).norm() / ref.norm())
    print(f"relative logit error: olica {err:.3f}, rows scrambled {err_scrambled:.3f}")
    assert err < 0.6 * err_scrambled  # measured ratios 0.25-0.51 over the families


@pytest.mark.parametrize("method", ["olica", "wanda-sp", "magnitude"])
def test_methods_hit_the_budget(dense_dir, tmp_path, method):
    out = tmp_path / method
    rep = prune(str(dense_dir), output=out, config=PruneConfig(sparsity=0.25, method=method, align=4, v_align=2,
                                                               calibration_layers=1),
                calibration_ids=_ids(), progress=False)
    assert abs(rep["sparsity"]["achieved"] - 0.25) <= 0.01  # tiny model: coarse units
    cfg = json.loads((out / "config.json").read_text())
    dims = ModelDims.from_config(cfg)
    counted = count_parameters(OlicaSpec.from_config(cfg), dims)
    stored = sum(t.numel() for t in load_file(str(out / "model.safetensors")).values())
    assert counted == stored == rep["sparsity"]["params_pruned"]


SMOL = ModelDims(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536, num_layers=30,
                 vocab_size=49152, tie_word_embeddings=True)


def _synthetic_costs(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [LayerCosts(ffn=torch.rand(dims.intermediate_size, generator=g) * (1 + i),
                       vo=torch.rand(dims.head_dim, generator=g) * 3, stream=float(10 + i))
            for i in range(dims.num_layers)]


@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.3, 0.5])
@pytest.mark.parametrize("allocation", ["uniform", "adaptive"])
def test_budget_hits_target_within_half_a_point(sparsity, allocation):
    specs = plan_widths(SMOL, sparsity=sparsity, qkv_bias=False, allocation=allocation,
                        costs=_synthetic_costs(SMOL), qk_sparsity=0.2, calibration_layers=[3, 7],
                        calibration_rank=32, align=Alignment())
    dense = count_parameters(None, SMOL)
    achieved = 1 - count_parameters(OlicaSpec("LlamaForCausalLM", False, specs), SMOL) / dense
    assert abs(achieved - sparsity) <= 0.005, achieved
    assert all(s.intermediate_size % 32 == 0 and s.v_head_dim % 8 == 0 for s in specs)
    assert [s.calibration_rank for s in specs].count(32) == 2


def test_adaptive_budget_spares_the_costly_layers():
    costs = _synthetic_costs(SMOL)
    costs[0].ffn *= 100  # layer 0 carries far more per neuron
    specs = plan_widths(SMOL, sparsity=0.2, qkv_bias=False, allocation="adaptive", costs=costs, qk_sparsity=0,
                        calibration_layers=[], calibration_rank=32, align=Alignment())
    assert specs[0].intermediate_size == max(s.intermediate_size for s in specs)


def test_budget_refuses_impossible_targets():
    with pytest.raises(BudgetError, match="lower sparsity"):
        plan_widths(SMOL, sparsity=0.9, qkv_bias=False, allocation="uniform", costs=None, qk_sparsity=0,
                    calibration_layers=[], calibration_rank=32, align=Alignment())
    tiny = ModelDims(64, 4, 2, 16, 128, 2, 256, False)
    with pytest.raises(BudgetError, match="alignment"):
        plan_widths(tiny, sparsity=0.2, qkv_bias=False, allocation="uniform", costs=None, qk_sparsity=0,
                    calibration_layers=[], calibration_rank=32, align=Alignment(ffn=64, v=16))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("sparsity", [0.0, -0.1, 0.95, 1.0])
def test_sparsity_out_of_range(sparsity):
    with pytest.raises(PruneError, match=r"sparsity must be in \(0, 0.9\]"):
        PruneConfig(sparsity=sparsity)


def test_existing_output_is_not_overwritten(dense_dir, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prune(str(dense_dir), output=out, config=PruneConfig(sparsity=0.2), calibration_ids=_ids(), progress=False)
    assert (out / "keep.txt").read_text() == "user data"


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path):
    model = random_dense_model(tiny_config(), seed=2)
    src = tmp_path / "src"
    save_model_checkpoint(model, src)
    state = load_file(str(src / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(state, str(src / "model.safetensors"))
    out = tmp_path / "out"
    with pytest.raises(BadWeightsError, match="model.layers.1.mlp.up_proj.weight holds 1 NaN/Inf"):
        prune(str(src), output=out, config=PruneConfig(sparsity=0.2, align=8, v_align=4), calibration_ids=_ids(),
              progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no partial directory left


def test_too_few_calibration_tokens_for_the_ridge(dense_dir, tmp_path):
    with pytest.raises(PruneError, match="calibration tokens"):
        prune(str(dense_dir), output=tmp_path / "o", config=PruneConfig(sparsity=0.2),
              calibration_ids=_ids(2, 8), progress=False)
    assert not (tmp_path / "o").exists()


def test_directory_without_weights(tmp_path):
    from olica_prune.io.sources import ModelSourceError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(tiny_config().to_json_string())
    with pytest.raises(ModelSourceError, match="no weights"):
        prune(str(tmp_path / "m"), output=tmp_path / "o", config=PruneConfig(sparsity=0.2), progress=False)


def test_unsupported_architecture_lists_supported(tmp_path):
    cfg = tiny_config()
    cfg.architectures = ["GPTNeoXForCausalLM"]
    model = random_dense_model(tiny_config(), seed=0)
    model.config.architectures = ["GPTNeoXForCausalLM"]
    save_model_checkpoint(model, tmp_path / "m")
    with pytest.raises(UnsupportedModelError, match="Supported: LlamaForCausalLM.*Qwen2ForCausalLM"):
        prune(str(tmp_path / "m"), output=tmp_path / "o", config=PruneConfig(sparsity=0.2), calibration_ids=_ids(),
              progress=False)


def test_model_too_small_for_alignment(dense_dir, tmp_path):
    with pytest.raises(BudgetError, match="align"):
        prune(str(dense_dir), output=tmp_path / "o", config=PruneConfig(sparsity=0.2, align=64, v_align=16),
              calibration_ids=_ids(), progress=False)
    assert not (tmp_path / "o").exists()


def test_layer_spec_count_mismatch(dense_dir, tmp_path):
    with pytest.raises(PruneError, match="layer_specs"):
        prune(str(dense_dir), output=tmp_path / "o", config=PruneConfig(sparsity=0.2), calibration_ids=_ids(),
              layer_specs=[LayerSpec(None, None, 16, 128)], progress=False)
    assert not (tmp_path / "o").exists()


def test_calibration_layers_ranked_on_the_pruned_stream(dense_dir, tmp_path):
    """--calibration-ranking pruned: every candidate fits a branch on the pruned stream, the best
    explained keep theirs; same widths and parameter count as the dense-pass ranking, no dense pass."""
    cfg = dict(sparsity=0.3, align=8, v_align=4, calibration_layers=2)
    dense_rank = prune(str(dense_dir), output=tmp_path / "d", config=PruneConfig(**cfg), calibration_ids=_ids(),
                       progress=False)
    rep = prune(str(dense_dir), output=tmp_path / "p", config=PruneConfig(calibration_ranking="pruned", **cfg),
                calibration_ids=_ids(), progress=False)
    assert dense_rank["dense_pass"]["ranking"] and not rep["dense_pass"]["ranking"]
    assert rep["dense_pass"]["sensitivity"]  # the kl default still probes, on its kl-samples only
    assert rep["dense_pass"]["sequences"] == PruneConfig(sparsity=0.3).kl_samples
    explained = {r["layer"]: r["calibration_explained"] for r in rep["layers"]}
    assert len(explained) == len(rep["layers"])  # every candidate layer fitted one
    best = sorted(sorted(explained, key=lambda i: -explained[i])[:2])
    assert rep["calibration_layers"] == best
    spec = OlicaSpec.from_config(json.loads((tmp_path / "p" / "config.json").read_text()))
    assert [i for i, layer in enumerate(spec.layers) if layer.calibration_rank] == best
    assert rep["sparsity"]["params_pruned"] == dense_rank["sparsity"]["params_pruned"]
    ids = _ids(2, 16, seed=5)
    logits = _logits(tmp_path / "p", ids)  # loads: the branch tensors match the spec
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("method, score", [("wanda-sp", "wanda"), ("magnitude", "magnitude")])
def test_baselines_keep_their_own_scores_and_split(method, score):
    """The olica presets must not leak into the baselines (FFN score, V/O share, Q/K, refit, calibration)."""
    for preset in PRESETS:
        cfg = PruneConfig(sparsity=0.2, method=method, preset=preset)
        assert cfg.ffn_score == score
        assert cfg.vo_sparsity is None and cfg.qk_sparsity == 0.0
        assert not cfg.calibration and not cfg.refit_down and cfg.ond == "none"


@pytest.mark.parametrize("allocation, ranking_samples, want", [
    ("uniform", 8, 11),    # at least 4 x hidden_size = 256 tokens: ceil(256 / 24) = 11 sequences
    ("uniform", 20, 20),
    ("adaptive", 8, None),  # adaptive allocation reads every sequence
])
def test_ranking_pass_reads_a_share_of_the_calibration(tmp_path, monkeypatch, allocation, ranking_samples, want):
    import olica_prune.method.pruner as pruner_mod

    src = tmp_path / "dense"
    save_model_checkpoint(random_dense_model(tiny_config(num_layers=8), seed=1), src)
    seen, embedded = [], []
    measure, embed = pruner_mod._Run.measure_dense, pruner_mod._Run._embed

    def spy_measure(self, **kw):
        seen.append(kw["sequences"])
        return measure(self, **kw)

    def spy_embed(self, sequences=None):
        out = embed(self, sequences)
        embedded.append(sum(b.shape[0] for b in out))
        return out

    monkeypatch.setattr(pruner_mod._Run, "measure_dense", spy_measure)
    monkeypatch.setattr(pruner_mod._Run, "_embed", spy_embed)
    ids = torch.randint(0, 256, (40, 24), generator=torch.Generator().manual_seed(0))
    prune(str(src), output=tmp_path / "out", calibration_ids=ids, progress=False,
          config=PruneConfig(sparsity=0.2, allocation=allocation, ranking_samples=ranking_samples, batch_size=8))
    assert seen == [want]
    assert embedded == [want or 40, 40]  # the ranking pass, then the prune pass over everything


def test_refit_recovers_when_the_in_place_solve_is_refused(dense_dir, tmp_path, monkeypatch):
    """If Cholesky rejects the refit's Gram in place (it is then overwritten), the refit
    rebuilds its statistics and solves again: the same checkpoint as without the refusal."""
    import olica_prune.method.ffn as ffn_mod

    cfg = PruneConfig(sparsity=0.3, align=8, v_align=4, calibration_layers=1, allocation="uniform")
    want = prune(str(dense_dir), output=tmp_path / "a", config=cfg, calibration_ids=_ids(), progress=False)
    solve, refused = ffn_mod.ridge_solve, []

    def refuse_in_place(gram, rhs, ridge, *, prior=None, consume=False):
        if consume:
            gram.fill_(float("nan"))  # what a failed in-place factorization leaves behind
            refused.append(1)
            raise torch.linalg.LinAlgError("refused")
        return solve(gram, rhs, ridge, prior=prior)

    monkeypatch.setattr(ffn_mod, "ridge_solve", refuse_in_place)
    got = prune(str(dense_dir), output=tmp_path / "b", config=cfg, calibration_ids=_ids(), progress=False)
    assert refused  # the refit went through the retry
    for g, w in zip(got["layers"], want["layers"]):
        assert g["ffn_rel_error"] == pytest.approx(w["ffn_rel_error"], abs=1e-6)
