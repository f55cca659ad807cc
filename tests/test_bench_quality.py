"""The quality bench's result merging and table (bench/quality.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_quality", Path(__file__).parent.parent / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


def _row(method, sparsity, ppl, ppl_b=None):
    ppl_b = ppl if ppl_b is None else ppl_b
    return {"method": method, "sparsity": sparsity, "achieved": sparsity, "agreement": 0.5,
            "ppl": {"a": {"128": ppl}, "b": {"128": ppl_b}, "pydoc": {"128": 7.0}},
            "geomean_128": (ppl * ppl_b) ** 0.5, "ppl_128": ppl}


def _results(rows, ablation=(), **extra):
    return {"model": "m", "calibration": "c", "eval_tokens": {"a": {"128": 100}}, "report_domains": ["a", "b"],
            "dense": {"ppl": {"a": {"128": 10.0}, "b": {"128": 10.0}, "pydoc": {"128": 5.0}}, "geomean_128": 10.0},
            "rows": list(rows), "ablation": list(ablation), **extra}


def test_merge_replaces_same_method_and_sparsity_and_keeps_the_rest():
    prior = _results([_row("olica", 0.2, 30.0), _row("wanda-sp", 0.2, 40.0)],
                     [_row("fast OND", 0.2, 33.0)], timing={"tiny": {"seconds": 1.0}}, bench_seconds=100.0,
                     peak_rss_gib=2.0)
    new = _results([_row("olica", 0.2, 29.0), _row("magnitude", 0.1, 1e7)], timing={"random_1b": {"seconds": 9.0}},
                   bench_seconds=50.0, peak_rss_gib=3.0)
    out = quality.merged(prior, new)
    assert [(r["method"], r["sparsity"], r["ppl_128"]) for r in out["rows"]] == [
        ("magnitude", 0.1, 1e7), ("wanda-sp", 0.2, 40.0), ("olica", 0.2, 29.0)]
    assert out["ablation"] == prior["ablation"]
    assert out["timing"] == {"tiny": {"seconds": 1.0}, "random_1b": {"seconds": 9.0}}
    assert out["bench_seconds"] == 150.0 and out["peak_rss_gib"] == 3.0
    assert prior["rows"][0]["ppl_128"] == 30.0, "merge must not modify its inputs"
    assert quality.merged(None, new) is new


def test_markdown_ratio_and_large_perplexities():
    table = quality.markdown(_results([_row("wanda-sp", 0.2, 30.0), _row("olica", 0.2, 15.0),
                                       _row("magnitude", 0.2, 12345678.0)]))
    assert "| 20.0% | olica | 15.00 | 15.00 | **15.00** | 7.00 | 0.500 |" in table
    assert "1.23e+07" in table
    # (15 - 10) / (30 - 10)
    assert "olica at 20%: geomean PPL@128 rise over dense is 0.25 x wanda-sp's; better than wanda-sp on every" in table


def test_markdown_names_the_domains_where_olica_is_not_better():
    table = quality.markdown(_results([_row("wanda-sp", 0.2, 30.0, 12.0), _row("olica", 0.2, 15.0, 14.0)]))
    assert "not better than wanda-sp on b" in table


@pytest.mark.parametrize("ppl, text", [(9.5, "9.50"), (9999.0, "9999.00"), (25000.0, "2.50e+04")])
def test_perplexity_format(ppl, text):
    assert quality._ppl(ppl) == text
