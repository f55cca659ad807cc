"""The `olica` command line: success path, and one clear line + exit 2 for bad input."""

import json

import pytest
import torch

from olica_prune.cli import main
from tinymodels import random_dense_model, save_model_checkpoint, tiny_config


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "dense"
    save_model_checkpoint(random_dense_model(tiny_config(vocab_size=49152, hidden_size=64, intermediate_size=2048, num_layers=4, tie_word_embeddings=True), seed=3), path)
    # the calibration text is tokenized with the model's tokenizer
    from olica_prune.io.sources import resolve_model
    from olica_prune.io.writer import TOKENIZER_FILES

    src = resolve_model("smollm2-135m")
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and name != "generation_config.json":
            (path / name).write_bytes((src / name).read_bytes())
    return path


def test_prune_command_writes_a_checkpoint(dense_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["prune", str(dense_dir), "--sparsity", "0.1", "--output", str(out), "--align", "8",
                 "--v-align", "4", "--num-samples", "16", "--seq-len", "64", "--quiet",
                 "--sampler", "transformers", "--no-recover"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sparsity" in printed and f"wrote {out}" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["OlicaForCausalLM"]
    assert cfg["olica"]["calibration"]["dataset"] == "self"  # the default: sampled from the model
    assert cfg["olica"]["calibration"]["num_samples"] == 16 and cfg["olica"]["calibration"]["seq_len"] == 64
    assert (out / "tokenizer.json").is_file()
    report = json.loads((out / "olica_report.json").read_text())
    assert abs(report["sparsity"]["achieved"] - 0.1) <= 0.005

    # The same prune written in small shards holds the same tensors.
    small = tmp_path / "small-shards"
    assert main(["prune", str(dense_dir), "--sparsity", "0.1", "--output", str(small), "--align", "8",
                 "--v-align", "4", "--num-samples", "16", "--seq-len", "64", "--quiet", "--max-shard-gb", "0.005",
                 "--sampler", "transformers", "--no-recover"]) == 0
    shards = sorted(small.glob("*.safetensors"))
    assert len(shards) > 1 and (small / "model.safetensors.index.json").is_file()
    whole, split = _tensors(out), _tensors(small)
    assert split.keys() == whole.keys()
    for name, t in whole.items():
        assert torch.equal(split[name], t), name


def _tensors(ckpt):
    from safetensors.torch import load_file

    out = {}
    for f in ckpt.glob("*.safetensors"):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity", "0.95"], "sparsity must be in (0, 0.9]"),
        (["--sparsity", "0"], "sparsity must be in (0, 0.9]"),
        (["--sparsity", "0.2", "--calibration", "/nonexistent/text.txt"], "/nonexistent/text.txt"),
        (["--sparsity", "0.2", "--num-samples", "1", "--seq-len", "8"], "calibration tokens"),
        (["--sparsity", "0.2", "--max-shard-gb", "0"], "shard size must be positive"),
    ],
)
def test_bad_input_gives_one_clear_line(dense_dir, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code = main(["prune", str(dense_dir), "--output", str(out), "--align", "8", "--v-align", "4", "--quiet", "--no-recover", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("olica: error:") and message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_missing_model_and_existing_output(dense_dir, tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nope"), "--sparsity", "0.2", "--output", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["prune", str(dense_dir), "--sparsity", "0.2", "--output", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err
