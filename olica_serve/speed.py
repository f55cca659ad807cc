"""Serving speed as users get it: stock ``vllm bench serve`` against a running ``vllm serve``.

This is the project's one throughput measurer. ``bench/serving.py`` (the
published serving tables), ``olica sweep`` and ``olica demo`` all start the
model with :func:`server_args` and call :func:`measure` with a
:class:`Scenario`, so a tokens/s figure means the same thing wherever it is
printed: random prompts of a fixed length, exactly ``output_len`` tokens out
(``ignore_eos``), ``concurrency`` requests in flight, greedy, no prefix cache,
a few warm-up requests first.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

# what `vllm bench serve` reports that the results keep
METRICS = ("output_throughput", "total_token_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms",
           "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "p99_itl_ms", "median_e2el_ms")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One load pattern: ``num_prompts`` requests, ``concurrency`` of them in flight."""

    name: str
    input_len: int
    output_len: int
    concurrency: int
    num_prompts: int


def decode_scenario(concurrency: int, *, input_len: int = 128, output_len: int = 128,
                    prompts_per_slot: int = 2) -> Scenario:
    """Generation at a concurrency level (``c1`` is batch-1 decoding); at least 8 requests."""
    return Scenario(f"c{concurrency}", input_len, output_len, concurrency, max(8, prompts_per_slot * concurrency))


def prefill_scenario(input_len: int = 1024, num_prompts: int = 8) -> Scenario:
    """Long prompts, one output token, one at a time: TTFT is the prefill latency."""
    return Scenario("prefill", input_len, 1, 1, num_prompts)


def server_args(*, dtype: str = "bfloat16", max_model_len: int, max_num_seqs: int, enforce_eager: bool = False,
                seed: int = 0) -> list[str]:
    """The ``vllm serve`` options every speed measurement uses (vLLM's default compiled mode
    unless ``enforce_eager``; prefix caching off so no request reuses another's prefill)."""
    args = ["--dtype", dtype, "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
            "--no-enable-prefix-caching", "--seed", str(seed)]
    return args + (["--enforce-eager"] if enforce_eager else [])


def bench_command(base_url: str, model_name: str, tokenizer: str, scenario: Scenario, *, seed: int,
                  result_dir: Path, result_file: str) -> list[str]:
    """The ``vllm bench serve`` command line of one scenario."""
    from .server import vllm_executable

    s = scenario
    return [vllm_executable(), "bench", "serve", "--backend", "vllm", "--base-url", base_url,
            "--endpoint", "/v1/completions", "--model", model_name, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(s.input_len), "--random-output-len",
            str(s.output_len), "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(s.num_prompts),
            "--max-concurrency", str(s.concurrency), "--request-rate", "inf", "--seed", str(seed),
            "--num-warmups", str(min(s.concurrency, 4)), "--temperature", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--disable-tqdm",
            "--save-result", "--result-dir", str(result_dir), "--result-filename", result_file]


def measure(server, model_name: str, tokenizer: str | Path, scenario: Scenario, *, workdir: Path,
            tag: str | None = None, seed: int = 0) -> dict:
    """Run one scenario against ``server`` (an ``olica_serve.server.VllmServer``); returns ``METRICS``.

    Raises RuntimeError with the log tail if the benchmark fails or drops requests."""
    tag = tag or f"{model_name}-{scenario.name}"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result_file, log = f"{tag}.json", workdir / f"{tag}.log"
    cmd = bench_command(server.base_url, model_name, str(tokenizer), scenario, seed=seed, result_dir=workdir,
                        result_file=result_file)
    with open(log, "wb") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    path = workdir / result_file
    if proc.returncode != 0 or not path.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"vllm bench serve failed for {tag} (exit {proc.returncode}); log {log}:\n{tail}")
    raw = json.loads(path.read_text())
    if raw.get("completed") != scenario.num_prompts:
        raise RuntimeError(f"{tag}: {raw.get('completed')} of {scenario.num_prompts} requests completed")
    return {k: raw[k] for k in METRICS if k in raw}
