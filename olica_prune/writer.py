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
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

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
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self._total_bytes = 0
        self._finished = False

    def __enter__(self) -> CheckpointWriter:
        check_output_path(self.output, overwrite=self.overwrite)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.partial-{os.getpid()}-",
                                          dir=self.output.resolve().parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
        if exc_type is None and not self._finished:
            raise RuntimeError("CheckpointWriter closed without finish(): nothing was written")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to write tensor {name}: it holds NaN or Inf")
        t = tensor.detach().to("cpu").contiguous()
        if name in self._pending or any(name in names for _, names in self._shards):
            raise ValueError(f"tensor {name} written twice")
        nbytes = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = t
        self._pending_bytes += nbytes
        self._total_bytes += nbytes

    def _write_error(self, exc: BaseException) -> CheckpointWriteError:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        full = "No space left" in first or "os error 28" in first or getattr(exc, "errno", None) in (28, 122)
        why = f"the disk is full ({first})" if full else first
        kept = ("the existing output is unchanged" if self.output.exists() else "no output was created")
        return CheckpointWriteError(f"writing {self.output} failed: {why}; {kept}")

    def _flush(self) -> None:
        assert self._tmp is not None
        fname = f"part-{len(self._shards):05d}.safetensors"
        try:
            save_file(self._pending, str(self._tmp / fname), metadata={"format": "pt"})
        except Exception as exc:  # OSError, or safetensors' own error wrapping one
            raise self._write_error(exc) from None
        self._shards.append((fname, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self, *, config: dict[str, Any], report: dict[str, Any] | None = None,
               copy_from: str | Path | None = None) -> Path:
        """Write config/index/report, copy tokenizer files, rename into place."""
        assert self._tmp is not None, "use CheckpointWriter as a context manager"
        if self._pending or not self._shards:
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
