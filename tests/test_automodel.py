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


FAMILIES = ["llama", "mistral", "qwen2"]


def _save_pair(family: str, root: Path) -> tuple[Path, Path]:
    cfg = tiny_config(family=family, num_layers=2)
    olica = save_model_checkpoint(random_olica_model(cfg, LAYERS, qkv_bias=family == "qwen2", seed=1),
                                  root / "olica")
    dense = save_model_checkpoint(random_dense_model(cfg, seed=2), root / "dense")
    return olica, dense


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoints(request, tmp_path_factory):
    family = request.param
    return (family, *_save_pair(family, tmp_path_factory.mktemp(f"auto-{family}")))


@pytest.fixture(scope="module")
def olica_of_every_family(tmp_path_factory) -> list[str]:
    """One Olica checkpoint per family, for the tests that start a fresh interpreter
    (one interpreter checks all three: each start costs seconds)."""
    return [str(_save_pair(f, tmp_path_factory.mktemp(f"fresh-{f}"))[0]) for f in FAMILIES]


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
def test_import_order_does_not_matter(olica_of_every_family, first):
    """transformers imported before or after olica_prune, in a fresh interpreter."""
    imports = ("from transformers import AutoModelForCausalLM\nimport olica_prune" if first == "transformers"
               else "import olica_prune\nfrom transformers import AutoModelForCausalLM")
    code = (f"{imports}\nfor path in {olica_of_every_family!r}:\n"
            "    print(type(AutoModelForCausalLM.from_pretrained(path)).__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-3:] == ["OlicaForCausalLM"] * 3


def test_without_olica_import_transformers_alone_cannot_load_it(olica_of_every_family):
    """The hook is what makes it work (so the tests above test it)."""
    code = ("from transformers import AutoModelForCausalLM\n"
            f"for path in {olica_of_every_family!r}:\n"
            "    try:\n"
            "        AutoModelForCausalLM.from_pretrained(path)\n"
            "        print('loaded')\n"
            "    except Exception as exc:\n"
            "        print('refused', type(exc).__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()[-3:]
    assert len(lines) == 3 and all(line.startswith("refused") for line in lines), lines


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
