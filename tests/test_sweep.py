"""olica sweep: prune at several sparsities, report-domain perplexity and vLLM speed per point
(vllm serve + vllm bench serve through olica_serve.speed), sweep.json + a PNG chart, resumable."""

import json
import shutil

import numpy as np
import pytest

from olica_prune.eval import sweep as S
from olica_prune.cli import main
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config

# one pruned point: each point starts `vllm serve` and `vllm bench serve` (the suite's time)
COMMON = ["--sparsities", "0.2", "--methods", "olica", "--max-chunks", "2", "--input-len", "16",
          "--output-len", "8", "--enforce-eager", "--dtype", "float32", "--align", "8", "--v-align", "4",
          "--num-samples", "16", "--quiet"]
ARGS = [*COMMON, "--concurrency", "4"]


def read_png(path):
    """The PNG's RGBA pixels (matplotlib: a missing matplotlib fails the test)."""
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def has_colour(pixels, colour) -> bool:
    """Whether some pixel is ``colour`` (a matplotlib colour spec), to 1/255."""
    from matplotlib.colors import to_rgb

    return bool((np.abs(pixels[..., :3] - np.array(to_rgb(colour))) < 1.5 / 255).all(axis=-1).any())


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    from olica_prune.io.sources import resolve_model
    from olica_prune.io.writer import TOKENIZER_FILES

    path = tmp_path_factory.mktemp("sweep") / "dense"
    cfg = tiny_config(vocab_size=49152, hidden_size=64, head_dim=32, intermediate_size=2048, num_layers=4,
                      tie_word_embeddings=True, max_position_embeddings=512)
    save_model_checkpoint(random_dense_model(cfg, seed=7), path)
    src = resolve_model("smollm2-135m")
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and name != "generation_config.json":
            shutil.copy(src / name, path / name)
    return path


@pytest.mark.vllm
def test_sweep_writes_json_and_png_and_resumes(dense_dir, tmp_path, capsys, monkeypatch):
    import vllm  # noqa: F401  (a missing vLLM fails this test)

    # The pruned point is served and measured for real; the dense point's serving (the same
    # function on another checkpoint) is taken from a stand-in to spare the suite one more server.
    real_measure, served = S.measure_serving, []

    def dense_stand_in(ckpt, *, name, **kw):
        served.append(name)
        if name != "dense":
            return real_measure(ckpt, name=name, **kw)
        scenario = {"name": "c4", "input_len": 16, "output_len": 8, "concurrency": 4, "num_prompts": 8}
        return {"output_tok_s": 50.0, "serving": {"scenario": scenario, "output_throughput": 50.0,
                                                  "median_tpot_ms": 20.0}}

    monkeypatch.setattr(S, "measure_serving", dense_stand_in)
    out = tmp_path / "sweep"
    assert main(["sweep", str(dense_dir), "-o", str(out), *ARGS]) == 0
    assert served == ["dense", "olica-0.2"]
    printed = capsys.readouterr().out
    assert "olica 20%" in printed and "dense" in printed and "wrote" in printed
    result = json.loads((out / "sweep.json").read_text())
    points = {(p["method"], p["sparsity"]): p for p in result["points"]}
    assert set(points) == {("dense", 0.0), ("olica", 0.2)}
    for p in points.values():
        assert p["geomean_ppl"] > 1 and p["output_tok_s"] > 0 and p["commit"]
        assert set(p["ppl"]) >= {"literature", "chat", "code-c"}
        # measured by vllm bench serve: one decode scenario, 4 in flight, at least 8 requests
        assert p["serving"]["scenario"] == {"name": "c4", "input_len": 16, "output_len": 8, "concurrency": 4,
                                            "num_prompts": 8}
        assert p["output_tok_s"] == p["serving"]["output_throughput"] and p["serving"]["median_tpot_ms"] > 0
    assert result["settings"]["concurrency"] == 4 and result["settings"]["speed_tool"] == "vllm bench serve"
    assert (out / "logs" / "server-olica-0.2.log").is_file()
    assert abs(points["olica", 0.2]["achieved"] - 0.2) < 0.01
    assert points["dense", 0.0]["speedup"] == 1.0 and points["dense", 0.0]["ppl_ratio"] == 1.0
    assert points["olica", 0.2]["speedup"] == round(points["olica", 0.2]["output_tok_s"] / 50.0, 3)
    assert (out / "olica-0.2" / "config.json").is_file()  # checkpoints kept by default
    pixels = read_png(out / "sweep.png")
    assert pixels.shape[:2] == (600, 900)
    assert has_colour(pixels, "C0")  # the olica line and points are drawn

    # A rerun resumes: finished points are not measured again (--speed-prompts: the old name of --concurrency).
    def fail(*a, **k):
        raise AssertionError("a finished point was measured again")

    monkeypatch.setattr(S, "measure_serving", fail)
    monkeypatch.setattr(S, "measure_quality", fail)
    assert main(["sweep", str(dense_dir), "-o", str(out), *COMMON, "--speed-prompts", "4"]) == 0
    assert json.loads((out / "sweep.json").read_text())["points"] == result["points"]


def test_sweep_refuses_bad_lists_and_other_settings(dense_dir, tmp_path, capsys):
    assert main(["sweep", str(dense_dir), "-o", str(tmp_path / "a"), "--sparsities", "0.1,x"]) == 2
    assert "--sparsities" in capsys.readouterr().err
    assert main(["sweep", str(dense_dir), "-o", str(tmp_path / "b"), "--methods", "olica,best"]) == 2
    assert "--methods" in capsys.readouterr().err
    out = tmp_path / "c"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"settings": {"other": 1}, "points": []}))
    assert main(["sweep", str(dense_dir), "-o", str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0]


def test_chart_without_speed_points_is_still_a_png(tmp_path):
    S.chart({"model": "m", "points": [{"method": "dense", "sparsity": 0.0, "geomean_ppl": 10.0}]},
            tmp_path / "c.png")
    assert read_png(tmp_path / "c.png").shape[:2] == (600, 900)
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]  # no temporary file left


def test_chart_marks_dense_and_draws_each_method(tmp_path):
    points = [{"method": "dense", "sparsity": 0.0, "geomean_ppl": 20.0, "output_tok_s": 100.0}]
    for sp, tok_s, olica, wanda in [(0.1, 110.0, 21.0, 23.0), (0.3, 130.0, 26.0, 40.0)]:
        points += [{"method": "olica", "sparsity": sp, "geomean_ppl": olica, "output_tok_s": tok_s},
                   {"method": "wanda-sp", "sparsity": sp, "geomean_ppl": wanda, "output_tok_s": tok_s}]
    S.chart({"model": "m", "settings": {"input_len": 16, "output_len": 8, "concurrency": 4}, "points": points},
            tmp_path / "c.png")
    pixels = read_png(tmp_path / "c.png")
    assert has_colour(pixels, "C0") and has_colour(pixels, "C3") and has_colour(pixels, "black")
