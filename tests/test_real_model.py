"""The real bundled model (SmolLM2-135M) pruned at 20 %: quality against the baselines.

Perplexity on the held-out part of CPython's pydoc prose (non-overlapping
128-token chunks); calibration on the disjoint calibration part (128 x 128).
"""

import json

import pytest
import torch

from olica_prune.contract import OlicaSpec
from olica_prune.data import eval_chunks
from olica_prune.evaluate import perplexity, token_agreement
from olica_prune.modeling import load_causal_lm
from olica_prune.sources import resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chunks():
    from transformers import AutoTokenizer

    return eval_chunks(AutoTokenizer.from_pretrained(str(resolve_model("smollm2-135m"))), "pydoc", seq_len=128)


def test_olica_beats_both_baselines_at_20_percent(real_prunes, chunks, capsys):
    torch.set_grad_enabled(False)
    dense = load_causal_lm(resolve_model("smollm2-135m"))
    ppl = {"dense": perplexity(dense, chunks, progress=False)}
    agree = {}
    for method in ("olica", "wanda-sp", "magnitude"):
        path = real_prunes.get(method)
        model = load_causal_lm(path)
        ppl[method] = perplexity(model, chunks, progress=False)
        agree[method] = token_agreement(model, dense, chunks[:40])
        achieved = json.loads((path / "config.json").read_text())["olica"]["sparsity"]["achieved"]
        assert abs(achieved - 0.2) <= 0.005
    with capsys.disabled():
        print(f"\nSmolLM2-135M at 20 % sparsity, pydoc held-out PPL (seq-len 128, {chunks.shape[0]} chunks): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items())
              + "; top-1 agreement with dense: " + ", ".join(f"{k} {v:.3f}" for k, v in agree.items()))
    assert ppl["olica"] < ppl["wanda-sp"]
    assert ppl["olica"] < ppl["magnitude"]
    assert ppl["dense"] < ppl["olica"]  # pruning without retraining does cost something


def test_olica_checkpoint_is_well_formed(real_prunes):
    path = real_prunes.get("olica")
    cfg = json.loads((path / "config.json").read_text())
    spec = OlicaSpec.from_config(cfg)
    report = json.loads((path / "olica_report.json").read_text())
    assert len(report["layers"]) == len(spec.layers) == 30
    assert all(layer.intermediate_size % 32 == 0 for layer in spec.layers)
    assert any(layer.calibration_rank for layer in spec.layers)
    assert (path / "tokenizer.json").is_file() and (path / "generation_config.json").is_file()
