"""Serving speed as users get it: stock ``vllm bench serve`` against a running ``vllm serve``.

This is the project's one throughput measurer. ``bench/serving.py`` (the
published serving tables), ``olica sweep`` and ``olica demo`` all start the
model with :func:`server_args` and call :func:`measure` with a
:class:`Scenario`, so a tokens/s figure means the same thing wherever it is
printed: random prompts of a fixed length, exactly ``output_len`` tokens out
(``ignore_eos``), ``concurrency`` requests in flight, greedy, no prefix cache,
a few warm-up requests first.

The benchmark client is vLLM's (``vllm.benchmarks.serve``, what ``vllm bench serve``
runs), in a process of its own as the command runs it, so that nothing else in the
measuring process shares its event loop. Starting it costs ~10 s of imports on
2 cores, so :func:`preload` starts one while a server starts, and :func:`measure`
hands it its arguments.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# The client process: imports first, then reads its argument list (one JSON line) and runs.
_CLIENT = ("import json, sys\n"
           "from vllm.benchmarks.serve import add_cli_args, main\n"
           "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
           "argv = json.loads(sys.stdin.readline())\n"
           "parser = FlexibleArgumentParser()\n"
           "add_cli_args(parser)\n"
           "main(parser.parse_args(argv))\n")
_preloaded: list[tuple[subprocess.Popen, Path]] = []  # at most one client: its process and its output file

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


def _start_client() -> tuple[subprocess.Popen, Path]:
    out = Path(tempfile.mkstemp(prefix="olica-bench-", suffix=".log")[1])
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", _CLIENT], stdin=subprocess.PIPE, stdout=f,
                                stderr=subprocess.STDOUT)
    return proc, out


def preload() -> None:
    """Start a benchmark client now (it imports while e.g. a server compiles); the next
    :func:`measure` uses it instead of starting one."""
    if not _preloaded:
        _preloaded.append(_start_client())


@atexit.register
def _drop_unused_client() -> None:
    for proc, out in _preloaded:
        proc.kill()
        out.unlink(missing_ok=True)
    _preloaded.clear()


def run_client(cmd: list[str], log: Path) -> int:
    """Run ``vllm bench serve`` (``cmd``, from :func:`bench_command`) in the preloaded client, or
    a new one; its output goes to ``log`` after the command line. Returns its exit code."""
    proc, out = _preloaded.pop() if _preloaded else _start_client()
    try:
        proc.communicate((json.dumps(cmd[3:]) + "\n").encode())  # after "vllm bench serve"
    except BaseException:  # Ctrl-C: stop the client too
        proc.kill()
        proc.wait()
        raise
    finally:
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n" + out.read_text(errors="replace"))
        out.unlink(missing_ok=True)
    return proc.returncode


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
    code = run_client(cmd, log)
    path = workdir / result_file
    if code != 0 or not path.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"vllm bench serve failed for {tag} (exit {code}); log {log}:\n{tail}")
    raw = json.loads(path.read_text())
    if raw.get("completed") != scenario.num_prompts:
        raise RuntimeError(f"{tag}: {raw.get('completed')} of {scenario.num_prompts} requests completed")
    return {k: raw[k] for k in METRICS if k in raw}
