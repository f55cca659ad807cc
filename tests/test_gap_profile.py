"""The decode-step profile (bench/gap_profile.py): its bookkeeping, and that its
module labels still match the modules vLLM builds (a renamed module would
otherwise profile as zero time)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))
_spec = importlib.util.spec_from_file_location("bench_gap_profile", BENCH / "gap_profile.py")
gap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gap)


def _ev(key, ms):
    return SimpleNamespace(key=key, cpu_time_total=ms * 1e3)  # profiler totals are in microseconds


def test_categorize_takes_leaves_and_parents_own_time():
    events = [_ev("olica_leaf::qkv", 10), _ev("olica_leaf::attention", 5), _ev("olica_leaf::o_proj", 4),
              _ev("olica_leaf::rope", 1), _ev("olica_parent::attn_glue", 23),
              _ev("olica_leaf::gate_up", 8), _ev("olica_leaf::down", 6), _ev("olica_parent::mlp_glue", 16),
              _ev("olica_model::layers", 50), _ev("aten::mm", 999)]
    c = gap.categorize(events)
    assert c["qkv"] == pytest.approx(0.010) and c["act"] == 0.0
    assert c["attn_glue"] == pytest.approx(0.023 - 0.020)  # the parent's time outside its leaves
    assert c["mlp_glue"] == pytest.approx(0.016 - 0.014)
    assert c["_model_forward"] == pytest.approx(0.050)


def test_gap_parts_sum_to_the_gap():
    dense = {c: 0.0 for c in gap.CATEGORIES} | {"gate_up": 4.0, "down": 2.0, "attention": 1.0, "lm_head": 1.0,
                                                 "outside_model": 2.0}
    olica = dict(dense) | {"gate_up": 2.5, "down": 1.3}  # only the FFN shrank
    steps = {"dense": dense, "olica": olica, "native": dict(olica) | {"gate_up": 2.4}}
    params = {"dense": 100, "olica": 80, "native": 80}
    g = gap.gap_table(steps, params)
    t_dense, t_olica = sum(dense.values()), sum(olica.values())
    assert g["ideal_speedup"] == pytest.approx(1.25)
    assert g["profiled_speedup"] == pytest.approx(t_dense / t_olica)
    assert g["achieved_fraction_of_ideal"] == pytest.approx(t_dense / t_olica / 1.25)
    assert sum(g["gap_parts_ms_per_step"].values()) == pytest.approx(g["gap_ms_per_step"])
    assert g["gap_ms_per_step"] == pytest.approx((t_olica - 0.8 * t_dense) * 1e3)
    # attention did not shrink: its part is what ideal scaling would have removed
    assert g["gap_parts_ms_per_step"]["attention"] == pytest.approx(0.2 * 1e3)
    assert g["olica_minus_native_ms_per_step"]["gate_up"] == pytest.approx(100.0)
    assert "| **total** |" in gap.markdown({"decode_step_ms": {k: {c: v * 1e3 for c, v in s.items()}
                                                               for k, s in steps.items()}, "gap": g})


def test_instrument_labels_modules_and_keeps_outputs():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.o_proj(self.qkv_proj(x))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attn()

        def forward(self, x):
            return self.self_attn(x)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(Layer(), Layer())

        def forward(self, x):
            return self.model(x)

    m = Outer()
    x = torch.randn(3, 8)
    want = m(x)
    assert gap.instrument(m) == 6  # 2 x (self_attn, qkv_proj, o_proj)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = m(x)
    assert torch.equal(got, want)
    c = gap.categorize(prof.key_averages())
    assert c["qkv"] > 0 and c["o_proj"] > 0 and c["_model_forward"] >= c["qkv"] + c["o_proj"]


@pytest.mark.vllm
def test_every_gemm_category_is_seen_in_vllm(tmp_path):
    """A tiny Olica checkpoint through the real engine: the labelled modules exist and take time."""
    from tinymodels import tiny_checkpoint_with_real_tokenizer

    ckpt = tiny_checkpoint_with_real_tokenizer(tmp_path / "ckpt")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([[100 + i + j for j in range(16)] for i in range(4)]))
    spec = {"prompts": str(prompts), "output_len": 4, "dtype": "bfloat16", "max_model_len": 64}
    r = gap.run_engine("olica", ckpt, spec, tmp_path, "olica", script=gap.__file__)
    # 2 layers x (self_attn, qkv, q_b, o_proj, attn, rope, mlp, gate_up, down, 2 norms) + final norm,
    # embed, logits; layer 1 has a calibration branch (no act_fn used) but the module exists
    assert r["wrapped_modules"] >= 2 * 10 + 3
    step = gap.decode_step(r, 4)
    for c in ("qkv", "o_proj", "gate_up", "down", "lm_head", "attention"):
        assert r["full"][c] > 0, c
    # the layers' GEMMs run inside the model's forward; the logits GEMM (lm_head) runs after it
    assert r["full"]["_model_forward"] > sum(r["full"][c] for c in gap.GEMMS if c != "lm_head")
    assert set(step) == set(gap.CATEGORIES)
