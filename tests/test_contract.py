"""The checkpoint contract on its own: parsing, shapes, parameter counts, TP checks."""

import pytest

from olica_prune.contract import (
    LayerSpec,
    ModelDims,
    OlicaCheckpointError,
    OlicaSpec,
    check_checkpoint_tensors,
    check_tensor_parallel,
    count_parameters,
    expected_tensor_shapes,
)
from tinymodels import olica_config_dict, random_dense_model, tiny_config

SMOL = ModelDims(576, 9, 3, 64, 1536, 30, 49152, True)


def test_dense_parameter_count_matches_a_real_model():
    cfg = tiny_config(num_heads=4, num_kv_heads=2, tie_word_embeddings=False)
    model = random_dense_model(cfg)
    assert count_parameters(None, ModelDims.from_config(cfg)) == sum(p.numel() for p in model.parameters())
    # SmolLM2-135M, tied embeddings counted once
    assert count_parameters(None, SMOL) == 134_515_008


def test_layer_shapes_follow_the_table():
    layers = [LayerSpec(q_rank=96, k_rank=None, v_head_dim=48, intermediate_size=1152, calibration_rank=32)] * 30
    shapes = expected_tensor_shapes(OlicaSpec("LlamaForCausalLM", False, layers), SMOL)
    p = "model.layers.7."
    assert shapes[p + "self_attn.q_proj.lowrank_a.weight"] == (96, 576)
    assert shapes[p + "self_attn.q_proj.lowrank_b.weight"] == (576, 96)
    assert shapes[p + "self_attn.k_proj.weight"] == (192, 576)
    assert shapes[p + "self_attn.v_proj.weight"] == (144, 576)
    assert shapes[p + "self_attn.o_proj.weight"] == (576, 432)
    assert shapes[p + "mlp.down_proj.weight"] == (576, 1152)
    assert shapes[p + "mlp.calibration.lowrank_b.weight"] == (576, 32)
    assert "lm_head.weight" not in shapes  # tied


def test_shape_mismatch_names_tensor_and_shapes():
    cfg = tiny_config()
    dims = ModelDims.from_config(cfg)
    spec = OlicaSpec.from_config(olica_config_dict(cfg, [dims.dense_layer()] * dims.num_layers))
    found = dict(expected_tensor_shapes(spec, dims))
    found["model.layers.2.mlp.up_proj.weight"] = (100, 64)
    with pytest.raises(OlicaCheckpointError, match=r"model.layers.2.mlp.up_proj.weight has shape \[100, 64\] "
                                                   r"but the olica block implies \[128, 64\]"):
        check_checkpoint_tensors(spec, dims, found)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.update(format_version=2), "format_version 2 is not supported"),
    (lambda b: b.pop("format_version"), "no format_version"),
    (lambda b: b.update(source_architecture="GPT2LMHeadModel"), "not supported; supported"),
    (lambda b: b["layers"].pop(), "entries but num_hidden_layers"),
    (lambda b: b["layers"][0].update(v_head_dim=99), "exceeds head_dim"),
    (lambda b: b["layers"][0].update(q_rank=0), "q_rank must be null or a positive int"),
])
def test_bad_olica_blocks(edit, message):
    cfg = tiny_config()
    dims = ModelDims.from_config(cfg)
    d = olica_config_dict(cfg, [dims.dense_layer()] * dims.num_layers)
    edit(d["olica"])
    with pytest.raises(OlicaCheckpointError, match=message):
        OlicaSpec.from_config(d)


def test_tensor_parallel_checks_heads_then_widths():
    spec = OlicaSpec("LlamaForCausalLM", False, [LayerSpec(None, None, 64, 1536)] * 30)
    with pytest.raises(OlicaCheckpointError, match="num_attention_heads=9 and num_key_value_heads=3; pruning keeps"):
        check_tensor_parallel(spec, SMOL, 2)
    check_tensor_parallel(spec, SMOL, 3)
    odd = OlicaSpec("LlamaForCausalLM", False, [LayerSpec(None, None, 64, 1520)] * 30)
    with pytest.raises(OlicaCheckpointError, match=r"layers\[0\].intermediate_size=1520.*--align"):
        check_tensor_parallel(odd, SMOL, 3)
