"""Calibration and evaluation text, and the token tensors cut from it.

A *source* names some text; ``load_text(source, split=...)`` returns its
``"calibration"`` or its ``"eval"`` part:

- ``pydoc`` — the offline default: the English prose CPython ships in
  ``pydoc_data.topics`` (≈465k characters). The topics are dealt in sorted
  key order; one goes to the held-out part when it still fits there within
  20 % of the characters dealt so far. The parts are disjoint by
  construction, about 80/20 by size, and both span the alphabet. (The text is that
  of the running Python; numbers measured on it compare within one Python
  version.)
- a ``.txt`` file, a ``.jsonl`` file (field ``text``, or alpaca-style
  ``instruction``/``input``/``output``), or a folder of them. A local source is
  used whole for either split: pass different files to calibrate and to evaluate.
- hub datasets through the ``datasets`` library, with the configurations of
  the SparseGPT/Wanda/LLM-Pruner code: ``wikitext2`` (wikitext-2-raw-v1,
  train | test, records joined with ``"\\n\\n"``), ``c4`` (allenai/c4 ``en``
  shards: train 00000-of-01024 | validation 00000-of-00008), ``bookcorpus``
  (calibration only) and ``alpaca`` (tatsu-lab/alpaca, instruction + input +
  output; every fifth record held out).

``calibration_batches`` draws random windows from the calibration part (the
paper's protocol); ``eval_chunks`` cuts the held-out part into consecutive,
non-overlapping chunks (the perplexity protocol of the pruning literature).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

SPLITS = ("calibration", "eval")
HUB_SOURCES = ("wikitext2", "c4", "bookcorpus", "alpaca")
OFFLINE_HINT = "offline alternatives: 'pydoc' (built in), a .txt/.jsonl file or a folder of them"
PYDOC_EVAL_SHARE = 0.2
# The calibration parts of the large corpora are cut to this many characters
# (≈1M tokens, beyond 128 windows of 2048 tokens) so they tokenize in seconds.
HUB_CALIBRATION_CHARS = 5_000_000
C4_FILES = {
    "calibration": ("train", "en/c4-train.00000-of-01024.json.gz"),
    "eval": ("validation", "en/c4-validation.00000-of-00008.json.gz"),
}
C4_EVAL_DOCS = 1100  # SparseGPT/Wanda evaluate on the first 1100 validation documents


class DataSourceError(ValueError):
    """A text source is missing, empty, malformed or unreachable."""


# --------------------------------------------------------------------- text


def load_text(source: str, *, split: str) -> str:
    """The ``split`` ("calibration" | "eval") part of ``source`` as one string."""
    if split not in SPLITS:
        raise DataSourceError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "pydoc":
        text = "\n\n".join(pydoc_topics(split=split).values())
    elif source in HUB_SOURCES:
        text = _hub_text(source, split)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            text = _folder_text(path)
        elif path.is_file():
            text = _file_text(path)
        else:
            raise DataSourceError(
                f"text source {source!r} not found: it is no file or folder, and not one of "
                f"pydoc, {', '.join(HUB_SOURCES)}"
            )
    if not text.strip():
        raise DataSourceError(f"text source {source!r} ({split}) is empty")
    return text


def pydoc_topics(*, split: str) -> dict[str, str]:
    """Topic key -> text of one part of CPython's ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    parts: dict[str, dict[str, str]] = {"calibration": {}, "eval": {}}
    dealt = held_out = 0
    for key in sorted(topics):
        n = len(topics[key])
        dealt += n
        if held_out + n <= PYDOC_EVAL_SHARE * dealt:
            parts["eval"][key] = topics[key]
            held_out += n
        else:
            parts["calibration"][key] = topics[key]
    return parts[split]


def split_label(source: str, split: str) -> str:
    """How a report names the text a number was measured on, e.g. "pydoc held-out"."""
    labels = {
        "pydoc": {"calibration": "pydoc calibration part", "eval": "pydoc held-out"},
        "wikitext2": {"calibration": "wikitext2 train", "eval": "wikitext2 test"},
        "c4": {"calibration": "c4 train shard 0", "eval": f"c4 validation, first {C4_EVAL_DOCS} docs"},
        "bookcorpus": {"calibration": "bookcorpus train"},
        "alpaca": {"calibration": "alpaca, 4/5 of records", "eval": "alpaca held-out fifth"},
    }
    if source in labels:
        return labels[source].get(split, f"{source} {split}")
    return f"{source} (whole)"


def _file_text(path: Path) -> str:
    if path.suffix == ".jsonl":
        return _jsonl_text(path)
    if path.suffix not in (".txt", ".text", ".md", ""):
        raise DataSourceError(f"{path}: text sources are .txt or .jsonl files (or a folder of them)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{path} is not UTF-8 text ({exc})") from None


def _jsonl_text(path: Path) -> str:
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataSourceError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataSourceError(f"{path}:{lineno}: expected a JSON object per line")
            records.append(_record_text(record, where=f"{path}:{lineno}"))
    return "\n\n".join(records)


def _record_text(record: dict, *, where: str) -> str:
    if isinstance(record.get("text"), str):
        return record["text"]
    if "instruction" in record and "output" in record:
        return _alpaca_text(record)
    raise DataSourceError(
        f"{where}: no 'text' field (nor 'instruction'/'output'); fields found: {sorted(record)}"
    )


def _alpaca_text(record: dict) -> str:
    parts = [record.get("instruction") or "", record.get("input") or "", record.get("output") or ""]
    return "\n".join(p for p in parts if p)


def _folder_text(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
    if not files:
        raise DataSourceError(f"folder {folder} holds no .txt or .jsonl files")
    return "\n\n".join(_file_text(p) for p in files)


# ---------------------------------------------------------------- hub text


def _hub_text(name: str, split: str) -> str:
    # Fail within seconds when the hub is unreachable, instead of the default retries.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataSourceError(
            f"text source {name!r} needs the 'datasets' package (pip install datasets) and network "
            f"access to the Hugging Face hub; {OFFLINE_HINT}"
        ) from None
    try:
        return _HUB_LOADERS[name](split)
    except DataSourceError:
        raise
    except Exception as exc:  # network and hub errors come in many types
        raise DataSourceError(
            f"could not load {name!r} ({split}) from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc)[:300]}); {OFFLINE_HINT}"
        ) from None


def _wikitext2(split: str) -> str:
    from datasets import load_dataset

    hub_split = "train" if split == "calibration" else "test"
    data = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=hub_split)
    return "\n\n".join(data["text"])


def _c4(split: str) -> str:
    from datasets import load_dataset

    hub_split, data_file = C4_FILES[split]
    if split == "eval":
        data = load_dataset("allenai/c4", data_files={hub_split: data_file}, split=hub_split)
        return " ".join(data[:C4_EVAL_DOCS]["text"])
    data = load_dataset("allenai/c4", data_files={hub_split: data_file}, split=hub_split, streaming=True)
    return _first_chars((r["text"] for r in data), HUB_CALIBRATION_CHARS, sep="\n\n")


def _bookcorpus(split: str) -> str:
    from datasets import load_dataset

    if split == "eval":
        raise DataSourceError("bookcorpus has no held-out split; evaluate on wikitext2, c4 or pydoc")
    data = load_dataset("bookcorpus/bookcorpus", split="train", streaming=True)
    return _first_chars((r["text"] for r in data), HUB_CALIBRATION_CHARS, sep="\n")


def _alpaca(split: str) -> str:
    from datasets import load_dataset

    data = load_dataset("tatsu-lab/alpaca", split="train")
    keep = (lambda i: i % 5 == 4) if split == "eval" else (lambda i: i % 5 != 4)
    return "\n\n".join(_alpaca_text(r) for i, r in enumerate(data) if keep(i))


def _first_chars(texts, limit: int, *, sep: str) -> str:
    out, n = [], 0
    for t in texts:
        out.append(t)
        n += len(t) + len(sep)
        if n >= limit:
            break
    return sep.join(out)


_HUB_LOADERS = {"wikitext2": _wikitext2, "c4": _c4, "bookcorpus": _bookcorpus, "alpaca": _alpaca}


# ------------------------------------------------------------------- tokens


def tokenize(tokenizer, text: str) -> torch.LongTensor:
    """All token ids of ``text`` as one 1-D tensor (no BOS/EOS added)."""
    # verbose=False: the text is longer than model_max_length on purpose.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long)


def calibration_batches(tokenizer, source: str, *, num_samples: int = 128, seq_len: int = 128,
                        seed: int = 0) -> torch.LongTensor:
    """``[num_samples, seq_len]`` windows at random offsets of the calibration text.

    Offsets are drawn uniformly (with replacement) by a generator seeded with
    ``seed``, as in the SparseGPT/Wanda/Olica calibration code.
    """
    if num_samples < 1 or seq_len < 1:
        raise DataSourceError(f"num_samples and seq_len must be positive, got {num_samples} and {seq_len}")
    ids = tokenize(tokenizer, load_text(source, split="calibration"))
    if ids.numel() < seq_len:
        raise DataSourceError(
            f"calibration text {source!r} has {ids.numel()} tokens, fewer than one window of "
            f"seq_len={seq_len}; give more text or a shorter --seq-len"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seq_len) for _ in range(num_samples)]
    return torch.stack([ids[s : s + seq_len] for s in starts])  # [num_samples, seq_len]


def eval_chunks(tokenizer, source: str, *, seq_len: int = 128, max_chunks: int | None = None) -> torch.LongTensor:
    """``[n, seq_len]``: the held-out text cut into consecutive, non-overlapping chunks.

    The tail shorter than ``seq_len`` is dropped; ``max_chunks`` keeps the first ones.
    """
    if seq_len < 2:
        raise DataSourceError(f"seq_len must be at least 2 to predict a token, got {seq_len}")
    ids = tokenize(tokenizer, load_text(source, split="eval"))
    n = ids.numel() // seq_len
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n < 1:
        raise DataSourceError(
            f"evaluation text {source!r} has {ids.numel()} tokens, fewer than one chunk of "
            f"seq_len={seq_len}; give more text or a shorter --seq-len"
        )
    return ids[: n * seq_len].view(n, seq_len).clone()
