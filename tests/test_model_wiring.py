"""Per-model options and the flow SDE variant reach the policy and the sampler from the study
config (t2i_rl_bench.study.run_spec -> RunSpec -> Trainer); Flow-GRPO's KL to the reference."""

import json

import pytest
import torch
from tiny_pipelines import build_sd, build_sd3

from t2i_rl_bench import study
from t2i_rl_bench.algorithm import StepBatch
from t2i_rl_bench.losses import gaussian_kl_to_reference
from t2i_rl_bench.registry import ALGORITHMS
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer

PROMPTS = ["a red circle", "two small blue squares on the left"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"sd": build_sd(root / "sd"), "flow": build_sd3(root / "sd3")}


def _config(models: dict, algorithms=("ddpo_is", "dancegrpo"), sampling=None) -> dict:
    return study.validate(
        {
            "seeds": [0],
            "models": models,
            "rewards": ["jpeg_compressibility"],
            "algorithms": {a: {} for a in algorithms},
            "sampling": sampling or {},
            "evaluation": {"clip_model": None},
        },
        check_paths=False,
    )


def test_run_spec_carries_model_options_and_flow_variant():
    config = _config(
        {
            "sd": {"family": "sd", "path": "x", "resolution": 256, "mixed_precision": "bf16"},
            "sd3": {"family": "flow", "path": "y"},
            "dit": {"path": "z", "pretrain": {"objective": "flow"}},
            "eps": {"path": "w"},
        }
    )
    cfg = {(k.model, k.algorithm): study.run_spec(config, k) for k in study.runs(config)}
    assert cfg["sd", "ddpo_is"].model_options == {"resolution": 256, "mixed_precision": "bf16"}
    # no options, none; DDIM models carry no flow variant
    assert cfg["sd3", "ddpo_is"].model_options == {} == cfg["eps", "ddpo_is"].model_options
    assert cfg["sd", "dancegrpo"].flow_variant is None is cfg["eps", "dancegrpo"].flow_variant
    assert cfg["sd3", "ddpo_is"].flow_variant == "flowgrpo" == cfg["dit", "ddpo_is"].flow_variant
    assert cfg["sd3", "dancegrpo"].flow_variant == "dancegrpo" == cfg["dit", "dancegrpo"].flow_variant
    forced = _config({"sd3": {"family": "flow", "path": "y"}}, sampling={"flow_variant": "flowgrpo"})
    assert all(study.run_spec(forced, k).flow_variant == "flowgrpo" for k in study.runs(forced))
    with pytest.raises(study.ConfigError, match="sampling.flow_variant"):
        _config({"sd3": {"family": "flow", "path": "y"}}, sampling={"flow_variant": "euler"})


def test_the_trainer_loads_the_model_options_and_the_variant(pipelines, tmp_path):
    config = _config(
        {
            "sd": {"family": "sd", "path": str(pipelines["sd"]), "resolution": 32},
            "sd3": {"family": "flow", "path": str(pipelines["flow"])},
        },
        algorithms=("dancegrpo",),
    )
    for key in study.runs(config):
        spec = study.run_spec(config, key).replace(
            num_steps=3, images_per_round=4, group_size=2, budgets=(4,), prompts=tuple(PROMPTS)
        )
        trainer = Trainer(RunSpec.from_json(spec.to_json()), tmp_path / key.model)
        if key.model == "sd":
            assert trainer.policy.sample_shape == (4, 4, 4)  # 32 px through the x8 VAE, not the native 64
        else:
            assert trainer.sampler.variant == "dancegrpo"
        assert trainer.run()["status"] == "finished"


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, mean_ref = torch.randn(3, 2, 4, 5, 5, generator=g), torch.randn(3, 2, 4, 5, 5, generator=g)
    std = torch.rand(3, 2, generator=g) + 0.1
    ours = gaussian_kl_to_reference(mean, mean_ref, std)
    s = std[..., None, None, None].expand_as(mean)
    normal = torch.distributions.Normal
    exact = torch.distributions.kl_divergence(normal(mean, s), normal(mean_ref, s))
    assert torch.allclose(ours, exact.flatten(2).mean(-1), atol=1e-6)


def test_flowgrpo_kl_term(pipelines, tmp_path):
    algo = ALGORITHMS.get("dancegrpo")(kl_beta=0.5)
    assert algo.needs_reference_means and not ALGORITHMS.get("dancegrpo")().needs_reference
    b, s = 2, 3
    mean = torch.randn(b, s, 4, 2, 2, requires_grad=True)
    batch = StepBatch(
        logp=torch.zeros(b, s),
        logp_old=torch.zeros(b, s),
        advantages=torch.ones(b),
        rewards=torch.zeros(b),
        group_ids=torch.zeros(b),
        timesteps=torch.zeros(b, s),
        step_index=torch.zeros(b, s, dtype=torch.long),
        mean=mean,
        std=torch.ones(b, s),
        mean_ref=torch.zeros(b, s, 4, 2, 2),
    )
    loss = algo.loss(batch)
    assert torch.allclose(loss.value, -1 + 0.5 * (mean.detach() ** 2).mean() / 2)
    with pytest.raises(ValueError, match="mean_ref"):
        algo.loss(StepBatch(**{**batch.__dict__, "mean_ref": None}))
    # a LoRA run on the flow pipeline: the KL starts at 0 (adapters at B = 0) and is logged
    cfg = RunSpec(
        model_path=str(pipelines["flow"]),
        algorithm="dancegrpo",
        reward="jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=3,
        eta=0.7,
        images_per_round=4,
        group_size=2,
        budgets=[4, 8],
        lora_rank=4,
        lr=1e-2,
        algorithm_settings={"kl_beta": 0.01, "updates_per_round": 1},
        flow_variant="flowgrpo",
    )
    out = tmp_path / "run"
    assert Trainer(cfg, out).run()["status"] == "finished"
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert lines[0]["kl_ref"] == 0.0 and lines[1]["kl_ref"] > 0


def test_the_flow_preset_validates_with_its_variants():
    from pathlib import Path

    config = study.load(Path(__file__).resolve().parent.parent / "config" / "flow.yaml", check_paths=False)
    cfg = {k.algorithm: study.run_spec(config, k) for k in study.runs(config)}
    assert cfg["flowgrpo"].algorithm == "flowgrpo" and cfg["flowgrpo"].flow_variant == "flowgrpo"
    assert "flow_variant" not in cfg["flowgrpo"].algorithm_settings
    assert cfg["dancegrpo"].flow_variant == "dancegrpo" and cfg["pcpo"].flow_variant == "flowgrpo"
    bad = {**config, "algorithms": {"x": {"plugin": "dancegrpo", "flow_variant": "ode"}}}
    with pytest.raises(study.ConfigError, match=r"algorithms\.x\.flow_variant"):
        study.validate(bad, check_paths=False)
