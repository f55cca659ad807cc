"""The package layout is the architecture, checked on the source (AST; nothing is imported).

The pruning core is ``olica_prune/__init__.py``, ``contract.py``, ``cli.py`` and the
packages ``method/`` (the pruning method), ``io/`` (sources, calibration text, the
writer) and ``model/`` (the transformers model). Around it: ``eval/`` (evaluation)
and ``tools/`` (demo, quantize, the vLLM sampler), and the vLLM plugin ``olica_serve``.

The rules, over every import statement (``import x`` / ``from x import y``, relative
ones resolved), wherever it stands:

1. No core module imports ``vllm`` or ``olica_serve`` at all, not even inside a
   function: the pruner reaches vLLM only through a child process
   (``python -m olica_prune.tools.selfcal_vllm``, named by a string), the CLI reaches
   ``olica_serve.vllm_cli`` through a module-name string (``cli._SUBTOOLS``).
2. No core module imports ``olica_prune.eval`` or ``olica_prune.tools`` at module
   level. Inside a function only ``cli.py`` may (a command importing what it runs);
   it dispatches them by module-name string today.
3. Transitively: following the module-level imports of a core module through
   ``olica_prune`` (and the ``__init__`` of every package on the way, which importing a
   submodule runs), no module reached imports ``vllm``, ``olica_serve``, ``eval`` or
   ``tools`` at module level. (An import inside a function runs only when called;
   rules 1 and 2 already hold those of the core itself.)

"Module level" is everything that runs when the module is imported: the top level,
``if``/``try`` blocks and class bodies; not function bodies.

And no function or method in ``olica_prune/`` or ``olica_serve/`` is longer than
``MAX_FUNCTION_LINES`` lines (``end_lineno - lineno + 1`` of its ``def``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE_PACKAGES = ("method", "io", "model")
CORE_MODULES = ("__init__", "contract", "cli")
OUTER_PACKAGES = ("eval", "tools")  # olica_prune.<these>: never imported by the core at module level
FORBIDDEN_ANYWHERE = ("vllm", "olica_serve")
LAZY_OUTER_ALLOWED = ("cli",)  # core modules that may import eval/tools inside a function
MAX_FUNCTION_LINES = 80


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module under ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str) -> list[tuple[str, bool, int]]:
    """(imported module, at module level, line) for every import statement of a module.
    ``from p import a`` yields ``p`` and ``p.a`` (``a`` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, top, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, top, node.lineno))
            found.extend((f"{base}.{alias.name}", top, node.lineno) for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child, top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    return found


def _is(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_core(name: str, package: str) -> bool:
    rest = name.removeprefix(package + ".") if name != package else "__init__"
    return rest in CORE_MODULES or rest.split(".")[0] in CORE_PACKAGES


def layout_violations(root: Path = ROOT, package: str = "olica_prune") -> list[str]:
    """Every breach of rules 1-3 (see the module docstring) in ``root/package``."""
    modules = _modules(root, package)
    imports = {name: _imports(path, name) for name, path in modules.items()}
    outer = tuple(f"{package}.{p}" for p in OUTER_PACKAGES)
    bad: list[str] = []
    for name in sorted(n for n in modules if _is_core(n, package)):
        short = name.rpartition(".")[2]
        for target, top, line in imports[name]:
            if any(_is(target, f) for f in FORBIDDEN_ANYWHERE):
                bad.append(f"{name}:{line} imports {target}")
            elif any(_is(target, o) for o in outer) and (top or short not in LAZY_OUTER_ALLOWED):
                bad.append(f"{name}:{line} imports {target}" + ("" if top else " (inside a function)"))
    # rule 3: module-level imports, transitively within the package
    for start in sorted(n for n in modules if _is_core(n, package)):
        # importing a module runs its packages' __init__ first
        parts = start.split(".")
        first = [m for m in (".".join(parts[:k]) for k in range(1, len(parts) + 1)) if m in modules]
        seen, todo = set(first), [(m, (start,) if m == start else (start, m)) for m in first]
        while todo:
            name, chain = todo.pop()
            for target, top, line in imports[name]:
                if not top:
                    continue
                if name != start and any(_is(target, f) for f in FORBIDDEN_ANYWHERE + outer):
                    bad.append(" -> ".join(chain) + f":{line} imports {target}")
                parts = target.split(".")
                # the module itself and every package __init__ on the way to it
                for k in range(1, len(parts) + 1):
                    mod = ".".join(parts[:k])
                    if mod in modules and mod not in seen:
                        seen.add(mod)
                        todo.append((mod, chain + (mod,)))
    return sorted(set(bad))


def long_functions(paths, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    out.append(f"{Path(path).relative_to(ROOT) if ROOT in Path(path).parents else path}:"
                               f"{node.lineno} {node.name} is {length} lines")
    return out


# ---------------------------------------------------------------- the repository

def test_the_core_imports_no_vllm_serve_eval_or_tools():
    assert layout_violations() == []


def test_the_layout_has_the_core_packages():
    names = set(_modules(ROOT, "olica_prune"))
    for pkg in CORE_PACKAGES + OUTER_PACKAGES:
        assert f"olica_prune.{pkg}" in names
    assert {"olica_prune.contract", "olica_prune.cli"} <= names
    assert "olica_prune.testing" not in names  # the test helpers are not installed


def test_string_named_modules_exist():
    """What the CLI and the sampler name by string (never imported by the core) is there."""
    import re

    def exists(module: str) -> bool:
        base = ROOT.joinpath(*module.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()

    cli = (ROOT / "olica_prune" / "cli.py").read_text()
    targets = re.findall(r'"([a-z-]+)": \("([.a-z_]+)", "[a-z_]+"\)', cli)
    assert {c for c, _ in targets} >= {"eval", "demo", "sweep", "quantize", "fix-vllm"}
    for command, module in targets:
        module = "olica_prune" + module if module.startswith(".") else module
        assert exists(module), (command, module)
        assert not _is_core(module, "olica_prune"), (command, module)
    selfcal = (ROOT / "olica_prune" / "io" / "selfcal.py").read_text()
    children = re.findall(r'"-m", "([a-z_.]+)"', selfcal)
    assert children == ["olica_prune.tools.selfcal_vllm"] and exists(children[0])


def test_no_function_is_longer_than_the_limit():
    paths = sorted((ROOT / "olica_prune").rglob("*.py")) + sorted((ROOT / "olica_serve").rglob("*.py"))
    assert long_functions(paths) == []


# ---------------------------------------------------------------- the checker itself

def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


CLEAN = {
    "pkg/__init__.py": "from .model import automodel\n",
    "pkg/contract.py": "import json\n",
    "pkg/cli.py": "from .io import sources\n\ndef run():\n    from .eval import suite\n",
    "pkg/method/__init__.py": "",
    "pkg/method/pruner.py": "from ..io import writer\nfrom . import linalg\n",
    "pkg/method/linalg.py": "import torch\n",
    "pkg/io/__init__.py": "",
    "pkg/io/sources.py": "",
    "pkg/io/writer.py": "from ..contract import json\n",
    "pkg/model/__init__.py": "",
    "pkg/model/automodel.py": "",
    "pkg/eval/__init__.py": "",
    "pkg/eval/suite.py": "import vllm\nimport olica_serve\n",
    "pkg/tools/__init__.py": "",
    "pkg/tools/sampler.py": "from vllm import LLM\n",
    "pkg/helpers.py": "",
}


def test_the_checker_passes_a_clean_layout(tmp_path):
    _tree(tmp_path, CLEAN)
    assert layout_violations(tmp_path, "pkg") == []


def test_the_checker_finds_planted_violations(tmp_path):
    _tree(tmp_path, {
        **CLEAN,
        # rule 1: vllm in the method, even inside a function; olica_serve in the model
        "pkg/method/linalg.py": "import torch\n\ndef f():\n    import vllm.inputs\n",
        "pkg/model/automodel.py": "from olica_serve import register\n",
        # rule 2: eval at module level in io; tools inside a function outside cli
        "pkg/io/sources.py": "from ..eval.suite import x\n",
        "pkg/io/writer.py": "def g():\n    from ..tools import sampler\n",
        # rule 3: a module-level chain core -> helpers -> vllm
        "pkg/contract.py": "from . import helpers\n",
        "pkg/helpers.py": "import vllm\n",
    })
    bad = layout_violations(tmp_path, "pkg")
    assert "pkg.method.linalg:4 imports vllm.inputs" in bad
    assert "pkg.model.automodel:1 imports olica_serve" in bad
    assert "pkg.io.sources:1 imports pkg.eval.suite" in bad
    assert "pkg.io.writer:2 imports pkg.tools (inside a function)" in bad
    assert "pkg.contract -> pkg.helpers:1 imports vllm" in bad
    # cli's lazy eval import is allowed; eval and tools themselves may import vLLM
    assert not any(b.startswith(("pkg.cli:", "pkg.eval", "pkg.tools")) for b in bad)


def test_the_checker_follows_package_inits(tmp_path):
    """Importing pkg.io.sources runs pkg/io/__init__.py first: its imports count."""
    _tree(tmp_path, {**CLEAN, "pkg/helpers.py": "from .tools import sampler\n",
                     "pkg/io/__init__.py": "from .. import helpers\n"})
    bad = layout_violations(tmp_path, "pkg")
    assert "pkg.io -> pkg.helpers:1 imports pkg.tools" in bad
    assert "pkg.io -> pkg.helpers:1 imports pkg.tools.sampler" in bad


def test_the_length_check_counts_def_to_last_line(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def short():\n" + "    x = 1\n" * 79 + "\n\nclass C:\n    def long(self):\n"
                   + "        y = 2\n" * 80)
    assert long_functions([src], limit=80) == [f"{src}:84 long is 81 lines"]
