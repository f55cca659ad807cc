"""Behaviour evaluation (olica_prune.eval.behaviour): the shipped sets, the exact-match
rule, the multiple-choice tokenization boundary, and one end-to-end run through
vLLM on a tiny random Olica checkpoint whose choice log-likelihoods must equal
the transformers model's on the same tokens."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch

from olica_prune.eval import behaviour as B
from olica_prune.eval.behaviour import (
    encode_pair,
    exact_match,
    load_chat_set,
    load_mc_set,
    mc_requests,
    normalize,
    score_chat,
    score_mc,
    subset,
)
from tinymodels import tiny_checkpoint_with_real_tokenizer

# ---------------------------------------------------------------------------- data


def test_chat_set_loads_and_is_well_formed():
    items = load_chat_set()
    assert len(items) >= 120
    assert len({it["id"] for it in items}) == len(items), "duplicate ids"
    cats = {it["category"] for it in items}
    assert cats == set(B.CHAT_CATEGORIES)
    for it in items:
        assert set(it) == {"id", "category", "prompt", "answers"}, it
        assert it["prompt"].endswith((" Answer with one word.", " Answer with a number.",
                                      " Answer with the author's name.")), it
        assert it["answers"] and all(isinstance(a, str) and normalize(a) for a in it["answers"]), it
        # an answer that the question already contains would score a mere echo of the question
        for a in it["answers"]:
            assert f" {normalize(a)} " not in f" {normalize(it['prompt'])} ", (it["id"], a)
    # enough of each kind to report per category
    assert all(sum(it["category"] == c for it in items) >= 20 for c in cats)


def test_mc_set_loads_and_is_well_formed():
    items = load_mc_set()
    assert len(items) >= 100
    assert len({it["id"] for it in items}) == len(items), "duplicate ids"
    for it in items:
        assert {"id", "context", "choices", "label"} <= set(it), it
        assert 2 <= len(it["choices"]) <= 4, it
        assert isinstance(it["label"], int) and 0 <= it["label"] < len(it["choices"]), it
        assert len(set(it["choices"])) == len(it["choices"]), it
        assert it["context"].strip() and all(c.strip() for c in it["choices"]), it
    labels = [it["label"] for it in items]
    assert max(labels.count(k) for k in set(labels)) < 0.5 * len(items), "labels not spread"


def test_sets_ship_as_package_data():
    import tomllib
    from pathlib import Path

    import olica_prune

    package = Path(olica_prune.__file__).resolve().parent
    cfg = tomllib.loads((package.parent / "pyproject.toml").read_text())
    assert "data/*.jsonl" in cfg["tool"]["setuptools"]["package-data"]["olica_prune"]
    for name in (B.CHAT_FILE, B.MC_FILE):
        assert (package / "data" / name).is_file()


def test_subset_is_round_robin_over_categories():
    items = load_chat_set()
    sub = subset(items, 8)
    assert len(sub) == 8
    assert {it["category"] for it in sub} == set(B.CHAT_CATEGORIES)
    assert [it["id"] for it in sub[:4]] == ["fact-01", "arith-01", "word-01", "common-01"]
    assert subset(items, None) == items and subset(items, 10_000) == items


# ---------------------------------------------------------------------------- exact match


@pytest.mark.parametrize("text, expected", [
    ("  The Capital, Paris!  ", "capital paris"),
    ("Twenty", "20"),
    ("There are seven days.", "there are 7 days"),
    ("1,000", "1000"),
    ("an ELEPHANT", "elephant"),
    ("Washington, D.C.", "washington d c"),
    ("it isn\u2019t", "it isn t"),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("response, answers", [
    ("Paris", ["Paris"]),
    ("paris.", ["Paris"]),
    ("**Paris**", ["Paris"]),
    ("The capital of France is Paris.", ["Paris"]),
    ("The capital of France is Paris. It is also its largest city.", ["Paris"]),
    ("\n\nParis\nLyon is another city.", ["Paris"]),
    ("Five", ["5"]),
    ("2 + 3 = 5", ["5"]),
    ("The answer is 12.", ["12"]),
    ("There are 1,000 grams in a kilogram.", ["1000", "1,000"]),
    ("The opposite of yes is no.", ["no"]),
    ("The opposite of \"yes\" is \"no.\"", ["no"]),
    ("The Earth", ["Earth"]),
    ("The largest ocean is the Pacific Ocean.", ["Pacific", "Pacific Ocean"]),
    ("Shut.", ["closed", "shut"]),
])
def test_exact_match_accepts(response, answers):
    assert exact_match(response, answers)


@pytest.mark.parametrize("response, answers", [
    ("", ["Paris"]),
    ("Lyon", ["Paris"]),
    ("It is not Paris but Lyon.", ["Paris"]),
    ("It isn't Paris, it's Lyon.", ["Paris"]),
    ("Paris or Lyon", ["Paris"]),
    ("Paris, Lyon or Marseille.", ["Paris"]),
    ("Lyon. Paris is nicer.", ["Paris"]),          # only the first sentence counts
    ("Lyon\nParis", ["Paris"]),                    # only the first line counts
    ("The answer is 15.", ["5"]),                  # whole words only
    ("A honeycomb.", ["honey"]),
    ("2 + 3 = 6", ["5"]),
    ("The plural of cat is cat.", ["cats"]),
])
def test_exact_match_rejects(response, answers):
    assert not exact_match(response, answers)


def test_score_chat_counts_per_category():
    items = [{"id": "a", "category": "x", "answers": ["1"]}, {"id": "b", "category": "x", "answers": ["2"]},
             {"id": "c", "category": "y", "answers": ["3"]}]
    r = score_chat(items, ["one", "three", "It is 3."])
    assert r["n"] == 3 and r["correct"] == 2 and math.isclose(r["score"], 2 / 3)
    assert r["by_category"] == {"x": {"correct": 1, "n": 2, "score": 0.5}, "y": {"correct": 1, "n": 1, "score": 1.0}}
    assert [i["correct"] for i in r["items"]] == [True, False, True]
    with pytest.raises(ValueError):
        score_chat(items, ["one"])


# ---------------------------------------------------------------------------- multiple choice


class WordTokenizer:
    """Splits into words that carry their leading whitespace (as GPT-style BPEs do); optional BOS."""

    def __init__(self, bos: int | None = None):
        self.bos = bos
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        ids = [self.vocab.setdefault(w, len(self.vocab) + 10) for w in re.findall(r"\s*\S+|\s+$", text)]
        return ([self.bos] if self.bos is not None else []) + ids


class MergingTokenizer:
    """Characters, except that "ab" is one token: a token that can straddle the boundary."""

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            if text.startswith("ab", i):
                out.append(1000)
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_encode_pair_scores_exactly_the_continuation():
    tok = WordTokenizer()
    ids, split = encode_pair(tok, "Question: Why?\nAnswer:", " because it rains")
    assert split == len(tok.encode("Question: Why?\nAnswer:"))
    assert ids[split:] == [tok.vocab[" because"], tok.vocab[" it"], tok.vocab[" rains"]]


def test_encode_pair_with_bos_counts_it_in_the_context():
    tok = WordTokenizer(bos=1)
    ids, split = encode_pair(tok, "The cat", " sat down.")
    assert ids[0] == 1 and split == 3 and len(ids) == 5


def test_encode_pair_moves_trailing_context_space_into_the_continuation():
    tok = WordTokenizer()
    ids, split = encode_pair(tok, "The cat ", "sat")
    assert ids == tok.encode("The cat sat") and split == 2  # " sat" is one token, not " " + "sat"


def test_encode_pair_boundary_merge_starts_at_the_first_differing_token():
    tok = MergingTokenizer()
    ids, split = encode_pair(tok, "xya", "bz")  # context x y a; whole x y [ab] z
    assert ids == [ord("x"), ord("y"), 1000, ord("z")] and split == 2


def test_encode_pair_refuses_empty_continuation_and_empty_context():
    with pytest.raises(ValueError, match="empty continuation"):
        encode_pair(WordTokenizer(), "The cat", "")
    with pytest.raises(ValueError, match="no context token"):
        encode_pair(WordTokenizer(), "", "cat")


def test_mc_requests_join_context_and_choice_with_a_space():
    tok = WordTokenizer()
    items = [{"id": "q", "context": "Question: Colour of snow?\nAnswer:", "choices": ["white", "green"], "label": 0}]
    reqs = mc_requests(tok, items)
    assert len(reqs) == 1 and len(reqs[0]) == 2
    for (ids, split), choice in zip(reqs[0], items[0]["choices"]):
        assert ids == tok.encode(items[0]["context"] + " " + choice)
        assert ids[split:] == [tok.vocab[" " + choice]]


def test_score_mc_acc_and_length_normalised_acc():
    items = [
        {"id": "a", "category": "s", "choices": ["short", "a much longer choice"], "label": 1},
        {"id": "b", "category": "s", "choices": ["x", "y", "z"], "label": 2},
    ]
    r = score_mc(items, [[-5.0, -8.0], [-3.0, -2.0, -1.0]])
    # item a: the sum prefers "short", per character the long one (-8/20 > -5/5)
    assert [i["pred"] for i in r["items"]] == [0, 2] and [i["pred_norm"] for i in r["items"]] == [1, 2]
    assert r["acc"] == 0.5 and r["acc_norm"] == 1.0 and r["n"] == 2
    assert r["by_category"]["s"] == {"acc": 0.5, "acc_norm": 1.0, "n": 2}


def test_sum_logprobs_reads_engine_and_json_forms():
    ids, split = [5, 6, 7, 8], 2
    engine = [None, {6: SimpleNamespace(logprob=-0.5)}, {7: SimpleNamespace(logprob=-1.0)},
              {8: SimpleNamespace(logprob=-2.0), 3: SimpleNamespace(logprob=-0.1)}]
    as_json = json.loads(json.dumps([None] + [{str(k): {"logprob": v.logprob} for k, v in e.items()}
                                              for e in engine[1:]]))
    assert B._sum_logprobs(engine, ids, split) == -3.0
    assert B._sum_logprobs(as_json, ids, split) == -3.0


class FakeOpenAI:
    """Just enough of openai.OpenAI for the *_openai helpers: canned chat replies, and prompt logprobs
    equal to -(token id) / 100 for every prompt token."""

    def __init__(self, replies: dict[str, str]):
        self.calls = []

        def chat_create(**kw):
            self.calls.append(kw)
            text = replies[kw["messages"][0]["content"]]
            return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])

        def completion_create(**kw):
            self.calls.append(kw)
            ids = kw["prompt"]
            plp = [None] + [{str(t): {"logprob": -t / 100, "rank": 1}} for t in ids[1:]]
            return SimpleNamespace(choices=[SimpleNamespace(prompt_logprobs=plp, text="")])

        self.chat = SimpleNamespace(completions=SimpleNamespace(create=chat_create))
        self.completions = SimpleNamespace(create=completion_create)


def test_openai_helpers_score_through_the_client():
    chat = subset(load_chat_set(), 4)
    replies = {it["prompt"]: (f"It is {it['answers'][0]}." if i % 2 == 0 else "No idea.") for i, it in enumerate(chat)}
    client = FakeOpenAI(replies)
    r = B.chat_exact_match_openai(client, "m", chat, max_tokens=7)
    assert r["n"] == 4 and r["correct"] == 2
    assert all(c["temperature"] == 0 and c["max_tokens"] == 7 and c["model"] == "m" for c in client.calls)

    tok = WordTokenizer()
    mc = subset(load_mc_set(), 5)
    r = B.mc_accuracy_openai(FakeOpenAI({}), "m", tok, mc)
    for it, row in zip(mc, r["items"]):
        for (ids, split), ll in zip(mc_requests(tok, [it])[0], row["loglikelihoods"]):
            assert math.isclose(ll, -sum(ids[split:]) / 100)


# ---------------------------------------------------------------------------- CLI wiring


def test_eval_behaviour_subcommand_is_wired(capsys):
    from olica_prune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "behaviour", "--help"])
    assert exc.value.code == 0
    assert "olica eval behaviour" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["eval", "behaviour", "smollm2-135m", "--max-items", "0"])
    assert exc.value.code == 2
    assert "--max-items must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "behaviour" in capsys.readouterr().out


def test_behaviour_main_table_json_and_reference(monkeypatch, capsys):
    """The CLI around the engines: one engine at a time, shut down before the next, the table and JSON."""
    import olica_prune.io.sources as sources

    events = []
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)  # behaviour_main sets it; undone after the test
    monkeypatch.setattr(sources, "resolve_model", lambda name: f"/models/{name}")
    monkeypatch.setattr(B, "load_llm", lambda path, **kw: events.append(("load", path, kw["dtype"])) or path)
    monkeypatch.setattr(B, "shutdown_llm", lambda llm: events.append(("stop", llm)))

    def fake_evaluate(llm, chat_items, mc_items, *, max_tokens):
        good = llm.endswith("dense")
        chat = score_chat(chat_items, [it["answers"][0] if good or i % 2 else "?" for i, it in
                                       enumerate(chat_items)])
        mc = score_mc(mc_items, [[0.0 if j == it["label"] or not good else -1.0 for j in range(len(it["choices"]))]
                                 for it in mc_items])
        chat["seconds"] = mc["seconds"] = 1.0
        return {"chat": chat, "mc": mc}

    monkeypatch.setattr(B, "evaluate_llm", fake_evaluate)
    assert B.behaviour_main(["pruned", "--reference", "dense", "--max-items", "6"]) == 0
    assert events == [("load", "/models/pruned", "bfloat16"), ("stop", "/models/pruned"),
                      ("load", "/models/dense", "bfloat16"), ("stop", "/models/dense")]
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["model", "chat", "exact-match"]
    assert lines[1].split()[:3] == ["pruned", "0.500", "(3/6)"] and lines[2].split()[:3] == ["dense", "1.000", "(6/6)"]
    assert "vs dense: same chat response 0.50" in out

    assert B.behaviour_main(["dense", "--json", "--max-items", "5", "--dtype", "float32"]) == 0
    data = json.loads(capsys.readouterr().out)
    (res,) = data["results"]
    assert res["model"] == "dense" and res["chat"]["n"] == 5 and res["mc"]["n"] == 5
    assert res["chat"]["score"] == 1.0 and res["mc"]["acc"] == 1.0
    assert data["protocol"]["dtype"] == "float32" and "agreement_with_reference" not in data


# ---------------------------------------------------------------------------- through vLLM

# |sum of choice logprobs, vLLM - transformers|, fp32 on CPU, per choice
LL_ATOL = 2e-4  # observed 2.2e-05 (30 choices, 2 layers, vocab 49152)


@pytest.mark.vllm
def test_behaviour_end_to_end_through_vllm(tmp_path, monkeypatch):
    import vllm  # noqa: F401  (a missing vLLM fails this test, it does not skip it)

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in-process: ~17 s less start-up
    from transformers import AutoTokenizer

    from olica_prune.model.modeling import load_causal_lm

    ckpt = tiny_checkpoint_with_real_tokenizer(tmp_path / "tiny")
    chat_items, mc_items = subset(load_chat_set(), 8), subset(load_mc_set(), 9)
    llm = B.load_llm(ckpt, dtype="float32", max_model_len=512, enforce_eager=True)
    try:
        chat = B.chat_exact_match(llm, chat_items, max_tokens=6)
        mc = B.mc_accuracy(llm, mc_items)
        engine_requests = mc_requests(llm.get_tokenizer(), mc_items)
    finally:
        B.shutdown_llm(llm)
        llm = None

    assert chat["n"] == len(chat["items"]) == 8 and 0 <= chat["score"] <= 1
    assert [i["id"] for i in chat["items"]] == [it["id"] for it in chat_items]
    assert all(isinstance(i["response"], str) and isinstance(i["correct"], bool) for i in chat["items"])
    assert any(i["response"].strip() for i in chat["items"])
    assert sum(c["n"] for c in chat["by_category"].values()) == 8
    assert mc["n"] == len(mc["items"]) == 9 and 0 <= mc["acc"] <= 1 and 0 <= mc["acc_norm"] <= 1

    # vLLM's tokenizer splits exactly as the checkpoint's transformers tokenizer does
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    requests = mc_requests(tok, mc_items)
    assert requests == engine_requests

    # the log-likelihoods read from vLLM's prompt logprobs are the transformers model's on the same tokens
    model = load_causal_lm(ckpt)
    worst, spread = 0.0, 0.0
    with torch.no_grad():
        for row, reqs in zip(mc["items"], requests):
            ref = []
            for ids, split in reqs:
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
                targets = torch.tensor(ids[split:])
                ref.append(float(logp[torch.arange(split - 1, len(ids) - 1), targets].sum()))
            got = row["loglikelihoods"]
            assert len(got) == len(ref)
            for a, b in zip(got, ref):
                assert abs(a - b) <= LL_ATOL, (row["id"], got, ref)
                worst = max(worst, abs(a - b))
            spread = max(spread, max(ref) - min(ref))
    assert spread > 1.0, "choices barely differ: the comparison would not catch a wrong boundary"
    print(f"max |ll(vLLM) - ll(transformers)| {worst:.2e} over {sum(map(len, requests))} choices")
    # the in-memory scorer (the bench's peers) reads the same log-likelihoods
    hf = B.mc_accuracy_hf(model, tok, mc_items)
    for row, hrow in zip(mc["items"], hf["items"], strict=True):
        assert all(abs(a - b) <= LL_ATOL for a, b in zip(row["loglikelihoods"], hrow["loglikelihoods"], strict=True))
    assert (hf["n"], [r["label"] for r in hf["items"]]) == (9, [r["label"] for r in mc["items"]])


def test_chat_exact_match_hf_is_greedy_decoding_through_the_chat_template(tmp_path):
    """The in-memory chat scorer equals a plain greedy loop (full recompute, no cache) over the
    chat template's prompt, stopping at EOS."""
    from transformers import AutoTokenizer

    from olica_prune.model.modeling import load_causal_lm

    ckpt = tiny_checkpoint_with_real_tokenizer(tmp_path / "tiny")
    model, tok = load_causal_lm(ckpt), AutoTokenizer.from_pretrained(str(ckpt))
    items = subset(load_chat_set(), 4)
    got = B.chat_exact_match_hf(model, tok, items, max_tokens=5)
    for it, row in zip(items, got["items"], strict=True):
        ids = list(tok.apply_chat_template([{"role": "user", "content": it["prompt"]}], add_generation_prompt=True,
                                           return_dict=True)["input_ids"])
        new = []
        with torch.no_grad():
            for _ in range(5):
                nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
        assert row["response"] == tok.decode(new, skip_special_tokens=True)
    assert got["n"] == 4 and any(r["response"] for r in got["items"])
