"""lm-evaluation-harness tasks over this project's offline evaluation data.

``olica lm-eval-tasks DIR`` writes task configs (YAML) and their data (JSON
lines) into DIR; then stock lm-eval runs them on any model, an Olica
checkpoint served by vLLM included (the vLLM plugin registers the
architecture):

    olica lm-eval-tasks runs/lm-eval-tasks
    lm_eval --model vllm --model_args pretrained=runs/smol-20,dtype=bfloat16 \\
        --include_path runs/lm-eval-tasks --tasks olica_mc,olica_report_ppl

Tasks:

* ``olica_mc`` — the 105 zero-shot multiple-choice items of
  ``olica_prune/data/mc_eval.jsonl`` (acc, acc_norm);
* ``olica_ppl_<domain>`` — rolling log-likelihood over documents cut from one
  evaluation-suite domain (word/byte perplexity, bits per byte), tagged
  ``olica_report_ppl`` (the report domains) or ``olica_dev_ppl`` (dev). The
  suite's texts must have been fetched (``olica fetch-texts``; setup does it).

With the transformers backend (``--model hf``) the Olica class must be
importable by ``AutoModelForCausalLM``, which ``import olica_prune`` arranges:
``olica lm-eval ARGS`` is ``lm_eval ARGS`` with that import done first.

The data paths in the YAML files are absolute: the directory is made for this
machine. No hub access: the JSON files are read by ``datasets``' json builder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from . import suite

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # olica_prune/data: the package's shipped sets

DOC_CHARS = 4000  # characters per perplexity document (cut at a line break)


def _documents(text: str, *, doc_chars: int, max_docs: int) -> list[str]:
    docs, start = [], 0
    while start < len(text) and len(docs) < max_docs:
        end = min(len(text), start + doc_chars)
        if end < len(text):
            cut = text.rfind("\n", start + doc_chars // 2, end)
            end = cut if cut > start else end
        doc = text[start:end].strip()
        if doc:
            docs.append(doc)
        start = end
    return docs


def _yaml(fields: dict) -> str:
    # JSON is valid YAML: no YAML library needed to write the configs.
    return json.dumps(fields, indent=2) + "\n"


def write_tasks(out: str | Path, *, domains: tuple[str, ...] | None = None, doc_chars: int = DOC_CHARS,
                max_docs: int = 20) -> list[str]:
    """Write the task configs and data into ``out``; return the task names."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = []
    mc_data = out / "olica_mc.jsonl"
    shutil.copyfile(DATA_DIR / "mc_eval.jsonl", mc_data)
    (out / "olica_mc.yaml").write_text(_yaml({
        "task": "olica_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(mc_data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }))
    names.append("olica_mc")
    wanted = domains if domains is not None else suite.REPORT_DOMAINS + suite.DEV_DOMAINS
    for domain in wanted:
        text = suite.domain_text(domain)  # DataSourceError (one line) when unknown or not fetched
        data = out / f"olica_ppl_{domain}.jsonl"
        docs = _documents(text, doc_chars=doc_chars, max_docs=max_docs)
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        task = f"olica_ppl_{domain.replace('-', '_')}"
        (out / f"{task}.yaml").write_text(_yaml({
            "task": task,
            "tag": ["olica_report_ppl" if domain in suite.REPORT_DOMAINS else "olica_dev_ppl"],
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"},
                            {"metric": "bits_per_byte"}],
            "metadata": {"version": 1.0, "domain": domain, "documents": len(docs), "doc_chars": doc_chars},
        }))
        names.append(task)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="olica lm-eval-tasks", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory for the task configs and data (pass it to lm_eval --include_path)")
    ap.add_argument("--domains", nargs="*", default=None,
                    help="evaluation-suite domains for perplexity tasks (default: report and dev domains)")
    ap.add_argument("--max-docs", type=int, default=20, help="documents per domain")
    ap.add_argument("--doc-chars", type=int, default=DOC_CHARS)
    args = ap.parse_args(argv)
    names = write_tasks(args.out, domains=tuple(args.domains) if args.domains is not None else None,
                        max_docs=args.max_docs, doc_chars=args.doc_chars)
    print(f"wrote {len(names)} tasks to {args.out}: {', '.join(names)}")
    print(f"lm_eval --model vllm --model_args pretrained=CHECKPOINT --include_path {args.out} "
          "--tasks olica_mc,olica_report_ppl")
    return 0


def run_lm_eval(argv: list[str]) -> int:
    """``lm_eval`` with ``olica_prune`` imported, so ``--model hf`` loads Olica checkpoints."""
    import sys

    import olica_prune  # noqa: F401  (the AutoModelForCausalLM hook)

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        from ..io.sources import ModelSourceError

        raise ModelSourceError("lm-evaluation-harness is not installed: pip install lm_eval") from None
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0
