"""The vLLM model (olica_serve) against the transformers reference, on tiny checkpoints.

Each checkpoint is served by one vLLM engine (fp32, CPU, eager) and decoded
greedily: the tokens must equal those of ``olica_prune.model.modeling.OlicaForCausalLM``
on the same weights, and the top-k logprobs must agree (vLLM's
``check_logprobs_close`` idea: at a divergence each side's token must be in the
other's top-k; here a divergence is also a failure, since the weights are
scaled so that greedy choices are decisive). Bad checkpoints are checked
without starting an engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vllm  # noqa: E402,F401  (fails, not skips, without vLLM: pip install 'olica[cpu]' or 'olica[gpu]')

from olica_prune.contract import LayerSpec, OlicaCheckpointError  # noqa: E402
from olica_prune.model.modeling import load_causal_lm  # noqa: E402
from tinymodels import random_olica_model, save_model_checkpoint, tiny_config  # noqa: E402

pytestmark = pytest.mark.vllm

NUM_PROMPTS = 8
NEW_TOKENS = 32
TOP_K = 5
# |logprob(vLLM) - logprob(transformers)| on shared top-k tokens, fp32 on CPU.
LOGPROB_ATOL = 2e-4  # observed 2.3e-05
# Smallest top-1/top-2 logprob gap the reference may show: far above the
# vLLM/transformers difference, so no greedy choice can flip on rounding.
MIN_DECISIVE_GAP = 1e-3  # observed minima 0.0023 (mistral-mha) .. 0.046


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    num_heads: int
    num_kv_heads: int
    layers: tuple[LayerSpec, ...]
    qkv_bias: bool = False
    tie_word_embeddings: bool = False


# head_dim 32: the smallest head size vLLM's CPU attention supports.
CASES = {
    # dense and factorised Q/K in one model, v_head_dim < head_dim, a different
    # FFN width per layer, calibration on one layer only, GQA (4 query / 2 KV heads)
    "llama-gqa": Case("llama", 4, 2, (
        LayerSpec(q_rank=None, k_rank=None, v_head_dim=32, intermediate_size=128, calibration_rank=0),
        LayerSpec(q_rank=32, k_rank=None, v_head_dim=16, intermediate_size=96, calibration_rank=16),
        LayerSpec(q_rank=None, k_rank=32, v_head_dim=24, intermediate_size=64, calibration_rank=0),
    )),
    # Qwen2 Q/K/V bias (on lowrank_b when factorised), tied embeddings, one KV
    # head (replicated across ranks under TP=2)
    "qwen2-bias-tied-mqa": Case("qwen2", 4, 1, (
        LayerSpec(q_rank=32, k_rank=32, v_head_dim=16, intermediate_size=64, calibration_rank=32),
        LayerSpec(q_rank=None, k_rank=None, v_head_dim=32, intermediate_size=128, calibration_rank=0),
        LayerSpec(q_rank=None, k_rank=16, v_head_dim=8, intermediate_size=96, calibration_rank=16),
    ), qkv_bias=True, tie_word_embeddings=True),
    # Mistral source, multi-head attention
    "mistral-mha": Case("mistral", 4, 4, (
        LayerSpec(q_rank=64, k_rank=64, v_head_dim=24, intermediate_size=96, calibration_rank=0),
        LayerSpec(q_rank=None, k_rank=None, v_head_dim=32, intermediate_size=64, calibration_rank=32),
    )),
}
TP_CASE = "qwen2-bias-tied-mqa"
PP_CASE = "llama-gqa"


def scale_weights(model: torch.nn.Module, *, seed: int) -> torch.nn.Module:
    """Give every sub-layer an O(1) effect and the logits a wide spread.

    The default init (std 0.02) makes each layer nearly the identity and the
    logits nearly tied, so greedy decoding would hinge on rounding noise.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                continue  # random_olica_model already randomised these
            if "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.startswith("lm_head"):  # logits with std ~6
                p.copy_(torch.randn(p.shape, generator=g) * 6 / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return model


def make_checkpoint(case: Case, path: Path, *, seed: int = 0) -> Path:
    cfg = tiny_config(family=case.family, hidden_size=64, num_heads=case.num_heads, num_kv_heads=case.num_kv_heads,
                      head_dim=32, intermediate_size=128, num_layers=len(case.layers), vocab_size=256,
                      tie_word_embeddings=case.tie_word_embeddings)
    model = random_olica_model(cfg, list(case.layers), qkv_bias=case.qkv_bias, seed=seed)
    return save_model_checkpoint(scale_weights(model, seed=seed + 100), path)


def prompts(vocab_size: int = 256) -> list[list[int]]:
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, vocab_size, (3 + 2 * i,), generator=g).tolist() for i in range(NUM_PROMPTS)]


# A run: per prompt, (generated tokens, per step {token: logprob} of the top-k).
Run = list[tuple[list[int], list[dict[int, float]]]]


def transformers_greedy(path: Path) -> Run:
    """Greedy decoding with the transformers reference, full recompute each step (no KV cache)."""
    model = load_causal_lm(path)
    out: Run = []
    with torch.no_grad():
        for ids in prompts():
            seq, toks, tops = list(ids), [], []
            for _ in range(NEW_TOKENS):
                logprobs = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].double(), -1)
                top = torch.topk(logprobs, TOP_K)
                tops.append({int(t): float(v) for t, v in zip(top.indices, top.values)})
                toks.append(int(top.indices[0]))
                seq.append(toks[-1])
            out.append((toks, tops))
    return out


@contextlib.contextmanager
def engine_env(workers: int = 1):
    """The environment of a test engine, restored afterwards: a 1 GiB CPU KV cache, one core
    per worker, and the engine core in this process (TP/PP workers are still processes of
    their own): vLLM's separate engine-core process adds ~17 s to every start on 2 cores and
    runs the same model code."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if workers > 1:
            env.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(workers)))
        yield


def close_engine(llm) -> None:
    """Stop the engine now (its KV cache and workers), not whenever ``llm`` is collected."""
    llm.llm_engine.engine_core.shutdown()
    gc.collect()


def vllm_greedy(path: Path, *, tp: int = 1, pp: int = 1, dtype: str = "float32",
                quantization: str | None = None) -> Run:
    """Start one engine, decode every prompt greedily, shut the engine down.

    Eager mode, except with ``pp`` > 1: vLLM 0.32's CPU pipeline parallelism fails in eager mode
    (deploy/pipeline-parallel.md) and runs with a dynamo trace and the eager backend (mode 2),
    which needs no C++ compiler."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    mode = (dict(compilation_config={"mode": 2, "backend": "eager"}, pipeline_parallel_size=pp,
                 distributed_executor_backend="mp") if pp > 1 else dict(enforce_eager=True))
    with engine_env(tp * pp):
        llm = LLM(model=str(path), skip_tokenizer_init=True, dtype=dtype, max_model_len=128,
                  max_num_seqs=NUM_PROMPTS, tensor_parallel_size=tp, seed=0, quantization=quantization, **mode)
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=TOP_K, ignore_eos=True,
                                detokenize=False)
        results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts()], params, use_tqdm=False)
        close_engine(llm)
    return [(list(c.token_ids), [{t: lp.logprob for t, lp in step.items()} for step in c.logprobs])
            for c in (r.outputs[0] for r in results)]


def assert_runs_close(ref: Run, got: Run, *, ref_name: str, got_name: str) -> float:
    """Same greedy tokens everywhere, top-k logprobs within LOGPROB_ATOL; returns the max difference."""
    worst = 0.0
    assert len(ref) == len(got) == NUM_PROMPTS
    for p, ((ref_toks, ref_tops), (got_toks, got_tops)) in enumerate(zip(ref, got)):
        assert len(ref_toks) == len(got_toks) == NEW_TOKENS, (p, len(ref_toks), len(got_toks))
        for step, (a, b) in enumerate(zip(ref_toks, got_toks)):
            ref_top, got_top = ref_tops[step], got_tops[step]
            if a != b:
                raise AssertionError(
                    f"prompt {p}, token {step}: {ref_name} chose {a}, {got_name} chose {b} "
                    f"({b} in {ref_name}'s top-{TOP_K}: {b in ref_top}; {a} in {got_name}'s top-{TOP_K}: "
                    f"{a in got_top}); {ref_name} top-k {ref_top}, {got_name} top-k {got_top}"
                )
            shared = set(ref_top) & set(got_top)
            # vLLM adds the sampled token to the top-k; a near tie at rank k may swap one entry.
            assert a in shared and len(shared) >= TOP_K - 1, (p, step, ref_top, got_top)
            for t in shared:
                diff = abs(ref_top[t] - got_top[t])
                worst = max(worst, diff)
                assert diff <= LOGPROB_ATOL, (
                    f"prompt {p}, token {step}: logprob of {t} is {got_top[t]:.6f} in {got_name}, "
                    f"{ref_top[t]:.6f} in {ref_name}"
                )
    return worst


def min_top2_gap(run: Run) -> float:
    return min(sorted(top.values())[-1] - sorted(top.values())[-2] for _, tops in run for top in tops)


# ----------------------------------------------------------------------------
# Engines (one per checkpoint and TP size, shared by the module)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("olica-ckpts")
    return {name: make_checkpoint(case, root / name) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def vllm_runs(checkpoints):
    cache: dict[tuple[str, int, int], Run] = {}

    def run(name: str, tp: int = 1, pp: int = 1) -> Run:
        if (name, tp, pp) not in cache:
            cache[(name, tp, pp)] = vllm_greedy(checkpoints[name], tp=tp, pp=pp)
        return cache[(name, tp, pp)]

    return run


@pytest.mark.parametrize("name", list(CASES))
def test_vllm_matches_transformers(name, checkpoints, vllm_runs):
    ref = transformers_greedy(checkpoints[name])
    assert min_top2_gap(ref) > MIN_DECISIVE_GAP, "weights not decisive enough for a greedy comparison"
    worst = assert_runs_close(ref, vllm_runs(name), ref_name="transformers", got_name="vLLM")
    print(f"{name}: max |logprob diff| {worst:.2e}, min top-2 gap {min_top2_gap(ref):.3f}")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="TP=2 on CPU needs two cores")
def test_tensor_parallel_2_matches_1(vllm_runs):
    worst = assert_runs_close(vllm_runs(TP_CASE), vllm_runs(TP_CASE, tp=2), ref_name="TP=1", got_name="TP=2")
    print(f"{TP_CASE}: TP=2 vs TP=1 max |logprob diff| {worst:.2e}")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="PP=2 on CPU needs two cores")
def test_pipeline_parallel_2_matches_1(vllm_runs):
    """Two stages (layers 0-1 and 2 of llama-gqa, different widths per layer) decode as one."""
    worst = assert_runs_close(vllm_runs(PP_CASE), vllm_runs(PP_CASE, pp=2), ref_name="PP=1", got_name="PP=2")
    print(f"{PP_CASE}: PP=2 vs PP=1 max |logprob diff| {worst:.2e}")


# ----------------------------------------------------------------------------
# Registration


def test_register_is_reentrant():
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    import olica_serve

    for _ in range(3):
        assert olica_serve.register() is True
    assert "OlicaForCausalLM" in ModelRegistry.get_supported_archs()
    assert "OlicaForCausalLM" in MODELS_CONFIG_MAP
    cls = ModelRegistry._try_load_model_cls("OlicaForCausalLM")
    assert cls is not None and cls.__module__ == "olica_serve.model"


def test_register_turns_the_broken_cpu_aot_cache_off_unless_the_user_chose(monkeypatch):
    import olica_serve

    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert olica_serve.register() is True
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"  # vllm-cpu: the suite's vLLM build
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    assert olica_serve.register() is True
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"


def test_register_without_vllm_is_a_logged_noop(monkeypatch, caplog):
    import olica_serve

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with caplog.at_level(logging.INFO, logger="olica_serve"):
        assert olica_serve.register() is False
    assert "vLLM is not importable" in caplog.text


# ----------------------------------------------------------------------------
# Bad checkpoints: the load path's checks, without an engine


def _edited_copy(src: Path, dst: Path, *, config=None, tensors=None) -> Path:
    """Copy a checkpoint, editing config.json and/or the tensor dict."""
    dst.mkdir(parents=True)
    cfg = json.loads((src / "config.json").read_text())
    if config is not None:
        config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(src / "model.safetensors"))
    if tensors is not None:
        tensors(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _load_through_model_checks(path: Path) -> None:
    """Stream a checkpoint through the checks OlicaForCausalLM.load_weights applies."""
    from transformers import AutoConfig
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    from olica_serve.model import checked_weights

    config = AutoConfig.from_pretrained(path)
    for _ in checked_weights(config, safetensors_weights_iterator(sorted(map(str, path.glob("*.safetensors"))),
                                                                  use_tqdm_on_load=False)):
        pass


def test_good_checkpoint_passes_the_checks(checkpoints):
    for path in checkpoints.values():
        _load_through_model_checks(path)


def _engine_config(path: Path, *, tp: int = 1):
    """Build vLLM's config for ``path`` the way `vllm serve` / LLM() do, without starting an engine."""
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(path), skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
                      max_model_len=128, tensor_parallel_size=tp).create_engine_config()


def assert_refused(path: Path, message: str) -> None:
    """Both the front end (config hook, before any engine process) and the model's weight loading refuse."""
    # vLLM wraps the error raised in its config hook in a pydantic ValidationError (a ValueError).
    with pytest.raises(ValueError, match=message):
        _engine_config(path)
    with pytest.raises(OlicaCheckpointError, match=message):
        _load_through_model_checks(path)


def test_tensor_shape_mismatch_is_named(checkpoints, tmp_path):
    name = "model.layers.1.self_attn.v_proj.weight"

    def shrink(state):
        state[name] = state[name][:-8].contiguous()  # [2 KV heads * 16, 64] -> [24, 64]

    bad = _edited_copy(checkpoints["llama-gqa"], tmp_path / "bad", tensors=shrink)
    assert_refused(bad, rf"tensor {name} has shape \[24, 64\] but the olica block implies \[32, 64\]")


def test_config_disagreeing_with_tensors_is_named(checkpoints, tmp_path):
    def widen(cfg):
        cfg["olica"]["layers"][2]["intermediate_size"] = 96  # tensors hold 64

    bad = _edited_copy(checkpoints["llama-gqa"], tmp_path / "bad", config=widen)
    assert_refused(bad, r"tensor model\.layers\.2\.mlp\.\w+_proj\.weight has shape "
                        r"\[64, 64\] but the olica block implies \[(96, 64|64, 96)\]")


def test_missing_tensor_is_named(checkpoints, tmp_path):
    name = "model.layers.0.mlp.calibration.lowrank_b.weight"
    bad = _edited_copy(checkpoints["qwen2-bias-tied-mqa"], tmp_path / "bad", tensors=lambda s: s.pop(name))
    assert_refused(bad, rf"tensor {name} with shape \[64, 32\] is missing")


def test_unknown_tensor_is_named(checkpoints, tmp_path):
    def add(state):
        state["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)

    bad = _edited_copy(checkpoints["llama-gqa"], tmp_path / "bad", tensors=add)
    assert_refused(bad, r"unexpected tensor model\.layers\.0\.self_attn\.o_proj\.bias with shape \[64\]")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["olica"].update(format_version=2), r"olica\.format_version 2 is not supported"),
        (lambda c: c["olica"].pop("format_version"), r"'olica' block has no format_version"),
        (lambda c: c.pop("olica"), r"config\.json has no 'olica' block: this is not an Olica checkpoint"),
    ],
    ids=["unknown-format-version", "missing-format-version", "missing-olica-block"],
)
def test_bad_olica_block_is_refused(checkpoints, tmp_path, edit, message):
    assert_refused(_edited_copy(checkpoints["llama-gqa"], tmp_path / "bad", config=edit), message)


def test_tensor_parallel_not_dividing_a_width_is_named(checkpoints, tmp_path):
    def odd(cfg):
        cfg["olica"]["layers"][1]["intermediate_size"] = 90
        cfg["olica"]["layers"][1]["calibration_rank"] = 15

    bad = _edited_copy(checkpoints["llama-gqa"], tmp_path / "bad", config=odd)
    with pytest.raises(ValueError, match=r"tensor_parallel_size=4 does not divide these widths: "
                                         r"layers\[1\]\.intermediate_size=90, layers\[1\]\.calibration_rank=15"):
        _engine_config(bad, tp=4)
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 does not divide these widths: "
                                         r"layers\[1\]\.calibration_rank=15;"):
        _engine_config(bad, tp=2)
    _engine_config(checkpoints["llama-gqa"], tp=2)  # the good one splits evenly
