"""Bad input is refused before any work: exit 2, one line, no traceback, no output.
And nothing a user had is lost: killed runs, full disks, --output pointing at the source."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from olica_prune.io import writer as W
from olica_prune.cli import main
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--align", "8", "--v-align", "4", "--num-samples", "16", "--seq-len", "64", "--quiet", "--sampler", "transformers",
        "--no-recover"]


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("preflight") / "dense"
    save_model_checkpoint(random_dense_model(tiny_config(vocab_size=49152, hidden_size=64, intermediate_size=1024,
                                                         num_layers=4, tie_word_embeddings=True), seed=5), path)
    from olica_prune.io.sources import resolve_model
    from olica_prune.io.writer import TOKENIZER_FILES

    src = resolve_model("smollm2-135m")
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and name != "generation_config.json":
            shutil.copy(src / name, path / name)
    return path


def _variant(dense_dir, tmp_path, edit=None, **config):
    d = tmp_path / "src"
    shutil.copytree(dense_dir, d)
    if config:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(config)
        (d / "config.json").write_text(json.dumps(cfg))
    if edit:
        edit(d)
    return d


def _refused(capsys, argv, out, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("olica: error:"), err
    assert message in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a temporary directory was left behind"
    return lines[0]


def _truncate(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _drop_tokenizer(d):
    for f in W.TOKENIZER_FILES:
        (d / f).unlink(missing_ok=True)


def _drop_embeddings(d):
    t = load_file(d / "model.safetensors")
    del t["model.embed_tokens.weight"]
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})


def _fp8_weights(d):
    # FP8 weights without a quantization_config (scales lost): read as floats they are garbage
    t = load_file(d / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    t[name] = t[name].to(torch.float8_e4m3fn)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})


def _garbage_config(d):
    (d / "config.json").write_text("{not json")


SOURCES = {
    "truncated safetensors": (dict(edit=_truncate), "truncated or corrupt"),
    "FP8 quantization_config": (dict(quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"}),
                                "quantized checkpoint (quantization_config: fp8)"),
    "compressed-tensors": (dict(quantization_config={"quant_method": "compressed-tensors", "format": "int-quantized"}),
                           "unquantized release"),
    "AWQ": (dict(quantization_config={"quant_method": "awq", "bits": 4}), "quantization_config: awq"),
    "GPTQ": (dict(quantization_config={"quant_method": "gptq", "bits": 4}), "quantization_config: gptq"),
    "bitsandbytes": (dict(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}),
                     "quantization_config: bitsandbytes"),
    "FP8 tensors": (dict(edit=_fp8_weights), "F8_E4M3 (quantized)"),
    "no tokenizer": (dict(edit=_drop_tokenizer), "has no tokenizer"),
    "unknown model_type": (dict(model_type="falcon", architectures=["FalconForCausalLM"]), "is not supported"),
    "remote code": (dict(model_type="mymodel", architectures=["MyForCausalLM"],
                         auto_map={"AutoModelForCausalLM": "modeling_my.MyForCausalLM"}), "needs remote code"),
    "gelu": (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    "no embed_tokens": (dict(edit=_drop_embeddings), "lacks tensor model.embed_tokens.weight"),
    "config not JSON": (dict(edit=_garbage_config), "cannot be read as JSON"),
}


@pytest.mark.parametrize("case", list(SOURCES))
def test_bad_source_is_refused_in_one_line(dense_dir, tmp_path, capsys, case):
    kwargs, message = SOURCES[case]
    src = _variant(dense_dir, tmp_path, **kwargs)
    out = tmp_path / "out"
    _refused(capsys, ["prune", str(src), "--sparsity", "0.1", "-o", str(out), *FAST], out, message)


@pytest.mark.parametrize("args, message", [
    (["--calibration-layers", "-1"], "calibration-layers must be >= 0"),
    (["--calibration-rank", "-2"], "calibration-rank must be >= 0"),
    (["--ranking-samples", "0"], "ranking-samples must be positive"),
    (["--device", "gpu0"], "--device 'gpu0' is not a device"),
    (["--device", "meta"], "runs on cpu or cuda"),
])
def test_bad_option_is_refused_in_one_line(dense_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    _refused(capsys, ["prune", str(dense_dir), "--sparsity", "0.1", "-o", str(out), *FAST, *args], out, message)


def test_output_may_not_be_or_hold_the_source(dense_dir, tmp_path, capsys):
    parent = tmp_path / "models"
    src = parent / "src"
    shutil.copytree(dense_dir, src)
    before = {f.name: f.read_bytes() for f in src.iterdir()}
    for out in (src, parent):
        assert main(["prune", str(src), "--sparsity", "0.1", "-o", str(out), "--overwrite", *FAST]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is (or contains) the source model" in err[0]
    assert {f.name: f.read_bytes() for f in src.iterdir()} == before  # the source is untouched


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_killed_run_leaves_nothing_that_blocks_a_rerun(dense_dir, tmp_path, capsys):
    out = tmp_path / "out"
    # A writer killed with SIGKILL half-way through leaves its .partial directory.
    code = f"""
import os, signal, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from olica_prune.io.writer import CheckpointWriter
w = CheckpointWriter({str(out)!r}, max_shard_bytes=1).__enter__()
w.add("a", torch.zeros(4)); w.add("b", torch.zeros(4))  # the second add flushes a shard
os.kill(os.getpid(), signal.SIGKILL)
"""
    res = subprocess.run([sys.executable, "-c", code])
    assert res.returncode == -signal.SIGKILL
    stale = list(tmp_path.glob(".out.partial-*"))
    assert len(stale) == 1 and list(stale[0].glob("*.safetensors"))
    assert not out.exists()
    # The rerun to the same output succeeds and sweeps the dead run's directory.
    assert main(["prune", str(dense_dir), "--sparsity", "0.1", "-o", str(out), *FAST]) == 0
    assert (out / "config.json").is_file()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_sweep_keeps_live_runs_and_restores_a_moved_aside_output(tmp_path):
    out = tmp_path / "ckpt"
    live = tmp_path / f".ckpt.partial-{os.getpid()}-x"
    live.mkdir()
    # Killed between its two renames: the old checkpoint sits in .old-PID-*/old, the output is gone.
    moved = tmp_path / f".ckpt.old-{_dead_pid()}-y" / "old"
    moved.mkdir(parents=True)
    (moved / "config.json").write_text("{}")
    W.sweep_stale(out)
    assert live.is_dir()  # a running writer's directory is not touched
    assert (out / "config.json").read_text() == "{}"
    assert not list(tmp_path.glob(".ckpt.old-*"))


def test_full_disk_keeps_the_old_output(dense_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"old": true}')

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(W, "_write", full)
    code = main(["prune", str(dense_dir), "--sparsity", "0.1", "-o", str(out), "--overwrite", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "disk is full" in err[0] and "the existing output is unchanged" in err[0]
    assert json.loads((out / "config.json").read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left


def test_full_disk_on_rename_puts_the_old_output_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker").write_text("old")
    real_replace = os.replace

    def replace(a, b):
        if Path(b) == out and ".partial-" in Path(a).name:  # the new checkpoint cannot be moved in
            raise OSError(28, "No space left on device")
        return real_replace(a, b)

    with pytest.raises(W.CheckpointWriteError, match="disk is full"):
        with W.CheckpointWriter(out, overwrite=True) as w:
            w.add("x", torch.zeros(3))
            monkeypatch.setattr(W.os, "replace", replace)
            w.finish(config={})
    assert (out / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_checkpoint_directory_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with W.CheckpointWriter(tmp_path / "out") as w:
            w.add("x", torch.zeros(3))
            w.finish(config={})
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode


def test_gguf_conversions_are_keyed_by_content(tmp_path, monkeypatch):
    from olica_prune.io import sources

    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(sources, "_gguf_to_hf_dir",
                        lambda gguf, *, name, dtype: calls.append(name) or tmp_path / name)
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for f, data in ((a, b"GGUF one"), (b, b"GGUF two")):
        f.parent.mkdir()
        f.write_bytes(data)
    sources.resolve_model(str(a))
    sources.resolve_model(str(b))
    sources.resolve_model(str(a))
    assert calls[0] != calls[1] and calls[0] == calls[2]  # same name, different bytes: different conversions
    assert all(c.startswith("model-") for c in calls)
    a.write_bytes(b"GGUF one, replaced")  # the same path with new bytes
    sources.resolve_model(str(a))
    assert calls[3] not in calls[:3]
