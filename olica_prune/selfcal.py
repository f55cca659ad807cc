"""``--calibration self``: calibration tokens sampled from the dense model itself.

No data at all: the model writes its own calibration text, so calibration
follows the distribution the model was trained to produce rather than one
domain a user happened to have on disk. Half of the samples start from the
chat template with a short, generic request (drawn from a fixed list of task
kinds and topics, written for this project), half from the BOS token alone;
sampling at temperature 1 (no top-p/top-k), until EOS or a length cap. The
samples are deduplicated, joined into one token stream (EOS between samples)
and cut into consecutive ``seq_len`` windows, like documents of a text source.

The result is cached in ``$OLICA_CACHE/selfcal`` keyed by the model's files and
every sampling setting, so repeated prunes of one model reuse it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

VERSION = 1  # bump when the sampling procedure changes (invalidates the cache)

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


def _cache_key(model_dir: Path, num_samples: int, seq_len: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": VERSION, "n": num_samples, "seq": seq_len, "seed": seed}).encode())
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


@torch.no_grad()
def _generate(model, prompts: list[list[int]], *, max_new: int, eos: int, pad: int, device) -> list[list[int]]:
    """Sample (temperature 1) a continuation of each prompt; returns prompt + continuation up to EOS."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=1.0,
                         top_p=1.0, top_k=0, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad)
    seqs = []
    for r, p in enumerate(prompts):
        new = out[r, width:].tolist()
        if eos in new:
            new = new[: new.index(eos)]
        seqs.append(p + new)
    return seqs


def self_calibration(model_dir: str | Path, tokenizer, *, num_samples: int = 128, seq_len: int = 128,
                     seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 32,
                     progress: bool = True, use_cache: bool = True) -> torch.LongTensor:
    """``[num_samples, seq_len]`` calibration windows cut from text the model samples itself."""
    from .modeling import load_causal_lm
    from .sources import cache_dir

    model_dir = Path(model_dir)
    cache_file = cache_dir() / "selfcal" / f"{_cache_key(model_dir, num_samples, seq_len, seed)}.pt"
    if use_cache and cache_file.is_file():
        return torch.load(cache_file)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_causal_lm(model_dir, dtype=dtype, device=str(device))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rng = random.Random(seed)
    torch.manual_seed(seed)
    need = num_samples * seq_len
    stream: list[int] = []
    seen: set[tuple[int, ...]] = set()
    bar = tqdm(total=need, desc="sampling calibration text from the model", unit="tok", disable=not progress)
    rounds = 0
    while len(stream) < need:
        rounds += 1
        if rounds > 50:
            raise RuntimeError("self-calibration: the model keeps producing duplicate or empty samples")
        for seq in _generate(model, _prompts(tokenizer, batch_size, rng), max_new=2 * seq_len, eos=eos, pad=pad,
                             device=device):
            key = tuple(seq)
            if key in seen or len(seq) < 8:
                continue
            seen.add(key)
            stream.extend(seq + [eos])
        bar.update(min(need, len(stream)) - bar.n)
    bar.close()
    del model
    ids = torch.tensor(stream[:need], dtype=torch.long).view(num_samples, seq_len)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save(ids, tmp)
        tmp.replace(cache_file)
    return ids
