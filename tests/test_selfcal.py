"""--calibration self: windows sampled from the model itself, and mixed sources."""

from __future__ import annotations

import torch

from olica_prune import selfcal
from olica_prune.pruner import calibration_mix
from olica_prune.testing import random_dense_model, save_model_checkpoint, tiny_config


def _model(tmp_path):
    from transformers import AutoTokenizer

    from olica_prune.sources import resolve_model

    path = tmp_path / "m"
    save_model_checkpoint(random_dense_model(tiny_config(vocab_size=49152, hidden_size=64, intermediate_size=128,
                                                         num_layers=2, tie_word_embeddings=True), seed=1), path)
    tok = AutoTokenizer.from_pretrained(str(resolve_model("smollm2-135m")))
    return path, tok


def test_self_calibration_shape_determinism_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    path, tok = _model(tmp_path)
    a = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=0, progress=False, batch_size=4)
    assert a.shape == (6, 32) and a.dtype == torch.long
    cached = list((tmp_path / "cache" / "selfcal").glob("*.pt"))
    assert len(cached) == 1
    # same settings: read from the cache; without the cache: the same tokens (seeded sampling)
    b = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=0, progress=False, batch_size=4)
    c = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=0, progress=False, batch_size=4,
                                 use_cache=False)
    assert torch.equal(a, b) and torch.equal(a, c)
    d = selfcal.self_calibration(path, tok, num_samples=6, seq_len=32, seed=1, progress=False, batch_size=4,
                                 use_cache=False)
    assert not torch.equal(a, d)
    # the stream holds chat prompts (the template's tokens) and EOS separators between samples
    flat = a.flatten().tolist()
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert im_start in flat and tok.eos_token_id in flat


def test_mixed_sources_share_the_windows(tmp_path, monkeypatch):
    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    path, tok = _model(tmp_path)
    ids = calibration_mix(path, tok, "self+pydoc", num_samples=5, seq_len=32, seed=0, device="cpu", progress=False)
    assert ids.shape == (5, 32)
    own = selfcal.self_calibration(path, tok, num_samples=3, seq_len=32, seed=0, progress=False)
    assert torch.equal(ids[:3], own)  # the first source takes the remainder
    from olica_prune.data import calibration_batches

    assert torch.equal(ids[3:], calibration_batches(tok, "pydoc", num_samples=2, seq_len=32, seed=0))


def test_mixed_sources_take_a_presampled_self_stream(tmp_path):
    from transformers import AutoTokenizer

    from olica_prune.sources import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model("smollm2-135m")))
    stream = torch.arange(10 * 32).view(10, 32)
    ids = calibration_mix(tmp_path, tok, "self+pydoc", num_samples=5, seq_len=32, seed=0, device="cpu",
                          progress=False, self_ids=stream)
    assert torch.equal(ids[:3], stream[:3])  # no model is loaded: tmp_path holds none
