"""bench/gpu_decode.py at the smoke size on CPU (its GPU run is the same code at 7B)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("gpu_decode", ROOT / "bench" / "gpu_decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_decode_measures_dense_and_olica_with_a_static_cache(tmp_path, monkeypatch):
    bench = _bench()
    seen = []
    real = bench.decode_tok_s

    def spy(model, **kw):
        seen.append((type(model).__name__, kw["batch"]))
        return real(model, **kw)

    monkeypatch.setattr(bench, "decode_tok_s", spy)
    out = tmp_path / "decode.json"
    assert bench.main(["--model", "tiny", "--device", "cpu", "--batch-sizes", "1", "3", "--prompt-len", "8",
                       "--new-tokens", "4", "--prefill-len", "16", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"dense", "olica-20"} and result["compile"] is False
    dense, olica = result["models"]["dense"], result["models"]["olica-20"]
    assert olica["params"] / dense["params"] == pytest.approx(1 - result["achieved"], abs=0.02)
    assert abs(result["achieved"] - 0.2) <= 0.005
    assert list(dense["decode_tok_s"]) == ["1", "3"] and all(v > 0 for v in olica["decode_tok_s"].values())
    assert seen == [("LlamaForCausalLM", 1), ("LlamaForCausalLM", 3), ("OlicaForCausalLM", 1),
                    ("OlicaForCausalLM", 3)]
    assert result["speedup"]["prefill"] == pytest.approx(dense["prefill_s"] / olica["prefill_s"])
    assert len(result["commit"]) == 40


def test_static_cache_generate_runs_on_an_olica_model_with_narrow_values():
    """The static cache sizes keys and values apart (v_head_dim < head_dim in Olica layers)."""
    import torch

    from olica_prune.contract import LayerSpec
    from tinymodels import random_olica_model, tiny_config

    cfg = tiny_config(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=64, num_layers=2)
    model = random_olica_model(cfg, [LayerSpec(q_rank=8, k_rank=None, v_head_dim=8, intermediate_size=32,
                                               calibration_rank=0)] * 2)
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        static = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
                                cache_implementation="static")
        dynamic = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(static, dynamic)
