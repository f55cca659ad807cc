"""Recovery (olica recover / prune --recover): end-to-end fit of a pruned model to its dense model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from olica_prune.cli import main
from olica_prune.model.modeling import load_causal_lm
from olica_prune.method.pruner import PruneConfig, prune
from olica_prune.method.recover import RecoverConfig, RecoveryError, mean_kl, recover
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config

VOCAB = 256
SEQ = 32
FAST = dict(num_samples=72, seq_len=SEQ, heldout=16, batch_size=8, eval_every=2, patience=3, device="cpu")


def _ids(n: int, seed: int) -> torch.LongTensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny dense model (head size 32, which vLLM's CPU attention takes) and its 25 % prune."""
    import test_vllm_model as tv

    root = tmp_path_factory.mktemp("recover")
    cfg = tiny_config(hidden_size=64, head_dim=32, intermediate_size=256, num_layers=4, vocab_size=VOCAB)
    dense = save_model_checkpoint(tv.scale_weights(random_dense_model(cfg, seed=3), seed=4), root / "dense")
    prune(str(dense), output=root / "pruned", progress=False, calibration_ids=_ids(64, 0),
          config=PruneConfig(sparsity=0.25, align=8, v_align=8, allocation="uniform", spare_ends=False))
    return dense, root / "pruned"


def _planted(pruned_dir: Path, out: Path) -> Path:
    """The pruned checkpoint with every layer's norms scaled by 0.6: an error that compounds."""
    import shutil

    shutil.copytree(pruned_dir, out)
    f = out / "model.safetensors"
    tensors = load_file(f)
    for name in tensors:
        if "layernorm" in name:
            tensors[name] = tensors[name] * 0.6
    save_file(tensors, f, metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_recovery_undoes_a_planted_compounding_error(pruned, tmp_path, hidden_weight):
    dense, pruned_dir = pruned
    planted = _planted(pruned_dir, tmp_path / "planted")
    ids = _ids(72, 1)
    section = recover(planted, output=tmp_path / "rec", reference=str(dense), progress=False, calibration_ids=ids,
                      config=RecoverConfig(params="norms", lr=0.05, epochs=6, hidden_weight=hidden_weight, **FAST))
    assert section["applied"]
    kl = section["heldout_kl"]
    # measured: 3.33 -> 1.18 nats/token with the KL alone, -> 1.17 with the hidden-state term too
    # (the unplanted prune sits at 1.59 on these random tokens)
    assert kl["after"] < 0.5 * kl["before"], kl
    teacher, heldout = load_causal_lm(dense), ids[-FAST["heldout"]:]
    written = mean_kl(load_causal_lm(tmp_path / "rec"), teacher, heldout, batch_size=8)
    assert written == pytest.approx(kl["after"], rel=1e-4)  # what is on disk is the best step
    report = json.loads((tmp_path / "rec" / "olica_report.json").read_text())
    assert report["recovery"]["trained_tensors"] == 2 * 4 + 1  # two norms per layer and the final one
    assert report["recovery"]["tokens"]["heldout"] == FAST["heldout"] * SEQ
    # the tensors recovery did not fit are written byte for byte
    before, after = load_file(planted / "model.safetensors"), load_file(tmp_path / "rec" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]) == ("layernorm" not in name and name != "model.norm.weight")


@pytest.mark.parametrize("backoff", [True, False])
def test_a_learning_rate_too_high_is_backed_off(pruned, tmp_path, backoff):
    dense, pruned_dir = pruned
    planted = _planted(pruned_dir, tmp_path / "planted")
    section = recover(planted, output=tmp_path / "rec", reference=str(dense), progress=False,
                      calibration_ids=_ids(72, 1),
                      config=RecoverConfig(params="norms", lr=0.9, epochs=6, backoff=backoff, **FAST))
    kl = section["heldout_kl"]
    if backoff:  # measured: 3.33 -> 1.22 nats/token, the learning rate halved three times
        assert section["applied"] and kl["after"] < 0.5 * kl["before"], kl
        assert section["history"][-1]["lr"] < 0.9 / 4
    else:  # measured: every evaluation worse than the start (6.1, 5.3, 5.7)
        assert not section["applied"]


def test_divergent_fit_keeps_the_unrecovered_weights(pruned, tmp_path, capsys):
    dense, pruned_dir = pruned
    section = recover(pruned_dir, output=tmp_path / "rec", reference=str(dense), progress=False,
                      calibration_ids=_ids(72, 2),
                      config=RecoverConfig(params="all", lr=0.9, epochs=2, max_grad_norm=1e6, **FAST))
    assert not section["applied"]
    assert section["heldout_kl"]["after"] == section["heldout_kl"]["before"]
    assert "un-recovered weights are written unchanged" in capsys.readouterr().err
    before, after = load_file(pruned_dir / "model.safetensors"), load_file(tmp_path / "rec" / "model.safetensors")
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_recovered_checkpoint_has_the_same_logits_in_transformers_and_vllm(pruned, tmp_path):
    import test_vllm_model as tv

    dense, pruned_dir = pruned
    out = tmp_path / "rec"
    recover(_planted(pruned_dir, tmp_path / "planted"), output=out, reference=str(dense), progress=False,
            calibration_ids=_ids(72, 1), config=RecoverConfig(params="norms", lr=0.05, epochs=6, **FAST))
    assert json.loads((out / "olica_report.json").read_text())["recovery"]["applied"]
    ref = tv.transformers_greedy(out)
    assert tv.min_top2_gap(ref) > tv.MIN_DECISIVE_GAP
    worst = tv.assert_runs_close(ref, tv.vllm_greedy(out), ref_name="transformers", got_name="vLLM")
    assert worst < 1e-3


def test_prune_with_recover_and_its_interruption(pruned, tmp_path, monkeypatch):
    import olica_prune.method.recover as rec

    dense, _ = pruned
    out = tmp_path / "out"
    monkeypatch.setattr(rec, "_calibration", lambda *a, **k: _ids(40, 5))  # the text recovery would sample

    def run():
        return prune(str(dense), output=out, progress=False, calibration_ids=_ids(64, 0),
                     config=PruneConfig(sparsity=0.25, align=8, v_align=8),
                     recover=RecoverConfig(params="norms", **{**FAST, "num_samples": 40}))

    real_fit = rec.fit

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rec, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # nothing, not even the staged prune
    monkeypatch.setattr(rec, "fit", real_fit)
    report = run()
    on_disk = json.loads((out / "olica_report.json").read_text())
    assert on_disk["recovery"]["tokens"]["train"] == (40 - FAST["heldout"]) * SEQ
    assert on_disk["method"] == "olica" and on_disk["recovery"]["heldout_kl"] == report["recovery"]["heldout_kl"]
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("args, message", [
    (["--recover-params", "norms+wings"], "unknown recovery parameter set"),
    (["--recover-lr", "3"], "learning rate"),
    (["--recover-samples", "10"], "at least heldout + batch_size"),
    (["--recover-hidden-weight", "-1"], "hidden-state weight must be >= 0"),
])
def test_bad_recovery_settings_are_one_line(pruned, tmp_path, capsys, args, message):
    dense, pruned_dir = pruned
    code = main(["recover", str(pruned_dir), "--reference", str(dense), "-o", str(tmp_path / "never"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("olica: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_recover_refuses_a_dense_checkpoint(pruned, tmp_path):
    dense, _ = pruned
    with pytest.raises(RecoveryError, match="not an Olica checkpoint"):
        recover(dense, output=tmp_path / "x", reference=str(dense), progress=False)


def test_prune_and_recover_sample_the_self_text_once(pruned, tmp_path, monkeypatch):
    """With both on ``self``, one sampling run serves both: the prune gets its first rows."""
    import olica_prune.method.pruner as pr
    import olica_prune.method.recover as rec

    dense, _ = pruned
    stream = _ids(48, 9)
    asked = []
    monkeypatch.setattr(pr, "_calibration_ids", lambda src, config, num_samples, **k: asked.append(num_samples)
                        or stream[:num_samples])
    monkeypatch.setattr(pr.preflight, "check_tokenizer", lambda src: None)  # the tiny model has none
    monkeypatch.setattr(rec, "_calibration", lambda *a, **k: pytest.fail("recovery sampled a second time"))
    seen = {}
    real_recover = rec.recover

    def spy(*a, calibration_ids=None, **k):
        seen["recover_ids"] = calibration_ids
        return real_recover(*a, calibration_ids=calibration_ids, **k)

    monkeypatch.setattr(rec, "recover", spy)
    report = prune(str(dense), output=tmp_path / "out", progress=False,
                   config=PruneConfig(sparsity=0.25, align=8, v_align=8, num_samples=40, seq_len=SEQ),
                   recover=RecoverConfig(params="norms", **{**FAST, "num_samples": 48}))
    assert asked == [48]
    assert torch.equal(seen["recover_ids"], stream)
    assert report["recovery"]["tokens"]["train"] == (48 - FAST["heldout"]) * SEQ
    spec = json.loads((tmp_path / "out" / "config.json").read_text())["olica"]
    assert spec["calibration"] == {"dataset": "self", "num_samples": 40, "seq_len": SEQ, "seed": 0}


@pytest.mark.parametrize("args, recovers", [
    ([], True),  # the default (chosen on dev at 10/20/30 %)
    (["--no-recover"], False),
    (["--preset", "paper"], False),  # the paper's retraining-free method
    (["--preset", "paper", "--recover"], True),
    (["--method", "wanda-sp"], False),  # baselines stay as published
])
def test_cli_recovers_by_default(monkeypatch, tmp_path, args, recovers):
    import olica_prune.method.pruner as pr

    seen = []
    monkeypatch.setattr(pr, "prune", lambda model, *, recover, **kw: seen.append(recover) or {})
    monkeypatch.setattr(pr, "summary_line", lambda report: "")
    assert main(["prune", "m", "--sparsity", "0.2", "--output", str(tmp_path / "x"), *args]) == 0
    assert (seen[0] is not None) == recovers
    if recovers:  # the CLI's defaults are the library's; only the default-on run may skip a recovery too large
        assert seen[0] == RecoverConfig(skip_if_too_large=not args)


def _prune_recover(dense, out, **recover):
    return prune(str(dense), output=out, progress=False, calibration_ids=_ids(64, 0),
                 config=PruneConfig(sparsity=0.25, align=8, v_align=8),
                 recover=RecoverConfig(params="norms", **{**FAST, "num_samples": 40, **recover}))


def test_recovery_too_large_for_memory_fails_first_or_is_skipped(pruned, tmp_path, monkeypatch, capsys):
    import olica_prune.method.recover as rec

    dense, _ = pruned
    monkeypatch.setattr(rec, "_calibration", lambda *a, **k: _ids(40, 5))
    monkeypatch.setattr(rec, "memory_free", lambda device: 1 << 20)  # 1 MiB free
    with pytest.raises(RecoveryError, match=r"recovery needs about .* GiB, 0.0 GiB is free on cpu; .*--no-recover"):
        _prune_recover(dense, tmp_path / "asked")
    assert not (tmp_path / "asked").exists() and not list(tmp_path.glob(".asked*"))
    report = _prune_recover(dense, tmp_path / "default", skip_if_too_large=True)
    assert "skipping recovery" in capsys.readouterr().err
    assert "recovery" not in report and (tmp_path / "default" / "config.json").is_file()


def test_standalone_recovery_too_large_fails_first(pruned, tmp_path, monkeypatch, capsys):
    import olica_prune.method.recover as rec

    dense, pruned_dir = pruned
    monkeypatch.setattr(rec, "memory_free", lambda device: 1 << 20)  # 1 MiB free
    code = main(["recover", str(pruned_dir), "--reference", str(dense), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "recovery needs about" in err[0] and "0.0 GiB is free" in err[0]
    assert not (tmp_path / "out").exists()


def test_out_of_memory_during_recovery_keeps_the_prune(pruned, tmp_path, monkeypatch, capsys):
    import olica_prune.method.recover as rec

    dense, _ = pruned
    monkeypatch.setattr(rec, "_calibration", lambda *a, **k: _ids(40, 5))

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(rec, "fit", oom)
    out = tmp_path / "out"
    report = _prune_recover(dense, out)
    assert "recovery failed, out of memory" in capsys.readouterr().err
    on_disk = json.loads((out / "olica_report.json").read_text())
    assert on_disk["recovery"] == report["recovery"] == {"applied": False, "failed": "out of memory (OutOfMemoryError)"}
    assert load_causal_lm(out) is not None and not list(tmp_path.glob(".out.*"))


def test_memory_estimate_scales_with_the_model():
    from olica_prune.contract import ModelDims
    from olica_prune.method.recover import memory_needed

    smol = ModelDims(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536,
                     num_layers=30, vocab_size=49152, tie_word_embeddings=True)
    llama7 = ModelDims(hidden_size=4096, num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=11008,
                       num_layers=32, vocab_size=32000, tie_word_embeddings=False)
    cfg = RecoverConfig()
    assert 2 << 30 < memory_needed(smol, 107_475_264, cfg) < 8 << 30  # SmolLM2-135M at 20 %
    assert memory_needed(llama7, 5_400_000_000, cfg) > 100 << 30  # a 7B: more than one 80 GB card


def test_hidden_error_is_the_per_token_relative_error_averaged_over_layers():
    from olica_prune.method.recover import hidden_error

    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    teacher[1][0, 0] *= 1000  # a token with huge activations weighs as much as any other
    assert hidden_error(teacher, teacher).item() == 0.0
    # layer 1 off by 10 % of itself everywhere, layer 2 by 30 %; layer 0 (embeddings) is ignored
    student = [teacher[0] + 5, teacher[1] * 1.1, teacher[2] * 0.7]
    assert hidden_error(student, teacher).item() == pytest.approx((0.1 ** 2 + 0.3 ** 2) / 2, rel=1e-5)
