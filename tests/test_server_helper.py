"""``olica_serve.server.VllmServer`` start/health/stop logic, with stand-in
processes in place of ``vllm serve`` (the real server is tested in test_server.py)."""

from __future__ import annotations

import sys

import pytest

from olica_serve import server as server_mod


@pytest.fixture
def make_server(monkeypatch, tmp_path):
    monkeypatch.setattr(server_mod, "vllm_executable", lambda: "vllm-stand-in")

    def make(cmd_for_port, **kw):
        srv = server_mod.VllmServer(tmp_path / "model", "--enforce-eager", log_path=tmp_path / "srv.log", **kw)
        assert srv.cmd[:3] == ["vllm-stand-in", "serve", str(tmp_path / "model")]
        assert srv.cmd[srv.cmd.index("--port") + 1] == str(srv.port)
        assert srv.cmd[-1] == "--enforce-eager"
        srv.cmd = cmd_for_port(srv.port)
        return srv

    return make


def test_healthy_server_is_stopped_with_its_children(make_server, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "health").write_text("ok")
    # An HTTP server that answers /health, started through a shell so that the
    # server is a grandchild: stopping must reach the whole process group.
    srv = make_server(lambda port: ["sh", "-c", f"{sys.executable} -m http.server {port} --bind 127.0.0.1 "
                                                f"--directory {site}; sleep 600"], name="stand-in")
    with srv as running:
        assert running.startup_s is not None and running.startup_s >= 0
        assert running.api_url == f"http://127.0.0.1:{srv.port}/v1"
        proc = running.proc
        assert proc.poll() is None
    assert proc.poll() is not None, "the server outlived the with block"
    assert "GET /health" in srv.log_tail()


def test_server_that_exits_raises_with_log_tail(make_server):
    srv = make_server(lambda port: [sys.executable, "-c", "print('model weights missing'); raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with code 3") as err:
        with srv:
            pass
    assert "model weights missing" in str(err.value)
    assert "--- log tail" in str(err.value)


def test_server_that_never_answers_times_out_and_is_stopped(make_server):
    srv = make_server(lambda port: [sys.executable, "-c", "import time; time.sleep(600)"], timeout=2)
    with pytest.raises(TimeoutError, match="not healthy after 2 s"):
        with srv:
            pass
    assert srv.proc.poll() is not None


def test_kv_cache_default_does_not_override_the_user(make_server, monkeypatch, tmp_path):
    out = tmp_path / "env.txt"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['VLLM_CPU_KVCACHE_SPACE'])"
    for preset, expected in ((None, "3"), ("7", "7")):
        if preset is None:
            monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
        else:
            monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", preset)
        srv = make_server(lambda port: [sys.executable, "-c", code], kv_cache_gib=3)
        srv.start()
        srv.proc.wait(30)
        assert out.read_text() == expected
