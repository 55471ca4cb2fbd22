"""The presets for real models validate against the schema (paths unchecked), and with paths
checked a missing or mismatched model folder is refused naming the key."""

import copy
from pathlib import Path

import pytest
import yaml
from tiny_pipelines import build_sd, build_sd3

from t2i_rl_bench import study

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["ddpo_sd15_aesthetic.yaml", "dancegrpo_sd14_hps.yaml", "flowgrpo_sd35m_pickscore.yaml"]


def _preset(name):
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_real_model_presets_validate_without_weights(preset):
    cfg = study.validate(_preset(preset), check_paths=False)
    ((name, model),) = cfg["models"].items()
    assert model["family"] in ("sd", "flow") and model["mixed_precision"] == "bf16"
    assert cfg["resources"]["train"]["gpu"] == 1 and study.gpu_hours(cfg) > 0
    assert study.model_file(model).endswith("model_index.json")
    without_reward_weights = dict(
        _preset(preset),
        rewards=["jpeg_compressibility"],
        reward_settings={},
        evaluation={"rewards": ["jpeg_compressibility"], "clip_model": None},
    )
    with pytest.raises(study.ConfigError, match=rf"models\.{name}\.path.*{model['path']}"):
        study.validate(without_reward_weights, check_paths=True)


def test_a_real_model_folder_of_the_right_family_is_accepted(tmp_path):
    cfg = _preset("flowgrpo_sd35m_pickscore.yaml")
    cfg["reward_settings"] = {}
    cfg["rewards"] = cfg["evaluation"]["rewards"] = ["jpeg_compressibility"]
    cfg["models"]["sd35m"]["path"] = str(build_sd3(tmp_path / "sd3"))
    study.validate(cfg)
    wrong = copy.deepcopy(cfg)
    wrong["models"]["sd35m"]["path"] = str(build_sd(tmp_path / "sd"))
    with pytest.raises(study.ConfigError, match=r"models\.sd35m\.family.*StableDiffusionPipeline.*'flow'"):
        study.validate(wrong)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda m: m.update(family="sdxl"), r"models\.m\.family.*unknown model family 'sdxl'.*flow"),
        (lambda m: m.update(mixed_precision="bf16"), r"models\.m\.mixed_precision.*embedded"),
        (lambda m: m.update(family="sd", mixed_precision="fp8"), r"models\.m\.mixed_precision"),
    ],
)
def test_bad_model_entries_are_refused_naming_the_key(edit, key):
    cfg = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    cfg["models"] = {"m": {"path": "results/models/dit16-ddim"}}
    edit(cfg["models"]["m"])
    with pytest.raises(study.ConfigError, match=key):
        study.validate(cfg, check_paths=False)


def test_families_are_registered_once():
    """The built-in families live in the MODELS registry only (no second list in pyproject.toml)."""
    import tomllib

    from t2i_rl_bench.models.policy import Policy
    from t2i_rl_bench.registry import MODELS

    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert "t2i_rl_bench.models" not in entry_points
    assert {"embedded", "sd", "flow"} <= set(MODELS.names()) and MODELS.get("embedded") is Policy
