"""--calibration self: windows sampled from the model itself, and mixed sources."""

from __future__ import annotations

import pytest
import torch

from olica_prune.io import selfcal
from olica_prune.method.pruner import calibration_mix
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config


@pytest.fixture(scope="module")
def tok():
    """SmolLM2's tokenizer, resolved before a test points OLICA_CACHE at its own folder
    (where the bundled model would be converted again: ~12 s)."""
    from transformers import AutoTokenizer

    from olica_prune.io.sources import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("smollm2-135m")))


def _model(tmp_path):
    path = tmp_path / "m"
    save_model_checkpoint(random_dense_model(tiny_config(vocab_size=49152, hidden_size=64, intermediate_size=128,
                                                         num_layers=2, tie_word_embeddings=True), seed=1), path)
    return path


def test_self_calibration_shape_determinism_and_cache(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    path = _model(tmp_path)
    a = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=0, progress=False, batch_size=4, engine="transformers")
    assert a.shape == (6, 32) and a.dtype == torch.long
    cached = list((tmp_path / "cache" / "selfcal").glob("*.pt"))
    assert len(cached) == 1
    # same settings: read from the cache; without the cache: the same tokens (seeded sampling)
    b = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=0, progress=False, batch_size=4, engine="transformers")
    c = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=0, progress=False, batch_size=4,
                                 use_cache=False, engine="transformers")
    assert torch.equal(a, b) and torch.equal(a, c)
    d = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=1, progress=False, batch_size=4,
                                 use_cache=False, engine="transformers")
    assert not torch.equal(a, d)
    # the stream holds chat prompts (the template's tokens) and EOS separators between samples
    flat = a.flatten().tolist()
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert im_start in flat and tok.eos_token_id in flat


def test_mixed_sources_share_the_windows(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    path = _model(tmp_path)
    ids = calibration_mix(path, tok, "self+pydoc", num_samples=5, seq_len=32, seed=0, device="cpu", progress=False,
                          sampler="transformers")
    assert ids.shape == (5, 32)
    own = selfcal.self_calibration(path, tok, num_samples=3, seq_len=32, seed=0, progress=False, engine="transformers")
    assert torch.equal(ids[:3], own)  # the first source takes the remainder
    from olica_prune.io.data import calibration_batches

    assert torch.equal(ids[3:], calibration_batches(tok, "pydoc", num_samples=2, seq_len=32, seed=0))


def test_mixed_sources_take_a_presampled_self_stream(tmp_path, tok):
    stream = torch.arange(10 * 32).view(10, 32)
    ids = calibration_mix(tmp_path, tok, "self+pydoc", num_samples=5, seq_len=32, seed=0, device="cpu",
                          progress=False, self_ids=stream)
    assert torch.equal(ids[:3], stream[:3])  # no model is loaded: tmp_path holds none


def test_vllm_engine_samples_the_same_kind_of_stream(tmp_path, monkeypatch, tok):
    """The vLLM engine (a child process) gives windows of the requested shape, built like the
    transformers engine's: chat-template prompts, EOS separators, tokens of the model's vocabulary;
    and it is cached under a key of its own."""
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m32"  # vLLM's CPU attention takes head sizes 32, 64, ..., not the default 16
    save_model_checkpoint(random_dense_model(tiny_config(vocab_size=49152, hidden_size=64, head_dim=32,
                                                         intermediate_size=128, num_layers=2,
                                                         tie_word_embeddings=True), seed=1), path)
    ids = selfcal.self_calibration(path, tok, num_samples=8, seq_len=32, seed=0, progress=False, engine="vllm")
    assert ids.shape == (8, 32) and ids.dtype == torch.long
    flat = ids.flatten().tolist()
    assert tok.convert_tokens_to_ids("<|im_start|>") in flat and tok.eos_token_id in flat
    assert 0 <= min(flat) and max(flat) < 49152
    # a random model samples near-uniform tokens: the sample is not one repeated token
    assert len(set(flat)) > 100
    hf = selfcal.self_calibration(path, tok, num_samples=8, seq_len=32, seed=0, progress=False, engine="transformers")
    assert len(list((tmp_path / "cache" / "selfcal").glob("*.pt"))) == 2
    assert not torch.equal(ids, hf)


def test_auto_engine_is_vllm_where_installed(monkeypatch):
    assert selfcal.choose_engine("auto") == "vllm"  # CI installs vLLM
    monkeypatch.setattr(selfcal.importlib.util, "find_spec", lambda name: None)
    assert selfcal.choose_engine("auto") == "transformers"
    with pytest.raises(ValueError, match="unknown sampling engine"):
        selfcal.choose_engine("llama.cpp")


def test_vllm_failure_is_one_line_naming_the_cause(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    path = _model(tmp_path)  # head size 16: vLLM's CPU attention refuses it
    with pytest.raises(selfcal.SamplerError, match="head_dim=16"):
        selfcal.self_calibration(path, tok, num_samples=4, seq_len=32, seed=0, progress=False, engine="vllm")


def test_auto_engine_falls_back_to_transformers(tmp_path, monkeypatch, tok, capsys):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    path = _model(tmp_path)

    def failing(*args, **kwargs):
        raise selfcal.SamplerError("self-calibration with vLLM failed (exit 1): RuntimeError: no")

    monkeypatch.setattr(selfcal, "_vllm_stream", failing)
    ids = selfcal.self_calibration(path, tok, num_samples=4, seq_len=32, seed=0, progress=False, engine="auto")
    assert "RuntimeError: no; sampling with transformers instead" in capsys.readouterr().err
    want = selfcal.self_calibration(path, tok, num_samples=4, seq_len=32, seed=0, progress=False,
                                    engine="transformers", use_cache=False)
    assert torch.equal(ids, want)
