#!/usr/bin/env bash
# The main job end to end on the bundled model: prune SmolLM2-135M by 20 %,
# serve it with `vllm serve`, ask it a question, compare dense vs pruned tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/olica demo "$@"
