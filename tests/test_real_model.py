"""The real bundled model (SmolLM2-135M) pruned at 20 %: quality against wanda-sp.

Perplexity on one DEV domain of the evaluation suite (``news``: Australian news
articles, non-overlapping 128-token chunks), never on the calibration text:
every method is calibrated with the default source (text sampled from the
model itself), so this measures what carries over to text the pruner never saw.
"""

import json

import pytest
import torch

from olica_prune.eval import suite
from olica_prune.contract import OlicaSpec
from olica_prune.io.data import eval_chunks
from olica_prune.eval.evaluate import perplexity, token_agreement
from olica_prune.model.modeling import load_causal_lm
from olica_prune.io.sources import resolve_model

pytestmark = pytest.mark.slow

DOMAIN = "news"
MAX_CHUNKS = 40
RISE_RATIO_BOUND = 0.6  # olica's PPL rise over dense at most this multiple of wanda-sp's


@pytest.fixture(scope="module")
def chunks():
    from transformers import AutoTokenizer

    assert DOMAIN in suite.DEV_DOMAINS  # the assertion below must never be made on a report domain
    tok = AutoTokenizer.from_pretrained(str(resolve_model("smollm2-135m")))
    return eval_chunks(tok, str(suite.text_dir() / f"{DOMAIN}.txt"), seq_len=128, max_chunks=MAX_CHUNKS)


def test_olica_beats_wanda_sp_at_20_percent(real_prunes, chunks, capsys):
    torch.set_grad_enabled(False)
    dense = load_causal_lm(resolve_model("smollm2-135m"))
    ppl = {"dense": perplexity(dense, chunks, progress=False)}
    agree = {}
    for method in ("olica", "wanda-sp"):  # not magnitude: its ~1e7 perplexity bounds nothing
        path = real_prunes.get(method)
        model = load_causal_lm(path)
        ppl[method] = perplexity(model, chunks, progress=False)
        agree[method] = token_agreement(model, dense, chunks[:20])
        achieved = json.loads((path / "config.json").read_text())["olica"]["sparsity"]["achieved"]
        assert abs(achieved - 0.2) <= 0.005
    rise = {m: ppl[m] - ppl["dense"] for m in ("olica", "wanda-sp")}
    with capsys.disabled():
        print(f"\nSmolLM2-135M at 20 % sparsity, dev domain {DOMAIN!r} PPL (seq-len 128, {chunks.shape[0]} chunks): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items())
              + f"; olica's rise / wanda-sp's = {rise['olica'] / rise['wanda-sp']:.3f}"
              + "; top-1 agreement with dense: " + ", ".join(f"{k} {v:.3f}" for k, v in agree.items()))
    assert ppl["dense"] < ppl["olica"]  # pruning without retraining does cost something
    assert rise["olica"] <= RISE_RATIO_BOUND * rise["wanda-sp"]
    assert agree["olica"] > agree["wanda-sp"]


def test_olica_checkpoint_is_well_formed(real_prunes):
    path = real_prunes.get("olica")
    cfg = json.loads((path / "config.json").read_text())
    spec = OlicaSpec.from_config(cfg)
    report = json.loads((path / "olica_report.json").read_text())
    assert len(report["layers"]) == len(spec.layers) == 30
    assert all(layer.intermediate_size % 32 == 0 for layer in spec.layers)
    assert any(layer.calibration_rank for layer in spec.layers)
    assert cfg["olica"]["calibration"]["dataset"] == "self"
    assert (path / "tokenizer.json").is_file() and (path / "generation_config.json").is_file()
