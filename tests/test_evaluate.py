"""Perplexity and token agreement: closed-form answers, then the CLI end to end."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from olica_prune.eval.evaluate import eval_main, perplexity, token_agreement
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config

V = 50


class NextTokenModel(nn.Module):
    """Logit ``confidence`` on ``(x + step(x)) % V``, 0 elsewhere; step 1, or 2 for odd x when ``odd_step``."""

    def __init__(self, confidence: float, *, odd_step: bool = False) -> None:
        super().__init__()
        self.confidence, self.odd_step = confidence, odd_step

    def forward(self, input_ids, **kwargs):
        step = 1 + (input_ids % 2) * int(self.odd_step)
        logits = self.confidence * nn.functional.one_hot((input_ids + step) % V, V).float()
        return SimpleNamespace(logits=logits)  # [B, S, V]


def _counting_chunks(n=5, seq=12):
    # each next token is the current one + 1 (mod V)
    return (torch.arange(n * seq) % V).view(n, seq)


def test_uniform_logits_give_perplexity_v():
    ppl = perplexity(NextTokenModel(0.0), _counting_chunks(), progress=False)
    assert ppl == pytest.approx(V, rel=1e-7)  # float32 log-softmax: 1.9e-08 observed


@pytest.mark.parametrize("confidence", [0.5, 3.0, 10.0])
def test_known_probability_of_the_next_token(confidence):
    # p(next) = e^c / (e^c + V - 1) for every predicted token
    expected = (math.exp(confidence) + V - 1) / math.exp(confidence)
    ppl = perplexity(NextTokenModel(confidence), _counting_chunks(), batch_size=2, progress=False)
    assert ppl == pytest.approx(expected, rel=1e-6)


def test_agreement_closed_form():
    chunks = _counting_chunks(4, 10)
    assert token_agreement(NextTokenModel(1.0), NextTokenModel(5.0), chunks) == 1.0
    # the two disagree exactly on odd current tokens; the last position is not a prediction
    odd = (chunks[:, :-1] % 2 == 1).float().mean().item()
    got = token_agreement(NextTokenModel(1.0), NextTokenModel(1.0, odd_step=True), chunks, batch_size=3)
    assert got == pytest.approx(1 - odd)


@pytest.fixture(scope="module")
def tiny():
    return random_dense_model(tiny_config(vocab_size=256), seed=0)


def test_perplexity_matches_transformers_loss_and_ignores_batching(tiny):
    chunks = torch.randint(0, 256, (7, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf = math.exp(tiny(chunks, labels=chunks).loss.item())  # mean over all 7 × 19 predictions
    for batch_size in (1, 3, 8):
        assert perplexity(tiny, chunks, batch_size=batch_size, progress=False) == pytest.approx(hf, rel=1e-5)


def test_agreement_with_itself_is_one(tiny):
    chunks = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(1))
    assert token_agreement(tiny, tiny, chunks) == 1.0


def test_bad_chunks_shape(tiny):
    with pytest.raises(ValueError, match=r"\[n, seq_len >= 2\]"):
        perplexity(tiny, torch.zeros(16, dtype=torch.long), progress=False)


# -------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny Llama with the SmolLM2 tokenizer (vocab 49152), saved as a HF dir."""
    from olica_prune.io.sources import resolve_model

    smol = resolve_model("smollm2-135m")
    cfg = tiny_config(vocab_size=49152, num_layers=2)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model_checkpoint(random_dense_model(cfg, seed=2), path, tokenizer_dir=smol)
    return path


def test_eval_main_states_the_protocol(tiny_checkpoint, capsys):
    assert eval_main(["ppl", str(tiny_checkpoint), "--seq-len", "32", "--max-chunks", "3", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("perplexity ")
    assert "(pydoc held-out, seq-len 32, 3 chunks, 93 predicted tokens;" in line


def test_eval_main_json_with_reference(tiny_checkpoint, capsys):
    from transformers import AutoTokenizer

    from olica_prune.io.data import eval_chunks
    from olica_prune.model.modeling import load_causal_lm

    argv = ["ppl", str(tiny_checkpoint), "--seq-len", "16", "--max-chunks", "4", "--json",
            "--reference", str(tiny_checkpoint)]
    assert eval_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["token_agreement"] == 1.0
    assert (result["chunks"], result["predicted_tokens"], result["split"]) == (4, 60, "pydoc held-out")
    chunks = eval_chunks(AutoTokenizer.from_pretrained(str(tiny_checkpoint)), "pydoc", seq_len=16, max_chunks=4)
    direct = perplexity(load_causal_lm(tiny_checkpoint), chunks, progress=False)
    assert result["perplexity"] == pytest.approx(direct, rel=1e-6)
    # random weights over a 49152 vocabulary: near-uniform predictions
    assert 1e4 < result["perplexity"] < 2e5


def test_cli_reports_bad_text_source(tiny_checkpoint, capsys):
    from olica_prune.cli import main

    assert main(["eval", "ppl", str(tiny_checkpoint), "--text", "no/such/file.txt"]) == 2
    assert "olica: error: text source 'no/such/file.txt' not found" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_main_on_the_bundled_model(capsys):
    assert eval_main(["ppl", "smollm2-135m", "--seq-len", "128", "--max-chunks", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["perplexity"]) and result["predicted_tokens"] == 4 * 127


def test_eval_main_rejects_bad_counts(capsys):
    with pytest.raises(SystemExit) as exc:
        eval_main(["ppl", "smollm2-135m", "--max-chunks", "0"])
    assert exc.value.code == 2 and "--max-chunks must be at least 1" in capsys.readouterr().err
