"""One ``vllm.LLM`` per subprocess, for the benchmarks that need the offline engine itself.

``bench/quantized.py`` (perplexity from prompt logprobs, per quantization) and
``bench/gap_profile.py`` (the torch profiler inside the engine) define a
``worker(spec)``; :func:`run_engine` runs ``script --_worker SPEC`` in a fresh
process (memory is freed, no engine state is shared) and :func:`answer_worker`
answers that call in the child. Serving speed is not measured here: that is
``olica_serve.speed`` (stock ``vllm bench serve`` against ``vllm serve``).
:func:`environment` records the machine and package versions with a result.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# vLLM on CPU refuses to start when it cannot reserve its default share of
# memory; a fixed KV cache (GiB) avoids that and is plenty for these runs.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

RESULT_TAG = "OLICA_BENCH_RESULT "


def run_engine(kind: str, model: Path, common: dict, workdir: Path, tag: str, *, script: str) -> dict:
    """Run ``script --_worker SPEC`` in a fresh process; return the JSON it printed after RESULT_TAG."""
    spec = dict(common, model=str(model))
    log = workdir / f"{tag}.log"
    cmd = [sys.executable, str(Path(script).resolve()), "--_worker", json.dumps(spec)]
    with open(log, "wb") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join(lines[-40:])
    raise RuntimeError(f"{kind} run failed (exit {proc.returncode}); log {log}:\n{tail}")


def answer_worker(argv: list[str], worker) -> bool:
    """In a process started by :func:`run_engine`: run ``worker`` on the spec, print its result; True if so."""
    if argv[:1] != ["--_worker"]:
        return False
    print(RESULT_TAG + json.dumps(worker(json.loads(argv[1]))), flush=True)
    return True


def make_prompts(tokenizer_dir: Path, *, num_prompts: int, input_len: int, seed: int) -> list[list[int]]:
    """``num_prompts`` random token-id prompts of ``input_len`` (no special tokens)."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = set(tok.all_special_ids)
    pool = np.array([i for i in range(len(tok)) if i not in special])
    rng = np.random.default_rng(seed)
    return rng.choice(pool, size=(num_prompts, input_len)).tolist()


def environment(enforce_eager: bool, dtype: str) -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": version("torch"),
        "vllm": version("vllm") or version("vllm-cpu"),
        "transformers": version("transformers"),
        "enforce_eager": enforce_eager,
        "dtype": dtype,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
    }
