"""DRaFT-K and ReFL (algorithms/draft.py) and sampling with gradient (bench/train/differentiable.py):
the truncated gradient of the paper's Alg. 1, ReFL's official stop step, x0 prediction and loss, the
refusal of non-differentiable rewards before any job, and learning on the analytic toy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDIMScheduler

from t2i_rl_bench import factory, study
from t2i_rl_bench import train as train_mod
from t2i_rl_bench.algorithm import RewardBatch
from t2i_rl_bench.algorithms.draft import DRaFT, ReFL
from t2i_rl_bench.registry import REWARDS
from t2i_rl_bench.reward import build_reward, not_differentiable
from t2i_rl_bench.rollout import make_sampler
from t2i_rl_bench.sampling import DDIMSampler
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train.differentiable import backprop_sample, predicted_x0
from tests import test_flowgrpo as flow_toy
from tests import test_learning as toy

torch.set_num_threads(1)


class PointTarget:
    """The toy's reward -mean((x - target)^2), with its gradient (a differentiable reward)."""

    differentiable = True

    def differentiable_score(self, images, prompts, metadata=None):
        return -((images - toy.TARGET) ** 2).flatten(1).mean(1)

    def __call__(self, images, prompts, metadata=None):
        return self.differentiable_score(images, prompts).detach(), {}


@pytest.fixture
def toy_world(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(factory, "Policy", toy.PointPolicy)
    REWARDS.register("test_point_target_grad")(PointTarget())


def truncated_chain(policy, sampler, prompts, generator, k):
    """DRaFT Alg. 1 with truncation, written out: x_T ~ N(0, I); for each step, x_{t-1} = step(x_t),
    with stop_gradient(x_t) at the first of the last K steps and the weights' gradient off before."""
    n = len(prompts)
    cond, uncond = policy.encode(prompts), policy.encode([""] * n)
    x = torch.randn((n, *policy.sample_shape), generator=generator)
    for i in range(sampler.num_steps):
        if i == sampler.num_steps - k:
            x = x.detach()
        with torch.set_grad_enabled(i >= sampler.num_steps - k):
            out = policy.predict(x, sampler.model_timesteps()[i], cond, uncond, 1.0)
            step = torch.full((n,), i)
            x = sampler.step(out, x, sampler.timesteps[i].expand(n), step, generator=generator).x_next
    return x


@pytest.mark.parametrize("k", [1, 3, 8])
def test_draft_k_gradient_is_the_truncated_chain(toy_world, k):
    """The gradient of -r through backprop_sample's window (8 - k, 8) = the written-out truncated
    chain's (same noise), and it is not zero."""
    policy = toy.PointPolicy()
    sampler = make_sampler(policy, 8, eta=1.0)
    prompts = ["a"] * 4
    theta = policy.denoiser.theta
    algo = DRaFT(k=k)
    x = backprop_sample(policy, sampler, prompts, 1.0, torch.Generator().manual_seed(3), algo.backprop_window(8, None))
    loss = algo.loss(RewardBatch(PointTarget().differentiable_score(x, prompts), torch.zeros(4), prompts)).value
    (got,) = torch.autograd.grad(loss, theta)
    y = truncated_chain(policy, sampler, prompts, torch.Generator().manual_seed(3), k)
    (want,) = torch.autograd.grad(-PointTarget().differentiable_score(y, prompts).mean(), theta)
    torch.testing.assert_close(x.detach(), y.detach(), rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    assert got.abs().sum() > 0


def test_refl_stop_step_x0_prediction_and_loss_are_the_officials():
    """ImageReward/ReFL.py: 40 steps, mid_timestep = random.randint(30, 39), the x0 prediction of
    noise_scheduler.step(...).pred_original_sample at that step, loss relu(-r + 2).mean() * 1e-3."""
    algo = ReFL()
    g = torch.Generator().manual_seed(0)
    stops = {algo.backprop_window(40, g) for _ in range(400)}
    assert stops == {(s, s) for s in range(30, 40)}
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
    )
    sampler = DDIMSampler(scheduler, 40, eta=1.0)
    x, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for k in (30, 35, 39):
        official = scheduler.step(eps, sampler.timesteps[k], x).pred_original_sample
        torch.testing.assert_close(predicted_x0(sampler, eps, x, k), official, rtol=1e-5, atol=1e-5)
    rewards = torch.tensor([-2.5, 0.3, 1.9, 2.4])
    want = torch.nn.functional.relu(-rewards + 2).mean() * 1e-3
    torch.testing.assert_close(algo.loss(RewardBatch(rewards, torch.zeros(4), ["p"] * 4)).value, want)


def test_flow_x0_prediction_is_x_minus_sigma_v():
    policy = flow_toy.FlowPointPolicy()
    sampler = make_sampler(policy, 8, eta=0.7)
    x, v = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    torch.testing.assert_close(predicted_x0(sampler, v, x, 3), x - sampler.sigmas[3] * v)


def test_non_differentiable_rewards_are_refused_before_any_job(toy_world):
    """clip_alignment has a gradient; jpeg and attribute_match have none: a study that pairs DRaFT
    with one is refused naming the reward's and the algorithm's keys."""
    assert not_differentiable("clip_alignment") == []
    assert not_differentiable(["clip_alignment", "jpeg_compressibility"]) == ["jpeg_compressibility"]
    assert not_differentiable({"attribute_match": 1.0}) == ["attribute_match"]
    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "quick.yaml").read_text())
    cfg["algorithms"] = {"draft_k": {"plugin": "draft", "k": 2}}
    with pytest.raises(study.ConfigError, match=r"'rewards\[0\]'.*jpeg_compressibility.*algorithms\.draft_k"):
        study.validate(cfg, check_paths=False)
    cfg["rewards"] = ["clip_alignment"]
    study.validate(cfg, check_paths=False)
    cfg["algorithms"]["draft_k"]["k"] = 0
    with pytest.raises(study.ConfigError, match=r"algorithms\.draft_k\.k"):
        study.validate(cfg, check_paths=False)


def test_composed_reward_refuses_a_gradient_it_has_not():
    reward = build_reward("jpeg_compressibility")
    assert not reward.differentiable
    with pytest.raises(ValueError, match="not differentiable"):
        reward.differentiable_score(torch.rand(1, 3, 8, 8), ["p"])


def run(algorithm: str, rounds: int = 30, **settings) -> tuple[float, float, dict]:
    cfg = toy.toy_spec(algorithm, rounds, reward="test_point_target_grad", algorithm_settings=settings)
    trainer = train_mod.Trainer(cfg, out="unused")
    before = toy.expected_reward(trainer)
    for _ in range(rounds):
        line = trainer.round()
    return before, toy.expected_reward(trainer), line


@pytest.mark.parametrize("algorithm, settings", [("draft", {"k": 1}), ("draft", {"k": 4}), ("refl", {})])
def test_differentiable_methods_raise_the_reward(toy_world, algorithm, settings):
    before, after, line = run(algorithm, **settings)
    assert after > before + abs(before) / 3, (algorithm, settings, before, after)
    assert line["optimiser_steps"] == 1 and line["approx_kl"] is None and line["images_seen"] == 16 * 30
    assert line["trained_steps_per_sample"] == (settings.get("k", 1))


def test_probe_measures_the_reward_gradient_and_says_why_there_is_no_step_credit(toy_world):
    from t2i_rl_bench.probe import probe_gradients

    cfg = RunSpec(model_path="unused", algorithm="draft", reward="test_point_target_grad", num_steps=8, guidance=1.0)
    trainer = train_mod.Trainer(cfg, out="unused")
    row = probe_gradients(
        trainer.policy, trainer.sampler, trainer.algorithm, trainer.reward, ["a", "b"], 4, 1.0, seed=5
    )
    assert "credit_share" not in row and "chain rule" in row["credit_note"]
    assert row["mean_sq_norm"] > 0
