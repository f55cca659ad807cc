"""Behaviour of a dense or pruned instruct model, beyond perplexity.

Two small hand-written sets ship with the package (``olica_prune/data``):

* ``chat_eval.jsonl`` -- chat prompts with short checkable answers (world
  facts, one- and two-digit arithmetic, one-word completions, everyday
  facts). The model answers through its chat template, greedily; the score is
  the share of answers that pass :func:`exact_match`.
* ``mc_eval.jsonl`` -- zero-shot multiple choice in the style of the pruning
  literature's commonsense tasks (PIQA-, HellaSwag- and ARC-easy-like): each
  choice is scored by its log-likelihood as a continuation of the context
  (``context + " " + choice``), read from vLLM's *prompt logprobs*. ``acc``
  picks the highest sum, ``acc_norm`` the highest sum per character of the
  choice (lm-eval's ``acc_norm``).

Both sets are small (150 and 105 items): a difference of a few points between
two models is within noise, so read the numbers as a behaviour check next to
perplexity, not as a benchmark.

    olica eval behaviour MODEL [--reference DENSE] [--json] [--max-items N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

CHAT_FILE = "chat_eval.jsonl"
MC_FILE = "mc_eval.jsonl"
CHAT_CATEGORIES = ("fact", "arithmetic", "word", "commonsense")
MC_DELIMITER = " "  # between context and choice, as lm-eval's target_delimiter

# ---------------------------------------------------------------------------- data


def _load_jsonl(name: str) -> list[dict[str, Any]]:
    text = resources.files("olica_prune").joinpath("data", name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_chat_set() -> list[dict[str, Any]]:
    """The chat items: ``{"id", "category", "prompt", "answers"}``."""
    return _load_jsonl(CHAT_FILE)


def load_mc_set() -> list[dict[str, Any]]:
    """The multiple-choice items: ``{"id", "category", "context", "choices", "label"}``."""
    return _load_jsonl(MC_FILE)


def subset(items: Sequence[dict], n: int | None) -> list[dict]:
    """The first ``n`` items taken round-robin over categories (file order within each), so a
    small subset still covers every category; all items when ``n`` is None."""
    if n is None or n >= len(items):
        return list(items)
    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(it.get("category", ""), []).append(it)
    queues = list(by_cat.values())
    out: list[dict] = []
    i = 0
    while len(out) < n:
        for q in queues:
            if i < len(q) and len(out) < n:
                out.append(q[i])
        i += 1
    return out


# ---------------------------------------------------------------------------- exact match

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_ARTICLES = {"the", "a", "an"}
# Words that, before the answer in the first sentence, make it a non-answer
# ("it is not Paris", "isn't Paris" -> "isn t paris").
_NEGATIONS = {"not", "never", "t", "neither", "nor"}


def normalize(s: str) -> str:
    """Lowercase; digit-group commas dropped (1,000 -> 1000); every other
    non-alphanumeric character becomes a space; number words zero..twenty
    become digits; leading articles (the/a/an) dropped; whitespace collapsed."""
    s = s.lower().replace("\u2019", "'")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"[\W_]+", " ", s)
    words = [_NUMBER_WORDS.get(w, w) for w in s.split()]
    while words and words[0] in _ARTICLES:
        words.pop(0)
    return " ".join(words)


def _first_line(response: str) -> str:
    for line in response.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _first_sentence(line: str) -> str:
    # A sentence ends at . ! or ? followed by whitespace; "2.5" or "D.C." inside a line stay whole.
    return re.split(r"(?<=[.!?])\s+", line, maxsplit=1)[0]


def exact_match(response: str, answers: Sequence[str]) -> bool:
    """Whether ``response`` gives one of the accepted ``answers``.

    Both sides are compared after :func:`normalize`. Only the response's first
    non-empty line counts, and it matches when

    1. the whole line equals an accepted answer ("Paris", "paris.", "The Paris"), or
    2. an accepted answer appears as a whole word or phrase in the line's first
       sentence ("The capital of France is Paris."), unless that sentence also
       contains the word "or" (hedging between options) or a negation (not,
       n't, never, neither, nor) before the answer ("It is not Paris").

    Rule 2 forgives small models' full-sentence answers; its two exclusions keep
    "Paris or Lyon" and "not Paris but Lyon" from counting, though a response can
    still mention a right answer without meaning it. This is a score, not proof.
    """
    line = _first_line(response)
    if not line:
        return False
    targets = [t for t in (normalize(a) for a in answers) if t]
    norm_line = normalize(line)
    if norm_line in targets:
        return True
    words = normalize(_first_sentence(line)).split()
    if "or" in words:
        return False
    for t in targets:
        tw = t.split()
        for i in range(len(words) - len(tw) + 1):
            if words[i:i + len(tw)] == tw and not _NEGATIONS.intersection(words[:i]):
                return True
    return False


def score_chat(items: Sequence[dict], responses: Sequence[str]) -> dict[str, Any]:
    """Exact-match score of ``responses`` (one per item): overall, per category, per item."""
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    rows = [{"id": it["id"], "category": it.get("category", ""), "response": r,
             "correct": exact_match(r, it["answers"])} for it, r in zip(items, responses)]
    by_cat: dict[str, dict[str, Any]] = {}
    for row in rows:
        c = by_cat.setdefault(row["category"], {"correct": 0, "n": 0})
        c["correct"] += row["correct"]
        c["n"] += 1
    for c in by_cat.values():
        c["score"] = c["correct"] / c["n"]
    correct = sum(r["correct"] for r in rows)
    return {"score": correct / len(rows) if rows else math.nan, "correct": correct, "n": len(rows),
            "by_category": by_cat, "items": rows}


def _messages(item: dict) -> list[dict[str, str]]:
    return [{"role": "user", "content": item["prompt"]}]


def chat_exact_match(llm, items: Sequence[dict], *, max_tokens: int = 16) -> dict[str, Any]:
    """Greedy chat answers from a ``vllm.LLM`` (the model's chat template), scored by :func:`exact_match`.

    Returns ``{"score", "correct", "n", "by_category": {cat: {"score", "correct", "n"}},
    "items": [{"id", "category", "response", "correct"}]}``.
    """
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outs = llm.chat([_messages(it) for it in items], params, use_tqdm=False)
    return score_chat(items, [o.outputs[0].text for o in outs])


def chat_exact_match_openai(client, model: str, items: Sequence[dict], *, max_tokens: int = 16,
                            workers: int = 16) -> dict[str, Any]:
    """:func:`chat_exact_match` through an OpenAI-compatible server (``client``: ``openai.OpenAI``),
    ``workers`` concurrent greedy requests."""
    import concurrent.futures

    def ask(item):
        r = client.chat.completions.create(model=model, messages=_messages(item), max_tokens=max_tokens,
                                           temperature=0.0)
        return r.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
        responses = list(pool.map(ask, items))
    return score_chat(items, responses)


# ---------------------------------------------------------------------------- multiple choice


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """Token ids of ``context + continuation`` and the index of the first continuation token.

    As lm-eval does: whitespace at the end of the context moves to the
    continuation, ``context`` and ``context + continuation`` are tokenized
    separately (``tokenizer.encode``, the model's special tokens included) and
    the tokens after the context's are the continuation's. Where a token
    straddles the boundary (the joint tokenization differs from the context's
    in its last tokens), scoring starts at the first token that differs, so
    every character of the continuation is scored (with at most that merged
    piece of the context).
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    ctx = list(tokenizer.encode(context))
    whole = list(tokenizer.encode(context + continuation))
    split = 0
    while split < min(len(ctx), len(whole)) and ctx[split] == whole[split]:
        split += 1
    if split == len(whole):
        raise ValueError(f"empty continuation {continuation!r} after {context[-40:]!r}")
    if split == 0:
        raise ValueError(f"no context token to condition {continuation!r} on (context {context[-40:]!r})")
    return whole, split


def mc_requests(tokenizer, items: Sequence[dict]) -> list[list[tuple[list[int], int]]]:
    """Per item, per choice: ``(token ids, first scored index)`` of ``context + " " + choice``."""
    return [[encode_pair(tokenizer, it["context"], MC_DELIMITER + ch) for ch in it["choices"]] for it in items]


def _sum_logprobs(prompt_logprobs, ids: list[int], split: int) -> float:
    # prompt_logprobs[i] maps token id -> logprob (or a vLLM Logprob) for position i; [0] is None.
    total = 0.0
    for i in range(split, len(ids)):
        entry = prompt_logprobs[i]
        lp = entry[ids[i]] if ids[i] in entry else entry[str(ids[i])]
        total += float(lp.logprob if hasattr(lp, "logprob") else lp["logprob"] if isinstance(lp, dict) else lp)
    return total


def score_mc(items: Sequence[dict], loglikelihoods: Sequence[Sequence[float]]) -> dict[str, Any]:
    """``acc`` (argmax of the summed log-likelihood) and ``acc_norm`` (argmax of the log-likelihood per
    character of the choice), overall, per category and per item."""
    rows, by_cat = [], {}
    for it, lls in zip(items, loglikelihoods, strict=True):
        pred = max(range(len(lls)), key=lambda j: lls[j])
        normed = [ll / max(1, len(ch)) for ll, ch in zip(lls, it["choices"])]
        pred_norm = max(range(len(lls)), key=lambda j: normed[j])
        row = {"id": it["id"], "category": it.get("category", ""), "label": it["label"],
               "loglikelihoods": list(map(float, lls)), "pred": pred, "pred_norm": pred_norm,
               "correct": pred == it["label"], "correct_norm": pred_norm == it["label"]}
        rows.append(row)
        c = by_cat.setdefault(row["category"], {"acc": 0, "acc_norm": 0, "n": 0})
        c["acc"] += row["correct"]
        c["acc_norm"] += row["correct_norm"]
        c["n"] += 1
    for c in by_cat.values():
        c["acc"] /= c["n"]
        c["acc_norm"] /= c["n"]
    n = len(rows)
    return {"acc": sum(r["correct"] for r in rows) / n if n else math.nan,
            "acc_norm": sum(r["correct_norm"] for r in rows) / n if n else math.nan,
            "n": n, "by_category": by_cat, "items": rows}


def _regroup(flat: list[float], requests: list[list]) -> list[list[float]]:
    out, k = [], 0
    for reqs in requests:
        out.append(flat[k:k + len(reqs)])
        k += len(reqs)
    return out


def mc_accuracy(llm, items: Sequence[dict]) -> dict[str, Any]:
    """Zero-shot multiple choice through a ``vllm.LLM``: each choice's log-likelihood given the
    context is the sum of vLLM's prompt logprobs over the choice's tokens (token ids passed as
    the prompt, so the context/choice boundary is the one :func:`encode_pair` chose).

    Returns ``{"acc", "acc_norm", "n", "by_category", "items": [{"id", "label",
    "loglikelihoods", "pred", "pred_norm", ...}]}``.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    requests = mc_requests(llm.get_tokenizer(), items)
    flat = [r for reqs in requests for r in reqs]
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in flat], params, use_tqdm=False)
    lls = [_sum_logprobs(o.prompt_logprobs, ids, split) for o, (ids, split) in zip(outs, flat, strict=True)]
    return score_mc(items, _regroup(lls, requests))


def mc_accuracy_openai(client, model: str, tokenizer, items: Sequence[dict], *,
                       workers: int = 16) -> dict[str, Any]:
    """:func:`mc_accuracy` through a vLLM OpenAI-compatible server: token-id prompts to the
    completions API with vLLM's ``prompt_logprobs`` extension. ``tokenizer`` must be the served
    model's (e.g. ``transformers.AutoTokenizer.from_pretrained(model_dir)``)."""
    import concurrent.futures

    requests = mc_requests(tokenizer, items)
    flat = [r for reqs in requests for r in reqs]

    def one(req):
        ids, split = req
        r = client.completions.create(model=model, prompt=ids, max_tokens=1, temperature=0.0,
                                      extra_body={"prompt_logprobs": 0})
        choice = r.choices[0]
        plp = getattr(choice, "prompt_logprobs", None)
        if plp is None:
            plp = (choice.model_extra or {}).get("prompt_logprobs")
        if plp is None:
            raise RuntimeError("the server returned no prompt_logprobs (is it vLLM?)")
        return _sum_logprobs(plp, ids, split)

    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(flat)))) as pool:
        lls = list(pool.map(one, flat))
    return score_mc(items, _regroup(lls, requests))


# ---------------------------------------------------------------------------- in-memory models


def chat_exact_match_hf(model, tokenizer, items: Sequence[dict], *, max_tokens: int = 16) -> dict[str, Any]:
    """:func:`chat_exact_match` on an in-memory transformers model (models vLLM cannot load, such as
    the bench's peers): greedy, the chat template, one prompt at a time (no padding to differ)."""
    import torch

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    responses = []
    with torch.no_grad():
        for it in items:
            ids = tokenizer.apply_chat_template(_messages(it), add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"].to(device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=eos)
            responses.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return score_chat(items, responses)


def mc_accuracy_hf(model, tokenizer, items: Sequence[dict]) -> dict[str, Any]:
    """:func:`mc_accuracy` on an in-memory transformers model: the same requests
    (:func:`mc_requests`), each choice's log-likelihood summed from the model's logits."""
    import torch

    device = next(model.parameters()).device
    requests = mc_requests(tokenizer, items)
    lls = []
    with torch.no_grad():
        for ids, split in (r for reqs in requests for r in reqs):
            x = torch.tensor([ids], device=device)
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), dim=-1)
            # position i - 1 predicts token i
            lls.append(float(logp[torch.arange(split - 1, len(ids) - 1), x[0, split:]].sum()))
    return score_mc(items, _regroup(lls, requests))


# ---------------------------------------------------------------------------- engines


def load_llm(model_dir: str | Path, *, dtype: str = "bfloat16", max_model_len: int = 1024,
             enforce_eager: bool = False, seed: int = 0, **kwargs):
    """A ``vllm.LLM`` on ``model_dir`` (dense or Olica; the plugin is registered first).
    ``VLLM_CPU_KVCACHE_SPACE`` defaults to 1 (GiB) unless already set."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import olica_serve

    olica_serve.register()
    from vllm import LLM

    return LLM(model=str(model_dir), dtype=dtype, max_model_len=max_model_len, enforce_eager=enforce_eager,
               seed=seed, **kwargs)


def shutdown_llm(llm, *, timeout: float = 60.0) -> None:
    """Stop a ``vllm.LLM``'s engine processes now, so the next engine has the machine to itself.

    vLLM waits 5 s for the engine core to exit and then kills it; on a busy CPU its teardown takes
    longer, and after such a kill the interpreter was seen to abort at exit ("terminate called
    without an active exception", exit code 134) although every result was out. A longer wait
    lets the engine exit by itself.
    """
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        try:
            core.shutdown(timeout=timeout)
        except TypeError:  # a vLLM whose shutdown() takes no timeout
            with contextlib.suppress(Exception):
                core.shutdown()
        except Exception:
            pass
    del llm
    gc.collect()


def evaluate_llm(llm, chat_items: Sequence[dict], mc_items: Sequence[dict], *,
                 max_tokens: int = 16) -> dict[str, Any]:
    """Both evaluations on one engine, with their wall times."""
    t = time.perf_counter()
    chat = chat_exact_match(llm, chat_items, max_tokens=max_tokens)
    chat["seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    mc = mc_accuracy(llm, mc_items)
    mc["seconds"] = round(time.perf_counter() - t, 1)
    return {"chat": chat, "mc": mc}


def agreement(result: dict, reference: dict) -> dict[str, float]:
    """Share of chat items with the same response (and the same verdict), and of MC items with
    the same prediction, as ``reference``."""
    ci, cr = result["chat"]["items"], reference["chat"]["items"]
    mi, mr = result["mc"]["items"], reference["mc"]["items"]
    return {
        "chat_same_response": sum(a["response"].strip() == b["response"].strip() for a, b in zip(ci, cr)) / len(ci),
        "chat_same_verdict": sum(a["correct"] == b["correct"] for a, b in zip(ci, cr)) / len(ci),
        "mc_same_pred": sum(a["pred"] == b["pred"] for a, b in zip(mi, mr)) / len(mi),
    }


def format_table(results: Sequence[dict]) -> str:
    """One line per model: chat exact-match, MC acc / acc_norm, item counts, seconds (engine start,
    chat, MC)."""
    name_w = max(len("model"), *(len(r["model"]) for r in results))
    lines = [f"{'model':<{name_w}}  {'chat exact-match':>18}  {'MC acc':>7}  {'MC acc_norm':>11}  "
             f"{'n chat/MC':>9}  {'s load/chat/MC':>16}"]
    for r in results:
        c, m = r["chat"], r["mc"]
        em = f"{c['score']:.3f} ({c['correct']}/{c['n']})"
        secs = f"{r.get('load_seconds', math.nan):.0f}/{c['seconds']:.0f}/{m['seconds']:.0f}"
        lines.append(f"{r['model']:<{name_w}}  {em:>18}  {m['acc']:>7.3f}  {m['acc_norm']:>11.3f}  "
                     f"{str(c['n']) + '/' + str(m['n']):>9}  {secs:>16}")
    return "\n".join(lines)


def format_categories(results: Sequence[dict]) -> str:
    cats = list(dict.fromkeys(c for r in results for c in r["chat"]["by_category"]))
    mcats = list(dict.fromkeys(c for r in results for c in r["mc"]["by_category"]))
    out = []
    for r in results:
        chat = ", ".join(f"{c} {r['chat']['by_category'][c]['score']:.2f}" for c in cats
                         if c in r["chat"]["by_category"])
        mc = ", ".join(f"{c} {r['mc']['by_category'][c]['acc']:.2f}" for c in mcats if c in r["mc"]["by_category"])
        out.append(f"  {r['model']}: chat [{chat}]; MC acc [{mc}]")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    from ..io.sources import DEFAULT_MODEL

    p = argparse.ArgumentParser(
        prog="olica eval behaviour",
        description="Chat exact-match and zero-shot multiple-choice accuracy of a model served by vLLM "
                    "(in-process vllm.LLM), on the small hand-written sets shipped with olica.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"HF dir, Olica checkpoint, .gguf or {DEFAULT_MODEL} (default)")
    p.add_argument("--reference", default=None, help="a second model (e.g. the dense source) evaluated the same "
                                                     "way, one engine at a time; agreement is reported")
    p.add_argument("--max-items", type=int, default=None,
                   help="use N items of each set (round-robin over categories)")
    p.add_argument("--max-tokens", type=int, default=16, help="chat answer length limit (default 16)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs / torch.compile in vLLM (on CPU this skips a 1-2 minute compile that "
                        "these short runs do not earn back)")
    p.add_argument("--json", action="store_true", help="print one JSON object (per-item results included)")
    return p


def behaviour_main(argv: list[str]) -> int:
    """``olica eval behaviour ...``: evaluate MODEL (and --reference) one engine at a time, print a table."""
    from ..io.sources import resolve_model

    parser = _parser()
    args = parser.parse_args(argv)
    # vLLM logs to stdout by default; keep stdout for the table / JSON (set before vLLM is imported).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if args.max_items is not None and args.max_items < 1:
        parser.error("--max-items must be at least 1")
    chat_items = subset(load_chat_set(), args.max_items)
    mc_items = subset(load_mc_set(), args.max_items)
    names = [args.model] + ([args.reference] if args.reference is not None else [])
    results = []
    for name in names:
        path = resolve_model(name)
        t = time.perf_counter()
        llm = load_llm(path, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager)
        load_s = time.perf_counter() - t
        try:
            res = evaluate_llm(llm, chat_items, mc_items, max_tokens=args.max_tokens)
        finally:
            shutdown_llm(llm)
            llm = None
        res.update(model=name, path=str(path), load_seconds=round(load_s, 1))
        results.append(res)
    summary: dict[str, Any] = {
        "protocol": {"chat": f"greedy chat-template answers, max {args.max_tokens} tokens, exact match "
                             "(olica_prune.eval.behaviour.exact_match)",
                     "mc": "zero-shot, log-likelihood of ' ' + choice after the context (vLLM prompt logprobs); "
                           "acc_norm divides by the choice's characters",
                     "dtype": args.dtype},
        "results": results,
    }
    if args.reference is not None:
        summary["agreement_with_reference"] = agreement(results[0], results[1])
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(format_table(results))
    print(format_categories(results))
    if args.reference is not None:
        a = summary["agreement_with_reference"]
        print(f"vs {args.reference}: same chat response {a['chat_same_response']:.2f}, same chat verdict "
              f"{a['chat_same_verdict']:.2f}, same MC prediction {a['mc_same_pred']:.2f}")
    print(f"(vLLM, {args.dtype}; chat: greedy, max {args.max_tokens} tokens, exact match of the first "
          "line/sentence; MC: zero-shot log-likelihood. Small hand-written sets: a few points is noise.)")
    return 0


if __name__ == "__main__":
    sys.exit(behaviour_main(sys.argv[1:]))


__all__ = ["load_chat_set", "load_mc_set", "normalize", "exact_match", "chat_exact_match",
           "chat_exact_match_openai", "mc_accuracy", "mc_accuracy_openai", "encode_pair", "mc_requests",
           "behaviour_main"]
