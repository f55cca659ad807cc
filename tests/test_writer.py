"""The checkpoint writer streams tensors into safetensors shards as they arrive."""

import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file

import olica_prune.io.writer as W


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "w32": torch.randn(64, 16, generator=g),
        "bf16": torch.randn(40, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 8),
        "int8": torch.randint(-100, 100, (33,), dtype=torch.int8, generator=g),
        "f16": torch.randn(300, generator=g).to(torch.float16),
    }


def _read(out):
    got = {}
    for f in sorted(out.glob("*.safetensors")):
        got.update(load_file(str(f)))
    return got


@pytest.mark.parametrize("max_shard_bytes", [1 << 30, 1200, 1])
def test_round_trip_in_one_or_many_shards(tmp_path, max_shard_bytes):
    ts = _tensors()
    with W.CheckpointWriter(tmp_path / "out", max_shard_bytes=max_shard_bytes) as w:
        for k, v in ts.items():
            w.add(k, v)
        w.finish(config={"model_type": "llama"})
    out = tmp_path / "out"
    got = _read(out)
    assert got.keys() == ts.keys()
    for k, v in ts.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    shards = sorted(out.glob("*.safetensors"))
    if max_shard_bytes == 1 << 30:
        assert [s.name for s in shards] == ["model.safetensors"]
    else:
        assert len(shards) > 1
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(ts)
        assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in ts.values())


def test_a_full_header_area_starts_a_new_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "HEADER_RESERVE", 1024)
    ts = {f"model.layers.{i}.mlp.down_proj.weight": torch.full((2,), float(i)) for i in range(40)}
    with W.CheckpointWriter(tmp_path / "out") as w:
        for k, v in ts.items():
            w.add(k, v)
        w.finish(config={})
    shards = sorted((tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 2  # ~100 bytes of header per tensor, 1 KiB per shard
    got = _read(tmp_path / "out")
    assert all(torch.equal(got[k], v) for k, v in ts.items())


def test_added_tensors_are_not_kept_in_memory(tmp_path):
    with W.CheckpointWriter(tmp_path / "out") as w:
        t = torch.randn(1000)
        ref = weakref.ref(t)
        w.add("x", t)
        del t
        gc.collect()
        assert ref() is None  # written, not held until the shard closes
        w.finish(config={})
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["x"].shape == (1000,)


def test_refuses_what_it_cannot_write(tmp_path):
    with W.CheckpointWriter(tmp_path / "out") as w:
        w.add("a", torch.ones(2))
        with pytest.raises(ValueError, match="written twice"):
            w.add("a", torch.ones(2))
        with pytest.raises(ValueError, match="NaN or Inf"):
            w.add("b", torch.tensor([float("nan")]))
        w.finish(config={})
