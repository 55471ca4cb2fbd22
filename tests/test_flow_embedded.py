"""The embedded base model pretrained with the rectified-flow objective (the shipped dit16-flow's
family at toy size): it samples with the flow SDEs, every registered algorithm trains two RL
rounds on it, and PCPO's flow weights (docs/algorithms.md#proportionate-credit-on-flow-models,
option F1) apply to its schedule."""

import json

import pytest
import torch

from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.registry import ALGORITHMS
from t2i_rl_bench.sampling import FlowSDESampler
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer

PROMPTS = ["a red circle on the left", "two small blue squares"]


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_two_rl_rounds_of_every_algorithm(tiny_flow_model, tmp_path, algorithm):
    variant = "dancegrpo" if algorithm == "dancegrpo" else "flowgrpo"
    # DRaFT and ReFL backpropagate the reward: the in-house CLIP alignment has a gradient, JPEG has none
    differentiable = ALGORITHMS.get(algorithm).family == "differentiable"
    cfg = RunSpec(
        model_path=str(tiny_flow_model),
        algorithm=algorithm,
        reward="clip_alignment" if differentiable else "jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=4,
        eta=0.7,
        images_per_round=4,
        group_size=2,
        budgets=[4, 8],
        lr=1e-3,
        flow_variant=variant,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.sampler, FlowSDESampler) and trainer.sampler.variant == variant
    summary = trainer.run()
    assert summary["status"] == "finished", summary["error"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    base = dict(Policy.load(tiny_flow_model).denoiser.named_parameters())
    assert any(not torch.equal(p, base[n]) for n, p in trainer.policy.denoiser.named_parameters())


def test_pcpo_flow_weights_on_the_embedded_flow_model(tiny_flow_model, tmp_path):
    cfg = RunSpec(
        model_path=str(tiny_flow_model),
        algorithm="pcpo",
        reward="jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=6,
        eta=0.7,
        images_per_round=4,
        group_size=2,
        budgets=[4],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    sampler = trainer.sampler
    assert sampler.family == "flow"
    dt = sampler.sigmas[:-1] - sampler.sigmas[1:]
    product = trainer.algorithm.multipliers * sampler.native_weights()  # option F1: m_i w(t_i) = zeta dt_i
    torch.testing.assert_close(product / product.sum(), dt / dt.sum(), rtol=1e-5, atol=0)
