"""The ``kl`` allocation: per-layer sensitivity by output KL, and the FFN budget spread by it."""

import json
import math

import pytest
import torch

from olica_prune.method.budget import Alignment, BudgetError, default_kl_alpha, plan_widths, spread_by_sensitivity
from olica_prune.cli import main as cli_main
from olica_prune.contract import ModelDims, OlicaSpec, count_parameters
from olica_prune.method.layers import SourceWeights, load_config
from olica_prune.method.linalg import ffn_magnitude_scores
from olica_prune.method.pruner import PruneConfig, PruneError, _Run, prune
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config

SMOL = ModelDims(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536, num_layers=30,
                 vocab_size=49152, tie_word_embeddings=True)


def _ids(n=16, seq=32, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["llama-gqa", "qwen2-tied"])
def src(request, tmp_path_factory):
    kw = dict(family="llama", num_heads=4, num_kv_heads=2) if request.param == "llama-gqa" else dict(
        family="qwen2", num_heads=6, num_kv_heads=2, head_dim=8, tie_word_embeddings=True)
    cfg = tiny_config(num_layers=4, **kw)
    model = random_dense_model(cfg, seed=3)
    path = tmp_path_factory.mktemp(request.param) / "dense"
    save_model_checkpoint(model, path)
    return path


def _run(path, ids, **cfg_kw):
    hf_config, _ = load_config(path)
    cfg = PruneConfig(sparsity=0.2, **cfg_kw)
    return _Run(weights=SourceWeights(path), config=hf_config, dims=ModelDims.from_config(hf_config),
                qkv_bias=hf_config.model_type == "qwen2", device=torch.device("cpu"), cfg=cfg, ids=ids,
                progress=False)


def _reference_kl(path, ids, layer, keep):
    """KL(dense ‖ dense with layer ``layer``'s FFN cut to ``keep``) through transformers."""
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float64).eval()
    with torch.no_grad():
        p = torch.log_softmax(dense(ids).logits, -1)
        down = dense.model.layers[layer].mlp.down_proj.weight
        mask = torch.zeros(down.shape[1], dtype=torch.bool)
        mask[keep] = True
        down[:, ~mask] = 0
        q = torch.log_softmax(dense(ids).logits, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_sensitivity_is_the_output_kl_of_pruning_one_layer(src):
    """Each layer's number equals the KL measured by cutting that layer alone in a
    float64 transformers model (magnitude scores: the kept set depends on weights only)."""
    ids = _ids()
    run = _run(src, ids, ffn_score="magnitude")
    probe_keep = 48
    kl = run.measure_sensitivity(probe_keep=probe_keep, sequences=4, skip={0})
    assert kl[0] is None and len(kl) == 4
    weights = SourceWeights(src)
    for i in (1, 2, 3):
        g, u, d = (weights.get(f"model.layers.{i}.mlp.{n}.weight") for n in ("gate_proj", "up_proj", "down_proj"))
        keep = torch.argsort(ffn_magnitude_scores(g, u, d), descending=True)[:probe_keep]
        ref = _reference_kl(src, ids[:4], i, keep)
        assert ref > 1e-6  # the probe changed something
        assert kl[i] == pytest.approx(ref, rel=2e-3, abs=1e-7), (i, kl[i], ref)


def test_sensitivity_is_zero_when_the_probe_keeps_every_neuron(src):
    run = _run(src, _ids())
    kl = run.measure_sensitivity(probe_keep=128, sequences=4)
    assert all(abs(v) < 1e-6 for v in kl), kl
    kl_cut = run.measure_sensitivity(probe_keep=32, sequences=4)
    assert all(v > 1e-5 for v in kl_cut), kl_cut


def test_spread_keeps_the_mean_and_follows_the_power_law():
    k = [1.0, 4.0, 16.0, 0.25]
    f = spread_by_sensitivity(0.2, k, [0, 1, 2, 3], alpha=0.5, cap=0.9, L=4)
    assert sum(f) / 4 == pytest.approx(0.2, rel=1e-9)
    for i in range(4):
        for j in range(4):
            assert f[i] / f[j] == pytest.approx((k[j] / k[i]) ** 0.5, rel=1e-6)
    # alpha 0: uniform
    assert spread_by_sensitivity(0.2, k, [0, 1, 2, 3], alpha=0.0, cap=0.9, L=4) == pytest.approx([0.2] * 4)
    # the cap binds: the least sensitive layer stops at it, the others share the rest
    f = spread_by_sensitivity(0.5, [1e-4, 1.0, 1.0, 1.0], [0, 1, 2, 3], alpha=1.0, cap=0.9, L=4)
    assert f[0] == pytest.approx(0.9) and sum(f) == pytest.approx(2.0, rel=1e-9)
    assert f[1] == pytest.approx(f[2]) == pytest.approx(f[3])
    # layers outside the list lose nothing; zero sensitivities do not take the whole budget
    f = spread_by_sensitivity(0.3, [9.0, 0.0, 1.0, 1.0], [1, 2, 3], alpha=1.0, cap=0.9, L=4)
    assert f[0] == 0.0 and sum(f) == pytest.approx(0.9, rel=1e-9) and f[1] == pytest.approx(f[2])
    with pytest.raises(BudgetError):
        spread_by_sensitivity(0.95, [1.0, 1.0], [0, 1], alpha=1.0, cap=0.9, L=2)
    with pytest.raises(ValueError):
        spread_by_sensitivity(0.2, [1.0, math.nan], [0, 1], alpha=1.0, cap=0.9, L=2)


@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.3, 0.5])
def test_kl_plan_hits_the_target_and_moves_width_to_sensitive_layers(sparsity):
    sens = [float(1 + (7 * i) % 11) for i in range(SMOL.num_layers)]
    kw = dict(sparsity=sparsity, qkv_bias=False, costs=None, qk_sparsity=0.3 * sparsity, calibration_layers=[3, 7],
              calibration_rank=32, align=Alignment(), spare_layers=(0, 29), vo_sparsity=sparsity / 2)
    specs = plan_widths(SMOL, allocation="kl", sensitivity=sens, kl_alpha=1.0, **kw)
    dense = count_parameters(None, SMOL)
    achieved = 1 - count_parameters(OlicaSpec("LlamaForCausalLM", False, specs), SMOL) / dense
    assert abs(achieved - sparsity) <= 0.005, achieved
    assert specs[0].intermediate_size == specs[29].intermediate_size == SMOL.intermediate_size
    uniform = plan_widths(SMOL, allocation="uniform", **kw)
    assert [s.v_head_dim for s in specs] == [s.v_head_dim for s in uniform]
    most, least = max(range(1, 29), key=lambda i: sens[i]), min(range(1, 29), key=lambda i: sens[i])
    assert specs[most].intermediate_size > uniform[most].intermediate_size
    assert specs[least].intermediate_size < uniform[least].intermediate_size
    assert plan_widths(SMOL, allocation="kl", sensitivity=sens, kl_alpha=0.0, **kw) == uniform
    # kl_vo: V/O widths follow the same per-layer factor, the target still holds
    both = plan_widths(SMOL, allocation="kl", sensitivity=sens, kl_alpha=1.0, kl_vo=True, **kw)
    achieved = 1 - count_parameters(OlicaSpec("LlamaForCausalLM", False, both), SMOL) / dense
    assert abs(achieved - sparsity) <= 0.005, achieved
    assert both[most].v_head_dim >= uniform[most].v_head_dim
    assert both[least].v_head_dim <= uniform[least].v_head_dim
    assert [b.v_head_dim for b in both] != [u.v_head_dim for u in uniform]  # V/O widths did move
    assert both[0].v_head_dim == both[29].v_head_dim == SMOL.head_dim


def test_kl_prune_end_to_end(src, tmp_path):
    out = tmp_path / "kl"
    report = prune(str(src), output=out, config=PruneConfig(sparsity=0.25, align=8, v_align=4, allocation="kl",
                                                             kl_alpha=1.0, kl_samples=4, spare_ends=False),
                   calibration_ids=_ids(), progress=False)
    kl = report["sensitivity_kl"]
    assert len(kl) == 4 and all(v > 0 for v in kl)
    assert abs(report["sparsity"]["achieved"] - 0.25) <= 0.005
    widths = [layer["intermediate_size"] for layer in report["layers"]]
    order = sorted(range(4), key=lambda i: kl[i])
    assert widths[order[-1]] >= widths[order[0]]  # the most sensitive layer keeps at least as much
    assert report["timings"]["dense_pass_s"] > 0 and report["dense_pass"]["sensitivity"]
    assert 0 < report["timings"]["sensitivity_probes_s"] < report["timings"]["dense_pass_s"]
    cfg = json.loads((out / "config.json").read_text())
    assert [s.intermediate_size for s in OlicaSpec.from_config(cfg).layers] == widths


def test_kl_refusals(src, tmp_path, capsys):
    with pytest.raises(PruneError, match="kl allocation is an olica option"):
        PruneConfig(sparsity=0.2, method="wanda-sp", allocation="kl")
    with pytest.raises(PruneError, match="kl-alpha"):
        PruneConfig(sparsity=0.2, allocation="kl", kl_alpha=-1)
    with pytest.raises(PruneError, match="kl-samples"):
        PruneConfig(sparsity=0.2, allocation="kl", kl_samples=0)
    rc = cli_main(["prune", str(src), "--sparsity", "0.2", "--allocation", "kl", "--kl-alpha", "-0.5",
                   "--output", str(tmp_path / "x"), "--calibration", "pydoc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "kl-alpha" in err[0], err
    assert not (tmp_path / "x").exists()


def test_default_alpha_follows_sparsity_and_model_size():
    # 1 up to 30 %, linear to 0.25 at 50 %, flat after: the dev grid's choice
    assert [default_kl_alpha(s) for s in (0.05, 0.2, 0.3)] == [1.0, 1.0, 1.0]
    assert default_kl_alpha(0.4) == pytest.approx(0.625)
    assert default_kl_alpha(0.5) == default_kl_alpha(0.7) == 0.25
    alphas = [default_kl_alpha(s / 100) for s in range(1, 91)]
    assert all(a >= b for a, b in zip(alphas, alphas[1:]))  # never rises with sparsity
    # three times as sharp from 250 M parameters (Qwen-0.5B and -1.5B on dev), unchanged below (SmolLM2-135M)
    assert default_kl_alpha(0.2, 134_515_008) == 1.0
    assert default_kl_alpha(0.2, 249_999_999) == 1.0
    assert default_kl_alpha(0.2, 250_000_000) == 3.0
    assert default_kl_alpha(0.5, 1_777_000_000) == 0.75
    # PruneConfig leaves an unset alpha to for_model(), which fills it from sparsity and size; a given one is kept
    assert PruneConfig(sparsity=0.2).kl_alpha is None
    assert PruneConfig(sparsity=0.2).for_model(134_515_008).kl_alpha == 1.0
    assert PruneConfig(sparsity=0.2).for_model(494_032_768).kl_alpha == 3.0
    assert PruneConfig(sparsity=0.5).for_model(100).kl_alpha == 0.25
    assert PruneConfig(sparsity=0.5, kl_alpha=2.0).for_model(10**9).kl_alpha == 2.0
    assert PruneConfig(sparsity=0.5, kl_alpha=0.0).for_model(10**9).kl_alpha == 0.0  # 0 (uniform) is a value


def test_prune_fills_an_unset_alpha_from_the_model_size(src, tmp_path, monkeypatch):
    import olica_prune.method.budget as budget

    def widths_and_alpha(name, **kw):
        report = prune(str(src), output=tmp_path / name, progress=False, calibration_ids=_ids(),
                       config=PruneConfig(sparsity=0.25, align=8, v_align=4, kl_samples=4, spare_ends=False, **kw))
        return [layer["intermediate_size"] for layer in report["layers"]], report["config"]["kl_alpha"]

    small, small_alpha = widths_and_alpha("small")
    assert small_alpha == 1.0  # the tiny model is below LARGE_MODEL_PARAMS
    monkeypatch.setattr(budget, "LARGE_MODEL_PARAMS", 1)  # every model counts as large
    large, large_alpha = widths_and_alpha("large")
    assert large_alpha == 3.0
    assert widths_and_alpha("explicit", kl_alpha=3.0) == (large, 3.0)
    assert large != small  # the sharper alpha moved FFN width between layers


def test_cli_leaves_an_unset_alpha_to_the_pruner(monkeypatch, tmp_path):
    import olica_prune.method.pruner as pruner

    seen = []
    monkeypatch.setattr(pruner, "prune", lambda model, *, config, **kw: seen.append(config) or {})
    monkeypatch.setattr(pruner, "summary_line", lambda report: "")
    for sparsity, alpha in (("0.5", []), ("0.2", []), ("0.5", ["--kl-alpha", "2"])):
        assert cli_main(["prune", "m", "--sparsity", sparsity, "--output", str(tmp_path / "x"), *alpha]) == 0
    assert [(c.allocation, c.kl_alpha) for c in seen] == [("kl", None), ("kl", None), ("kl", 2.0)]
