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


def check_output_path(output: Path, *, overwrite: bool) -> None:
    """Refuse before any work is done, not after hours of pruning."""
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
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.partial-", dir=self.output.resolve().parent))
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

    def _flush(self) -> None:
        assert self._tmp is not None
        fname = f"part-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(self._tmp / fname), metadata={"format": "pt"})
        self._shards.append((fname, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self, *, config: dict[str, Any], report: dict[str, Any] | None = None,
               copy_from: str | Path | None = None) -> Path:
        """Write config/index/report, copy tokenizer files, rename into place."""
        assert self._tmp is not None, "use CheckpointWriter as a context manager"
        if self._pending or not self._shards:
            self._flush()
        tmp = self._tmp
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
        if self.output.exists():
            # Keep the old checkpoint until the new one is complete, then swap.
            trash = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.old-", dir=self.output.resolve().parent))
            os.replace(self.output, trash / "old")
            os.replace(tmp, self.output)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, self.output)
        self._tmp = None
        self._finished = True
        return self.output
