"""Quality of a (pruned) model: perplexity and top-1 agreement with a reference.

Perplexity follows the protocol of the pruning literature (SparseGPT, Wanda,
LLM-Pruner, Olica): the held-out text is cut into consecutive, non-overlapping
chunks of ``seq_len`` tokens, each chunk is scored on its own (no context
carried over), and the perplexity is ``exp`` of the mean negative
log-likelihood over all predicted tokens (``seq_len - 1`` per chunk).

    olica eval ppl MODEL [--text pydoc|FILE|wikitext2|c4] [--seq-len 128]
                         [--max-chunks K] [--reference MODEL] [--json]
    olica eval behaviour MODEL [--reference DENSE] [--json]   (olica_prune.eval.behaviour)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _logits(model, ids: torch.LongTensor) -> torch.Tensor:
    out = model(input_ids=ids.to(_device_of(model)), use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0]


def _batches(chunks: torch.LongTensor, batch_size: int, *, progress: bool, desc: str):
    if chunks.ndim != 2 or chunks.shape[1] < 2:
        raise ValueError(f"chunks must be [n, seq_len >= 2] token ids, got shape {tuple(chunks.shape)}")
    starts = range(0, chunks.shape[0], batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        yield chunks[s : s + batch_size]


@torch.no_grad()
def negative_log_likelihood(model, chunks: torch.LongTensor, *, batch_size: int = 8,
                            progress: bool = True) -> tuple[float, int]:
    """(summed NLL in nats, number of predicted tokens) of ``chunks`` ``[n, seq_len]``."""
    total, count = 0.0, 0
    for ids in _batches(chunks, batch_size, progress=progress, desc="perplexity"):
        logits = _logits(model, ids)  # [B, S, V]
        targets = ids[:, 1:].to(logits.device)  # [B, S-1]
        # One row at a time: float32 log-softmax over a large vocabulary is the
        # biggest tensor of the whole evaluation.
        for row in range(ids.shape[0]):
            total += F.cross_entropy(logits[row, :-1].float(), targets[row], reduction="sum").item()
        count += targets.numel()
    return total, count


def geometric_mean(values) -> float:
    """exp(mean(log v)): how summaries over several domains are formed."""
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def perplexity(model, chunks: torch.LongTensor, *, batch_size: int = 8, progress: bool = True) -> float:
    """exp(mean next-token NLL) over all predicted tokens of the non-overlapping ``chunks``."""
    total, count = negative_log_likelihood(model, chunks, batch_size=batch_size, progress=progress)
    return math.exp(total / count)


@torch.no_grad()
def token_agreement(model, reference_model, chunks: torch.LongTensor, *, batch_size: int = 8,
                    progress: bool = False) -> float:
    """Share of predicted positions where both models' top-1 next token is the same."""
    agree, count = 0, 0
    for ids in _batches(chunks, batch_size, progress=progress, desc="agreement"):
        top = _logits(model, ids)[:, :-1].argmax(-1)  # [B, S-1]
        ref_top = _logits(reference_model, ids)[:, :-1].argmax(-1)
        agree += (top.cpu() == ref_top.cpu()).sum().item()
        count += top.numel()
    return agree / count


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    from ..io.sources import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="olica eval", description="Evaluate a dense or pruned model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{ppl,behaviour}")
    p = sub.add_parser("ppl", help="perplexity on held-out text (and top-1 agreement with --reference)",
                       description="Perplexity on non-overlapping chunks of held-out text: exp of the mean "
                                   "next-token NLL over all predicted tokens.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"HF dir, Olica checkpoint, .gguf or {DEFAULT_MODEL} (default)")
    p.add_argument("--text", default="pydoc",
                   help="pydoc (held-out part, offline default), a .txt/.jsonl file or folder, wikitext2, c4, alpaca")
    p.add_argument("--suite", nargs="?", const="report", choices=["report", "dev", "all"], default=None,
                   help="score every domain of the evaluation suite (olica_prune.eval.suite) instead of --text: the "
                        "report domains (default), the dev domains or all, plus pydoc's held-out split as an extra "
                        "row; prints per-domain perplexity and the geometric mean")
    p.add_argument("--seq-len", type=int, default=128, help="chunk length in tokens (default 128)")
    p.add_argument("--max-chunks", type=int, default=None, help="score only the first K chunks")
    p.add_argument("--reference", default=None, help="model to measure top-1 next-token agreement against")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # Parsed by olica_prune.eval.behaviour (eval_main hands it the arguments untouched); listed for --help.
    sub.add_parser("behaviour", add_help=False,
                   help="chat exact-match and zero-shot multiple-choice accuracy through vLLM "
                        "(olica eval behaviour --help)")
    return parser


def _load(model: str, *, dtype: torch.dtype, device: str):
    from transformers import AutoTokenizer

    from ..model.modeling import load_causal_lm
    from ..io.sources import resolve_model

    path = resolve_model(model)
    return load_causal_lm(path, dtype=dtype, device=device), AutoTokenizer.from_pretrained(str(path))


def eval_main(argv: list[str]) -> int:
    """``olica eval ...``: parse ``argv`` (the words after "eval"), measure, print."""
    if argv[:1] == ["behaviour"]:
        from .behaviour import behaviour_main

        return behaviour_main(argv[1:])
    from ..io.data import eval_chunks, split_label

    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("max_chunks", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    progress = not (args.quiet or args.json)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    t0 = time.perf_counter()
    if args.suite:
        from . import suite

        names = {"report": suite.REPORT_DOMAINS, "dev": suite.DEV_DOMAINS,
                 "all": suite.DEV_DOMAINS + suite.REPORT_DOMAINS}[args.suite]
        for name in names:
            suite.domain_text(name)  # one clear error before any model is loaded if the texts are missing
    model, tokenizer = _load(args.model, dtype=dtype, device=device)
    ref_model = None
    if args.reference is not None:
        if args.reference == args.model:
            ref_model, ref_tokenizer = model, tokenizer
        else:
            ref_model, ref_tokenizer = _load(args.reference, dtype=dtype, device=device)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            from ..io.data import DataSourceError

            raise DataSourceError(f"{args.reference} and {args.model} use different tokenizers; "
                                  "token agreement needs the same vocabulary")
    if args.suite:
        return _suite_report(args, names, model, tokenizer, ref_model, dtype_name=dtype_name, device=device,
                             progress=progress, t0=t0)
    chunks = eval_chunks(tokenizer, args.text, seq_len=args.seq_len, max_chunks=args.max_chunks)
    total, count = negative_log_likelihood(model, chunks, batch_size=args.batch_size, progress=progress)
    result = {
        "model": args.model,
        "perplexity": math.exp(total / count),
        "text": args.text,
        "split": split_label(args.text, "eval"),
        "seq_len": args.seq_len,
        "chunks": chunks.shape[0],
        "predicted_tokens": count,
        "dtype": dtype_name,
        "device": device,
    }
    if ref_model is not None:
        result["reference"] = args.reference
        result["token_agreement"] = token_agreement(model, ref_model, chunks, batch_size=args.batch_size,
                                                    progress=progress)
    result["seconds"] = round(time.perf_counter() - t0, 1)

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"perplexity {result['perplexity']:.2f} ({result['split']}, seq-len {args.seq_len}, "
          f"{result['chunks']} chunks, {count} predicted tokens; {args.model}, {dtype_name})")
    if args.reference is not None:
        print(f"token agreement {result['token_agreement']:.4f} with {args.reference} "
              f"(top-1 next token, same {count} positions)")
    return 0


def _suite_report(args, names, model, tokenizer, ref_model, *, dtype_name: str, device: str, progress: bool,
                  t0: float) -> int:
    """Per-domain perplexity (and agreement) over the suite; geometric means per role."""
    from . import suite
    from ..io.data import eval_chunks

    rows = {}
    texts = {n: str(suite.text_dir() / f"{n}.txt") for n in names}
    texts["pydoc"] = "pydoc"
    for name, text in texts.items():
        chunks = eval_chunks(tokenizer, text, seq_len=args.seq_len, max_chunks=args.max_chunks)
        total, count = negative_log_likelihood(model, chunks, batch_size=args.batch_size, progress=progress)
        role = ("report" if name in suite.REPORT_DOMAINS else "dev" if name in suite.DEV_DOMAINS
                else "extra: pydoc held-out (in-domain only for a model calibrated on pydoc)")
        row = {"role": role, "kind": suite.DOMAINS[name].kind if name in suite.DOMAINS else "technical",
               "perplexity": math.exp(total / count), "chunks": int(chunks.shape[0]), "predicted_tokens": count}
        if ref_model is not None:
            row["token_agreement"] = token_agreement(model, ref_model, chunks, batch_size=args.batch_size)
        rows[name] = row
    result = {"model": args.model, "seq_len": args.seq_len, "dtype": dtype_name, "device": device,
              "reference": args.reference, "domains": rows}
    for role in ("report", "dev"):
        vals = [r["perplexity"] for r in rows.values() if r["role"] == role]
        if vals:
            result[f"geomean_{role}"] = geometric_mean(vals)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    agree = ref_model is not None
    print(f"{args.model}: perplexity per domain (seq-len {args.seq_len}, non-overlapping chunks, {dtype_name})")
    print(f"{'domain':14s} {'role':7s} {'kind':13s} {'PPL':>9s}" + (f" {'top-1 agr.':>10s}" if agree else ""))
    for name, r in rows.items():
        print(f"{name:14s} {r['role'].split(':')[0]:7s} {r['kind']:13s} {r['perplexity']:9.2f}"
              + (f" {r['token_agreement']:10.3f}" if agree else ""))
    for role in ("report", "dev"):
        if f"geomean_{role}" in result:
            print(f"geometric mean over the {role} domains: {result[f'geomean_{role}']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(eval_main(sys.argv[1:]))
