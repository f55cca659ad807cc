"""The serving bench's arithmetic, summary, table and plot (bench/serving.py), on synthetic runs
and on the saved results."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))
_spec = importlib.util.spec_from_file_location("bench_serving", BENCH / "serving.py")
serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serving)
_spec = importlib.util.spec_from_file_location("bench_kv_cache", BENCH / "kv_cache.py")
kv_cache = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kv_cache)

from olica_prune.contract import LayerSpec, OlicaSpec  # noqa: E402
from olica_serve.speed import METRICS, Scenario, decode_scenario, prefill_scenario  # noqa: E402
from tinymodels import tiny_config  # noqa: E402

SAVED = sorted((BENCH / "results").glob("serving*.json"))


def read_png(path):
    """The PNG's RGBA pixels (matplotlib: a missing matplotlib fails the test)."""
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def has_colour(pixels, colour) -> bool:
    from matplotlib.colors import to_rgb

    return bool((np.abs(pixels[..., :3] - np.array(to_rgb(colour))) < 1.5 / 255).all(axis=-1).any())


def _olica_config(v_dims):
    cfg = tiny_config(family="llama", hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                      intermediate_size=128, num_layers=len(v_dims), vocab_size=256).to_dict()
    layers = [LayerSpec(q_rank=None, k_rank=None, v_head_dim=v, intermediate_size=96, calibration_rank=0)
              for v in v_dims]
    cfg["olica"] = OlicaSpec(source_architecture="LlamaForCausalLM", qkv_bias=False, layers=layers).to_dict()
    return cfg


def test_kv_bytes_count_the_padding_and_what_pruned_v_would_need():
    dense = tiny_config(family="llama", hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                        intermediate_size=128, num_layers=2, vocab_size=256).to_dict()
    kv = serving.kv_bytes_per_token(dense, 2)
    assert kv["allocated"] == 2 * 2 * 2 * 32 * 2 == kv["needed_with_pruned_v"] and kv["possible_saving"] == 0
    olica = serving.kv_bytes_per_token(_olica_config([16, 32]), 2)
    # K keeps 32 per KV head; V needs 16 + 32 over the two layers
    assert olica["allocated"] == 2 * 2 * 2 * 32 * 2
    assert olica["needed_with_pruned_v"] == 2 * (2 * 32 + 16 + 32) * 2
    assert olica["possible_saving"] == pytest.approx(1 - 112 / 128)
    # vLLM pads every layer's page to the widest layer (V 32 here): no saving
    assert olica["vllm_with_own_v_head_size"] == olica["allocated"] and olica["vllm_saving"] == 0
    narrow = serving.kv_bytes_per_token(_olica_config([16, 24]), 2)
    assert narrow["vllm_with_own_v_head_size"] == 2 * 2 * (32 + 24) * 2


@pytest.mark.parametrize("v_dims", [[16, 32], [16, 24], [24, 24, 8]])
def test_kv_bytes_with_own_v_head_size_follow_vllms_page_unification(v_dims):
    """The "vllm_with_own_v_head_size" arithmetic against vLLM's own KV cache
    manager (bench/kv_cache.py: per-layer specs with the pruned V widths,
    unified by vLLM's unify_kv_cache_spec_page_size)."""
    cfg = _olica_config(v_dims)
    assert kv_cache.vllm_unified_bytes(cfg, 2) == 2 * len(v_dims) * (32 + max(v_dims)) * 2
    assert serving.kv_bytes_per_token(cfg, 2)["vllm_with_own_v_head_size"] == kv_cache.vllm_unified_bytes(cfg, 2)


def _run(kind, rnd, tok_s, tpot):
    sc = {}
    for c in (1, 4):
        sc[f"c{c}"] = {"output_throughput": tok_s * c, "total_token_throughput": 2 * tok_s * c,
                       "request_throughput": 1.0, "median_ttft_ms": 100.0, "p99_ttft_ms": 200.0,
                       "median_tpot_ms": tpot, "p99_tpot_ms": tpot * 2, "median_itl_ms": tpot,
                       "p99_itl_ms": tpot * 2, "median_e2el_ms": 1000.0}
    sc["prefill"] = dict(sc["c1"], median_ttft_ms=500.0 / (tok_s / 10))
    return {"kind": kind, "round": rnd, "startup_s": 30.0, "kv_cache_tokens": 1000, "scenarios": sc}


def test_summary_takes_medians_and_speedups_and_the_plot_is_a_png(tmp_path):
    runs = [_run("dense", 0, 10.0, 50.0), _run("olica-20", 0, 12.0, 40.0),
            _run("dense", 1, 10.0, 52.0), _run("olica-20", 1, 13.0, 42.0), _run("dense", 2, 11.0, 51.0),
            _run("olica-20", 2, 12.5, 41.0)]
    s = serving.summarize(runs, ["dense", "olica-20"])
    assert s["dense"]["scenarios"]["c1"]["output_throughput"] == 10.0
    assert s["olica-20"]["scenarios"]["c4"]["output_throughput"] == 50.0
    assert s["olica-20"]["scenarios"]["c1"]["speedup_vs_dense"] == pytest.approx(1.25)
    assert s["olica-20"]["scenarios"]["c1"]["spread_output_throughput"] == [12.0, 13.0]
    assert s["olica-20"]["scenarios"]["prefill"]["prefill_speedup_vs_dense"] == pytest.approx(1.25)
    result = {"commit": "abc123", "summary": s,
              "settings": {"concurrency": [1, 4], "input_len": 128, "output_len": 128, "enforce_eager": False,
                           "dtype": "bfloat16", "rounds": 3},
              "models": {"dense": {"name": "dense", "params": 135e6}, "olica-20": {"name": "o", "params": 108e6}}}
    png = tmp_path / "serving.png"
    serving.plot(result, png)
    pixels = read_png(png)
    assert pixels.shape[1] > 600 and has_colour(pixels, "black") and has_colour(pixels, "C0")
    assert [p.name for p in tmp_path.iterdir()] == ["serving.png"]  # no temporary file left
    table = serving.markdown(result)
    assert "| olica-20 | 108.0 M | 1.25x | 12.5 (1.25x) | 50.0 (1.25x) |" in table


def test_the_bench_uses_the_shared_measurer_and_keeps_the_result_format():
    """bench/serving.py measures through olica_serve.speed; its scenarios, stored with
    dataclasses.asdict, have the keys (in order) of the saved results."""
    assert serving.METRICS is METRICS and serving.measure.__module__ == "olica_serve.speed"
    assert not hasattr(serving, "run_scenario") and not hasattr(serving, "_bench_cmd")
    assert dataclasses.asdict(decode_scenario(4, input_len=128, output_len=128, prompts_per_slot=2)) == {
        "name": "c4", "input_len": 128, "output_len": 128, "concurrency": 4, "num_prompts": 8}
    assert dataclasses.asdict(prefill_scenario(1024, 4)) == {
        "name": "prefill", "input_len": 1024, "output_len": 1, "concurrency": 1, "num_prompts": 4}
    assert SAVED
    for path in SAVED:
        for sc in json.loads(path.read_text())["settings"]["scenarios"]:
            assert list(dataclasses.asdict(Scenario(**sc)).items()) == list(sc.items()), path.name


@pytest.mark.parametrize("path", SAVED, ids=lambda p: p.name)
def test_replot_draws_the_chart_of_a_saved_result(path, tmp_path):
    """``--replot JSON`` draws from a saved result alone (no vLLM): dense in black, the pruned
    models in matplotlib's colour cycle."""
    png = tmp_path / "replot.png"
    assert serving.main(["--replot", str(path), "--plot", str(png)]) == 0
    pixels = read_png(png)
    assert pixels.shape[:2] == (580, 1300)
    assert has_colour(pixels, "black") and has_colour(pixels, "C0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replot.png"]


@pytest.mark.vllm
def test_a_preloaded_client_runs_the_command_and_a_failed_run_is_named(tmp_path):
    """vLLM's benchmark client (preloaded, as while a server starts) against a port where no
    server listens: measure() raises with the log's tail, and the log starts with the command."""
    from olica_serve import speed
    from olica_prune.io.sources import resolve_model

    class NoServer:
        base_url = "http://127.0.0.1:9"  # the discard port: nothing answers

    speed.preload()
    with pytest.raises(RuntimeError, match=r"nowhere-c2: 0 of 8 requests completed"):
        speed.measure(NoServer(), "nowhere", resolve_model("smollm2-135m"),
                      decode_scenario(2, input_len=8, output_len=4), workdir=tmp_path)
    assert not speed._preloaded  # the preloaded client was the one used
    log = (tmp_path / "nowhere-c2.log").read_text()
    assert log.startswith("$ ") and " bench serve " in log and "--max-concurrency 2" in log
    assert "All requests failed" in log  # the client's own output
