"""bench/report.py: docs/RESULTS.md and the README's headline tables are generated from bench/results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "report.py"


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_generated_documents_are_current():
    r = report("--check")
    assert r.returncode == 0, (f"docs/RESULTS.md or README.md is stale; run `python bench/report.py`\n"
                               f"{r.stdout}{r.stderr}")


def _copy(tmp_path: Path) -> tuple[Path, Path, Path]:
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results,
                    ignore=shutil.ignore_patterns("*.tmp", "*.part", ".*"))
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    return results, tmp_path / "RESULTS.md", readme


def test_a_number_changed_in_a_result_file_changes_the_output(tmp_path):
    results, out, readme = _copy(tmp_path)
    args = ("--results", str(results), "--out", str(out), "--readme", str(readme))
    assert report(*args).returncode == 0
    doc_before, readme_before = out.read_text(), readme.read_text()
    assert report(*args, "--check").returncode == 0          # a second run writes the same bytes

    path = results / "quantized_recover.json"  # the README headline block reads it
    data = json.loads(path.read_text())
    data["rows"]["olica + W8A8"]["output_tok_s"] = 4321.5
    path.write_text(json.dumps(data))
    r = report(*args, "--check")
    assert r.returncode == 1 and len(r.stdout.strip().splitlines()) == 1 and "stale" in r.stdout

    assert report(*args).returncode == 0
    doc_after, readme_after = out.read_text(), readme.read_text()
    assert "4321.5" not in doc_before and "4321.5" in doc_after
    assert "4321.5" not in readme_before and "4321.5" in readme_after    # the headline block follows the file
    assert report(*args, "--check").returncode == 0


def test_malformed_and_unknown_files_are_skipped_with_a_warning(tmp_path):
    results, out, _ = _copy(tmp_path)
    (results / "kv_cache.json").write_text("{ not json")
    (results / "throughput.json").write_text(json.dumps({"commit": "0" * 40, "summary": []}))
    (results / "something_new.json").write_text(json.dumps({"commit": "0" * 40}))
    r = report("--results", str(results), "--out", str(out), "--readme", "")
    assert r.returncode == 0, r.stderr
    assert "kv_cache.json" in r.stderr and "throughput.json" in r.stderr and "something_new.json" in r.stderr
    doc = out.read_text()
    assert "_Not rendered: `bench/results/kv_cache.json`" in doc
    assert "_Not rendered: `bench/results/throughput.json`" in doc
    assert "`bench/results/something_new.json` | not rendered" in doc
    assert "## Pruned + quantized" in doc                         # the other sections are still there
