"""``--calibration self``: calibration tokens sampled from the dense model itself.

No data at all: the model writes its own calibration text, so calibration
follows the distribution the model was trained to produce rather than one
domain a user happened to have on disk. Half of the samples start from the
chat template with a short, generic request (drawn from a fixed list of task
kinds and topics, written for this project), half from the BOS token alone;
sampling at temperature 1 (no top-p/top-k), until EOS or a length cap. The
samples are deduplicated, joined into one token stream (EOS between samples)
and cut into consecutive ``seq_len`` windows, like documents of a text source.

Two engines draw from that same distribution: vLLM (batched, continuous
batching; run in a child process, ``olica_prune.tools.selfcal_vllm``, so the pruner
never imports vLLM and gets the memory back) when it is installed, and
transformers' ``generate`` otherwise. vLLM is several times faster on a CPU.

The result is cached in ``$OLICA_CACHE/selfcal`` keyed by the model's files,
the engine and every sampling setting, so repeated prunes of one model reuse it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

VERSION = 1  # bump when the sampling procedure changes (invalidates the cache)
ENGINES = ("auto", "vllm", "transformers")

TASKS = (
    "Write a short story about {t}.",
    "Explain {t} to a curious teenager.",
    "Write a friendly letter to a neighbour about {t}.",
    "Describe a typical day that involves {t}.",
    "Give some practical advice about {t}.",
    "Write a news report about {t}.",
    "What are the pros and cons of {t}?",
    "Tell me the history of {t} in a few paragraphs.",
    "Write a dialogue between two friends talking about {t}.",
    "Summarise what most people get wrong about {t}.",
    "Write a short essay on {t}.",
    "Describe {t} as if writing an encyclopedia entry.",
    "Write a blog post about your experience with {t}.",
    "Answer a customer's complaint about {t} politely.",
    "Write a poem about {t}.",
    "Explain step by step how {t} works.",
)
TOPICS = (
    "gardening", "the ocean", "a rainy afternoon", "train travel", "learning a language", "the moon landing",
    "baking bread", "a lost dog", "city parks", "saving money", "the first day at a new job", "volcanoes",
    "ancient Rome", "football", "a small bakery", "climate and weather", "public libraries", "birds",
    "a wedding", "renting an apartment", "the human heart", "music lessons", "a mountain hike", "electric cars",
    "a family dinner", "honey bees", "the printing press", "a broken phone", "winter holidays", "chess",
    "a village market", "sleep", "the stock market", "a museum visit", "friendship", "coffee", "a courtroom",
    "recycling", "a thunderstorm", "the internet", "medieval castles", "a job interview", "painting",
    "the solar system", "a long flight", "cooking rice", "a school election", "insurance", "the desert",
)


def _cache_key(model_dir: Path, num_samples: int, seq_len: int, seed: int, engine: str = "transformers") -> str:
    h = hashlib.sha256()
    settings = {"v": VERSION, "n": num_samples, "seq": seq_len, "seed": seed}
    if engine != "transformers":  # the transformers engine keeps the keys of caches written before vLLM
        settings["engine"] = engine
    h.update(json.dumps(settings).encode())
    for f in sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    h.update(str(model_dir.resolve()).encode())
    return h.hexdigest()[:20]


def _prompts(tokenizer, count: int, rng: random.Random) -> list[list[int]]:
    """``count`` prompts: chat requests and bare BOS starts, alternating."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    has_template = bool(getattr(tokenizer, "chat_template", None))
    out = []
    for i in range(count):
        if has_template and i % 2 == 0:
            request = rng.choice(TASKS).format(t=rng.choice(TOPICS))
            text = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                                 tokenize=False)
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            out.append([bos])
    return out


# A sampler maps prompts to their continuations (new tokens only, EOS and what follows cut off).
Sampler = Callable[[list[list[int]]], list[list[int]]]


def sample_stream(sampler: Sampler, tokenizer, *, num_samples: int, seq_len: int, seed: int,
                  batch_size: int | None = None, progress: bool = True) -> torch.LongTensor:
    """Prompt, sample, deduplicate and window: the procedure both engines share.

    ``batch_size`` prompts per round; ``None`` sizes each round from the tokens still
    needed and the mean sample length so far (one or two rounds for a batched engine).
    """
    tokenizer_eos = tokenizer.eos_token_id
    rng = random.Random(seed)
    need = num_samples * seq_len
    stream: list[int] = []
    seen: set[tuple[int, ...]] = set()
    kept = 0  # samples in the stream
    bar = tqdm(total=need, desc="sampling calibration text from the model", unit="tok", disable=not progress)
    rounds = 0
    while len(stream) < need:
        rounds += 1
        if rounds > 50:
            raise RuntimeError("self-calibration: the model keeps producing duplicate or empty samples")
        count = batch_size
        if count is None:  # enough prompts for what is missing, with a margin, by the mean length so far
            # (before any: the length cap, which most samples reach; SmolLM2's mean is ~0.9 of it)
            mean_len = len(stream) / kept if kept else 2 * seq_len
            count = max(8, int(1.15 * (need - len(stream)) / max(mean_len, 8.0)) + 1)
        prompts = _prompts(tokenizer, count, rng)
        for prompt, new in zip(prompts, sampler(prompts)):
            seq = prompt + new
            key = tuple(seq)
            if key in seen or len(seq) < 8:
                continue
            seen.add(key)
            stream.extend(seq + [tokenizer_eos])
            kept += 1
        bar.update(min(need, len(stream)) - bar.n)
    bar.close()
    return torch.tensor(stream[:need], dtype=torch.long).view(num_samples, seq_len)


@torch.no_grad()
def _generate(model, prompts: list[list[int]], *, max_new: int, eos: int, pad: int, device) -> list[list[int]]:
    """Sample (temperature 1) a continuation of each prompt with transformers; new tokens up to EOS."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=1.0,
                         top_p=1.0, top_k=0, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad)
    seqs = []
    for r in range(len(prompts)):
        new = out[r, width:].tolist()
        if eos in new:
            new = new[: new.index(eos)]
        seqs.append(new)
    return seqs


def _transformers_stream(model_dir: Path, tokenizer, *, num_samples: int, seq_len: int, seed: int, device,
                         batch_size: int, progress: bool) -> torch.LongTensor:
    from ..model.modeling import load_causal_lm

    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_causal_lm(model_dir, dtype=dtype, device=str(device))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    torch.manual_seed(seed)

    def sampler(prompts):
        return _generate(model, prompts, max_new=2 * seq_len, eos=eos, pad=pad, device=device)

    return sample_stream(sampler, tokenizer, num_samples=num_samples, seq_len=seq_len, seed=seed,
                         batch_size=batch_size, progress=progress)


def _vllm_stream(model_dir: Path, tokenizer, *, num_samples: int, seq_len: int, seed: int,
                 progress: bool) -> torch.LongTensor:
    """Sample in a child process running vLLM (``olica_prune.tools.selfcal_vllm``)."""
    with tempfile.TemporaryDirectory(prefix="olica-selfcal-") as tmp:
        out = Path(tmp) / "ids.pt"
        # the caller's tokenizer, so that both engines build the same prompts
        tokenizer.save_pretrained(Path(tmp) / "tokenizer")
        cmd = [sys.executable, "-m", "olica_prune.tools.selfcal_vllm", str(model_dir), "--out", str(out),
               "--tokenizer", str(Path(tmp) / "tokenizer"),
               "--num-samples", str(num_samples), "--seq-len", str(seq_len), "--seed", str(seed)]
        cmd += [] if progress else ["--quiet"]
        # A CPU KV cache that holds every request at once: with the 1 GiB many setups use,
        # vLLM preempts and recomputes requests, and SmolLM2's sampling ran 2.7x slower.
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("OLICA_SELFCAL_KV_GIB", "4"))
        # The child is already a process of its own: its engine core runs in it rather than in
        # a third process (that one costs ~17 s of start-up on 2 cores).
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        code, logs = _run_child(cmd, env=env, show_stderr=progress)
        if code != 0 or not out.is_file():
            raise SamplerError(f"self-calibration with vLLM failed (exit {code}): {_root_cause(logs)}")
        return torch.load(out)


def _run_child(cmd: list[str], *, env: dict[str, str], show_stderr: bool) -> tuple[int, str]:
    """Run ``cmd``; returns its exit code and its output (vLLM logs to stdout). Its stderr (the
    progress bar) is passed through to ours when ``show_stderr``; both are kept for the error."""
    import threading

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kept: dict[str, list[bytes]] = {"out": [], "err": []}

    def pump(stream, key: str, echo) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            kept[key].append(chunk)
            if echo is not None:
                echo.write(chunk)
                echo.flush()

    threads = [threading.Thread(target=pump, args=(proc.stdout, "out", None), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err", sys.stderr.buffer if show_stderr else None),
                                daemon=True)]
    for t in threads:
        t.start()
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C: stop vLLM too
        proc.kill()
        proc.wait()
        raise
    for t in threads:
        t.join()
    return code, b"".join(kept["out"] + kept["err"]).decode(errors="replace")


class SamplerError(RuntimeError):
    """The vLLM engine could not sample (the ``auto`` engine then falls back to transformers)."""


def _root_cause(logs: str) -> str:
    """The most telling line of a failed child's output: the first error message that is not
    one of vLLM's pointers back to it ("See stack trace above", "Engine core ... failed")."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    errors = [m.group(1) for m in (re.search(r"(\b\w+(?:Error|Exception): .*)", line) for line in lines) if m]
    telling = [e for e in errors if not re.search(r"stack trace|root cause|initialization failed", e, re.I)]
    return (telling or errors or lines[-1:] or ["no message"])[0][:300]


def choose_engine(engine: str) -> str:
    """``auto``: vLLM when it is installed, else transformers."""
    if engine not in ENGINES:
        raise ValueError(f"unknown sampling engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    return engine


def self_calibration(model_dir: str | Path, tokenizer, *, num_samples: int = 128, seq_len: int = 128,
                     seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 32,
                     progress: bool = True, use_cache: bool = True, engine: str = "auto") -> torch.LongTensor:
    """``[num_samples, seq_len]`` calibration windows cut from text the model samples itself.

    ``engine``: ``vllm``, ``transformers`` or ``auto`` (vLLM when installed). ``batch_size``
    is the transformers engine's; vLLM schedules its own batches.
    """
    model_dir = Path(model_dir)
    kwargs = dict(num_samples=num_samples, seq_len=seq_len, seed=seed, device=device, batch_size=batch_size,
                  progress=progress, use_cache=use_cache)
    chosen = choose_engine(engine)
    try:
        return _cached_stream(model_dir, tokenizer, chosen, **kwargs)
    except SamplerError as exc:
        if engine != "auto":
            raise
        # e.g. a head size vLLM's CPU attention does not support: the slower engine still works
        print(f"olica: {exc}; sampling with transformers instead", file=sys.stderr)
        return _cached_stream(model_dir, tokenizer, "transformers", **kwargs)


def _cached_stream(model_dir: Path, tokenizer, engine: str, *, num_samples: int, seq_len: int, seed: int, device,
                   batch_size: int, progress: bool, use_cache: bool) -> torch.LongTensor:
    """One engine's windows, read from the cache or sampled and then cached."""
    from .sources import cache_dir

    cache_file = cache_dir() / "selfcal" / f"{_cache_key(model_dir, num_samples, seq_len, seed, engine)}.pt"
    if use_cache and cache_file.is_file():
        return torch.load(cache_file)
    if engine == "vllm":
        ids = _vllm_stream(model_dir, tokenizer, num_samples=num_samples, seq_len=seq_len, seed=seed,
                           progress=progress)
    else:
        ids = _transformers_stream(model_dir, tokenizer, num_samples=num_samples, seq_len=seq_len, seed=seed,
                                   device=device, batch_size=batch_size, progress=progress)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save(ids, tmp)
        tmp.replace(cache_file)
    return ids
