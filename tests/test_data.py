"""Calibration and evaluation text: splits, windows, chunks, bad input."""

import json
import sys
import types

import pytest
import torch

from olica_prune.io.data import (
    DataSourceError,
    calibration_batches,
    eval_chunks,
    load_text,
    pydoc_topics,
    tokenize,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from olica_prune.io.sources import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("smollm2-135m")))


# ------------------------------------------------------------------ pydoc


def test_pydoc_splits_are_disjoint_and_about_80_20():
    from pydoc_data.topics import topics

    cal, ev = pydoc_topics(split="calibration"), pydoc_topics(split="eval")
    assert not set(cal) & set(ev)
    assert set(cal) | set(ev) == set(topics)
    share = sum(map(len, ev.values())) / sum(map(len, topics.values()))
    assert 0.15 <= share <= 0.2, share  # 0.189 on CPython 3.11
    cal_text = load_text("pydoc", split="calibration")
    for key, text in ev.items():
        assert text[:300] not in cal_text, key


def test_pydoc_split_is_deterministic():
    assert load_text("pydoc", split="eval") == load_text("pydoc", split="eval")
    assert list(pydoc_topics(split="eval")) == sorted(pydoc_topics(split="eval"))


# ------------------------------------------------------------ local files


def test_txt_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    rows = [{"text": "first"}, {"instruction": "Add", "input": "1 and 2", "output": "3"}, {"text": "last"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "skip.csv").write_text("not,text")
    assert load_text(str(tmp_path / "a.txt"), split="calibration") == "alpha text"
    assert load_text(str(tmp_path / "b.jsonl"), split="eval") == "first\n\nAdd\n1 and 2\n3\n\nlast"
    folder = load_text(str(tmp_path), split="eval")
    assert folder == "alpha text\n\nfirst\n\nAdd\n1 and 2\n3\n\nlast"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: str(p / "missing.txt"), "not found"),
        (lambda p: (p / "e.txt").write_text("  \n") and str(p / "e.txt"), "is empty"),
        (lambda p: (p / "f.jsonl").write_text('{"body": "x", "id": 1}\n') and str(p / "f.jsonl"),
         "fields found: ['body', 'id']"),
        (lambda p: (p / "g.jsonl").write_text('{"text": "ok"}\n{oops\n') and str(p / "g.jsonl"), "g.jsonl:2"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"), "no .txt or .jsonl"),
        (lambda p: (p / "h.bin").write_bytes(b"\xff\xfe") and str(p / "h.bin"), ".txt or .jsonl"),
        (lambda p: (p / "i.txt").write_bytes(b"\xff\xfe\x00") and str(p / "i.txt"), "not UTF-8"),
        (lambda p: "wikitext103", "not one of pydoc, wikitext2"),
    ],
)
def test_bad_sources_raise_clear_errors(tmp_path, make, message):
    source = make(tmp_path)
    with pytest.raises(DataSourceError) as err:
        load_text(source, split="eval")
    assert message in str(err.value)


def test_bad_split():
    with pytest.raises(DataSourceError, match="split must be one of"):
        load_text("pydoc", split="test")


# -------------------------------------------------------------- hub data


def test_hub_source_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataSourceError) as err:
        load_text("wikitext2", split="eval")
    assert "'wikitext2' needs the 'datasets' package" in str(err.value)
    assert "'pydoc'" in str(err.value)


def test_hub_source_unreachable(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    for name in ("wikitext2", "c4", "alpaca"):
        with pytest.raises(DataSourceError) as err:
            load_text(name, split="eval")
        assert f"could not load {name!r}" in str(err.value) and "ConnectionError" in str(err.value)
        assert "'pydoc'" in str(err.value)
    with pytest.raises(DataSourceError, match="bookcorpus has no held-out split"):
        load_text("bookcorpus", split="eval")


def test_hub_configs_follow_the_literature(monkeypatch):
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return {"text": ["a", "b"]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_text("wikitext2", split="eval") == "a\n\nb"
    assert calls[-1] == (("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "test"})
    load_text("wikitext2", split="calibration")
    assert calls[-1][1] == {"split": "train"}


# ------------------------------------------------------- windows, chunks


def test_calibration_windows_reproducible_per_seed(tokenizer):
    a = calibration_batches(tokenizer, "pydoc", num_samples=16, seq_len=32, seed=0)
    b = calibration_batches(tokenizer, "pydoc", num_samples=16, seq_len=32, seed=0)
    c = calibration_batches(tokenizer, "pydoc", num_samples=16, seq_len=32, seed=1)
    assert a.shape == (16, 32) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_calibration_windows_are_slices_of_calibration_text(tokenizer):
    ids = tokenize(tokenizer, load_text("pydoc", split="calibration"))
    windows = calibration_batches(tokenizer, "pydoc", num_samples=4, seq_len=24, seed=3)
    flat = ids.tolist()
    for w in windows.tolist():
        starts = [i for i in range(len(flat) - 23) if flat[i] == w[0] and flat[i : i + 24] == w]
        assert starts, "window is not a contiguous slice of the calibration tokens"


def test_eval_chunks_are_consecutive_non_overlapping(tokenizer):
    ids = tokenize(tokenizer, load_text("pydoc", split="eval"))
    chunks = eval_chunks(tokenizer, "pydoc", seq_len=128)
    n = ids.numel() // 128
    assert chunks.shape == (n, 128)
    assert torch.equal(chunks.flatten(), ids[: n * 128])
    assert torch.equal(chunks, eval_chunks(tokenizer, "pydoc", seq_len=128))
    assert torch.equal(eval_chunks(tokenizer, "pydoc", seq_len=128, max_chunks=5), chunks[:5])


def test_too_few_tokens(tokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Just a few words here.")
    n = tokenize(tokenizer, short.read_text()).numel()
    with pytest.raises(DataSourceError, match=f"has {n} tokens, fewer than one window of seq_len=128"):
        calibration_batches(tokenizer, str(short), num_samples=2, seq_len=128)
    with pytest.raises(DataSourceError, match=f"has {n} tokens, fewer than one chunk of seq_len=128"):
        eval_chunks(tokenizer, str(short), seq_len=128)
    # exactly one window fits
    assert calibration_batches(tokenizer, str(short), num_samples=3, seq_len=n).shape == (3, n)
