"""What the benchmark scripts share: the commit a result was measured at."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit_hash() -> str:
    """``$OLICA_COMMIT`` (for a copy of the tree without .git, e.g. on a GPU machine),
    else ``git rev-parse HEAD``, else ``"unknown"``."""
    if os.environ.get("OLICA_COMMIT"):
        return os.environ["OLICA_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
