"""The commit a result was measured at (every result file records it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]  # olica_prune/io/ -> the source tree


def commit_hash(*, mark_dirty: bool = False, fallback: str = "unknown") -> str:
    """``$OLICA_COMMIT`` (for a copy of the tree without .git, e.g. on a GPU machine),
    else ``git rev-parse HEAD`` of this source tree (with ``-dirty`` appended when
    ``mark_dirty`` and tracked files are modified), else ``fallback``."""
    if os.environ.get("OLICA_COMMIT"):
        return os.environ["OLICA_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        if mark_dirty:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                                    capture_output=True, text=True, timeout=10).stdout
            head += "-dirty" if status.strip() else ""
        return head
    except (OSError, subprocess.SubprocessError):
        return fallback
