"""After ``import olica_prune``, transformers' AutoModelForCausalLM loads Olica checkpoints
as OlicaForCausalLM (no remote code), and dense models exactly as before."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import olica_prune  # noqa: F401  (installs the AutoModel hook)
from olica_prune.contract import LayerSpec
from olica_prune.model.modeling import OlicaForCausalLM
from tinymodels import random_dense_model, random_olica_model, save_model_checkpoint, tiny_config

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [LayerSpec(q_rank=None, k_rank=None, v_head_dim=16, intermediate_size=128, calibration_rank=0),
          LayerSpec(q_rank=32, k_rank=16, v_head_dim=8, intermediate_size=96, calibration_rank=16)]


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2"])
def checkpoints(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"auto-{family}")
    cfg = tiny_config(family=family, num_layers=2)
    olica = save_model_checkpoint(random_olica_model(cfg, LAYERS, qkv_bias=family == "qwen2", seed=1),
                                  root / "olica")
    dense = save_model_checkpoint(random_dense_model(cfg, seed=2), root / "dense")
    return family, olica, dense


def test_automodel_loads_olica_checkpoints_and_dense_ones_as_before(checkpoints):
    from transformers import AutoModelForCausalLM

    family, olica, dense = checkpoints
    auto = AutoModelForCausalLM.from_pretrained(olica, dtype=torch.float32).eval()
    assert type(auto) is OlicaForCausalLM
    direct = OlicaForCausalLM.from_pretrained(olica, dtype=torch.float32).eval()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(auto(ids).logits, direct(ids).logits)
    dense_model = AutoModelForCausalLM.from_pretrained(dense)
    expected = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family]
    assert type(dense_model).__name__ == expected


def test_automodel_from_config_builds_the_olica_class(checkpoints):
    from transformers import AutoConfig, AutoModelForCausalLM

    _, olica, _ = checkpoints
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(olica))
    assert type(model) is OlicaForCausalLM
    assert model.model.layers[1].mlp.down_proj.weight.shape[1] == 96


@pytest.mark.parametrize("first", ["transformers", "olica_prune"])
def test_import_order_does_not_matter(checkpoints, first):
    """transformers imported before or after olica_prune, in a fresh interpreter."""
    _, olica, _ = checkpoints
    imports = ("from transformers import AutoModelForCausalLM\nimport olica_prune" if first == "transformers"
               else "import olica_prune\nfrom transformers import AutoModelForCausalLM")
    code = f"{imports}\nprint(type(AutoModelForCausalLM.from_pretrained({str(olica)!r})).__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "OlicaForCausalLM"


def test_without_olica_import_transformers_alone_cannot_load_it(checkpoints):
    """The hook is what makes it work (so the tests above test it)."""
    _, olica, _ = checkpoints
    code = f"from transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained({str(olica)!r})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode != 0


def test_dense_configs_without_architectures_still_load(checkpoints, tmp_path):
    """Configs that name no architecture (e.g. built in code) go to transformers unchanged."""
    import json
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    family, _, dense = checkpoints
    cfg = AutoConfig.from_pretrained(dense)
    cfg.architectures = None
    assert type(AutoModelForCausalLM.from_config(cfg)).__name__.endswith("ForCausalLM")
    bare = tmp_path / "bare"
    shutil.copytree(dense, bare)
    raw = json.loads((bare / "config.json").read_text())
    raw.pop("architectures")
    (bare / "config.json").write_text(json.dumps(raw))
    model = AutoModelForCausalLM.from_pretrained(bare)
    assert type(model) is not OlicaForCausalLM
