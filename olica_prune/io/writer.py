"""Write Olica checkpoints atomically.

Tensors are streamed into size-bounded safetensors shards inside a temporary
directory beside the destination; only a complete checkpoint is renamed into
place. An interrupted run leaves no partial output, and an existing output
directory is replaced only when the caller allows it.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


# safetensors' dtype names
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
# Each shard is written as its tensors arrive, after a header area reserved at
# its start (the safetensors format allows the JSON header to be padded with
# spaces): a tensor is in memory only while it is written, and no byte is copied
# twice. A shard is closed early when its header would outgrow the area.
HEADER_RESERVE = 256 << 10


def _write(f: BinaryIO, data) -> None:
    f.write(data)


class OutputExistsError(FileExistsError):
    pass


class CheckpointWriteError(OSError):
    """Writing failed (disk full, no permission ...); nothing was put in place."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(output: Path) -> list[Path]:
    """Remove what killed writers (SIGKILL, power loss) left beside ``output``:
    ``.NAME.partial-PID-*`` directories of dead processes. A ``.NAME.old-PID-*``
    directory of a dead process holds the previous output if the writer died
    between its two renames: it is put back when ``output`` is missing,
    removed otherwise. Returns what was removed or restored."""
    parent = output.resolve().parent
    done = []
    for kind in ("partial", "old"):
        for d in sorted(parent.glob(f".{output.name}.{kind}-*")):
            pid = d.name[len(f".{output.name}.{kind}-"):].split("-", 1)[0]
            if not pid.isdigit() or _pid_alive(int(pid)) or not d.is_dir():
                continue
            old = d / "old"
            if kind == "old" and old.is_dir() and not output.exists():
                os.replace(old, output)
            shutil.rmtree(d, ignore_errors=True)
            done.append(d)
    return done


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back)
    os.umask(mask)
    return mask


def check_output_path(output: Path, *, overwrite: bool) -> None:
    """Refuse before any work is done, not after hours of pruning."""
    if output.resolve().parent.is_dir():
        sweep_stale(output)  # first: it may put back an output a killed run had moved aside
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} already exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"output {output} exists and is not a directory")
    parent = output.resolve().parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)


class CheckpointWriter:
    """Context manager: ``add`` tensors, then ``finish`` with the config.

    >>> with CheckpointWriter(out, overwrite=False) as w:
    ...     w.add("model.norm.weight", t)
    ...     w.finish(config=cfg, report=rep, copy_from=src_dir)
    """

    def __init__(self, output: str | Path, *, overwrite: bool = False, max_shard_bytes: int = 2 << 30) -> None:
        self.output = Path(output)
        self.overwrite = overwrite
        self.max_shard_bytes = max_shard_bytes
        self._tmp: Path | None = None
        self._file: BinaryIO | None = None  # the open shard
        self._header: dict[str, dict[str, Any]] = {}  # its tensors so far
        self._header_len = 0  # their JSON length (an upper bound of it)
        self._shard_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self._names: set[str] = set()
        self._total_bytes = 0
        self._finished = False

    def __enter__(self) -> CheckpointWriter:
        check_output_path(self.output, overwrite=self.overwrite)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.partial-{os.getpid()}-",
                                          dir=self.output.resolve().parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
        if exc_type is None and not self._finished:
            raise RuntimeError("CheckpointWriter closed without finish(): nothing was written")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` to the open shard now (it is not kept in memory)."""
        if not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to write tensor {name}: it holds NaN or Inf")
        if name in self._names:
            raise ValueError(f"tensor {name} written twice")
        if tensor.dtype not in _ST_DTYPES:
            raise ValueError(f"tensor {name}: dtype {tensor.dtype} cannot be stored in safetensors")
        t = tensor.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        entry = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                 "data_offsets": [self._shard_bytes, self._shard_bytes + nbytes]}
        # "name": {...}, plus slack for the offsets growing when the shard is reopened
        entry_len = len(json.dumps({name: entry})) + 32
        if self._file is not None and (self._shard_bytes + nbytes > self.max_shard_bytes
                                       or self._header_len + entry_len > HEADER_RESERVE - 64):
            self._flush()
            entry["data_offsets"] = [0, nbytes]
        try:
            if self._file is None:
                self._file = open(self._tmp / f"part-{len(self._shards):05d}.safetensors", "wb")
                self._file.seek(HEADER_RESERVE)
            if nbytes:
                _write(self._file, t.reshape(-1).view(torch.uint8).numpy().data)
        except OSError as exc:
            raise self._write_error(exc) from None
        self._header[name] = entry
        self._header_len += entry_len
        self._shard_bytes += nbytes
        self._names.add(name)
        self._total_bytes += nbytes

    def _write_error(self, exc: BaseException) -> CheckpointWriteError:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        full = "No space left" in first or "os error 28" in first or getattr(exc, "errno", None) in (28, 122)
        why = f"the disk is full ({first})" if full else first
        kept = ("the existing output is unchanged" if self.output.exists() else "no output was created")
        return CheckpointWriteError(f"writing {self.output} failed: {why}; {kept}")

    def _flush(self) -> None:
        """Close the open shard: its header, padded with spaces, fills the reserved area."""
        assert self._tmp is not None
        fname = f"part-{len(self._shards):05d}.safetensors"
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._header}, separators=(",", ":")).encode()
        assert len(header) <= HEADER_RESERVE - 8, "header area overflow"
        try:
            if self._file is None:  # an empty checkpoint still gets one (empty) shard
                self._file = open(self._tmp / fname, "wb")
            self._file.seek(0)
            _write(self._file, struct.pack("<Q", HEADER_RESERVE - 8) + header.ljust(HEADER_RESERVE - 8))
            self._file.close()
        except OSError as exc:
            raise self._write_error(exc) from None
        finally:
            if self._file is not None and not self._file.closed:
                self._file.close()
            self._file = None
        self._shards.append((fname, list(self._header)))
        self._header, self._header_len, self._shard_bytes = {}, 0, 0

    def finish(self, *, config: dict[str, Any], report: dict[str, Any] | None = None,
               copy_from: str | Path | None = None) -> Path:
        """Write config/index/report, copy tokenizer files, rename into place."""
        assert self._tmp is not None, "use CheckpointWriter as a context manager"
        if self._file is not None or not self._shards:
            self._flush()
        try:
            return self._finish(config, report, copy_from)
        except OSError as exc:
            raise self._write_error(exc) from None

    def _finish(self, config, report, copy_from) -> Path:
        tmp = self._tmp
        assert tmp is not None
        n = len(self._shards)
        if n == 1:
            os.replace(tmp / self._shards[0][0], tmp / "model.safetensors")
        else:
            weight_map = {}
            for i, (fname, names) in enumerate(self._shards):
                final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                os.replace(tmp / fname, tmp / final)
                weight_map.update({name: final for name in names})
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if copy_from is not None:
            for fname in TOKENIZER_FILES:
                src = Path(copy_from) / fname
                if src.is_file():
                    shutil.copy2(src, tmp / fname)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if report is not None:
            (tmp / "olica_report.json").write_text(json.dumps(report, indent=2) + "\n")
        # mkdtemp made the directory private (0700); the checkpoint gets the
        # permissions any new directory of this user gets (umask), so a server
        # running as another user can read it where the umask allows.
        os.chmod(tmp, 0o777 & ~_umask())
        if self.output.exists():
            # Keep the old checkpoint until the new one is complete, then swap.
            trash = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.old-{os.getpid()}-",
                                          dir=self.output.resolve().parent))
            os.replace(self.output, trash / "old")
            try:
                os.replace(tmp, self.output)
            except OSError:
                os.replace(trash / "old", self.output)  # put the old checkpoint back
                shutil.rmtree(trash, ignore_errors=True)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, self.output)
        self._tmp = None
        self._finished = True
        return self.output
