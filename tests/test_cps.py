"""Coefficients-preserving sampling (flow_variant 'cps'; Wang & Yu 2025, arXiv 2509.05952; code
IamCreateAI/FlowCPS): the step against a transcription of the official step function on random
inputs, the invariant it is named for, its per-step credit, Flow-GRPO's loss on it (FlowCPS's KL),
the config, and learning on the analytic flow toy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from t2i_rl_bench import study
from t2i_rl_bench import train as train_mod
from t2i_rl_bench.algorithm import StepBatch
from t2i_rl_bench.algorithms.flowgrpo import FlowGRPO
from t2i_rl_bench.algorithms.grpo_guard import GRPOGuard
from t2i_rl_bench.sampling import FlowSDESampler
from t2i_rl_bench.train.steps import trainable_steps
from tests import test_learning as toy
from tests.test_flowgrpo import FlowPointPolicy, sd3_sigmas

torch.set_num_threads(1)
ROOT = Path(__file__).parents[1]


def official_cps_step(v, x, sigmas, k, a, prev=None, generator=None):
    """Transcription of FlowCPS's sde_step_with_logprob (flow_grpo/diffusers_patch/
    sd3_sde_with_logprob.py, the 'Flow-CPS' branch) at step index k (B,): returns
    (prev_sample, log_prob, prev_sample_mean, std_dev_t)."""
    v, x = v.float(), x.float()
    sigma = sigmas[k].view(-1, *([1] * (x.ndim - 1)))
    sigma_prev = sigmas[k + 1].view(-1, *([1] * (x.ndim - 1)))
    std_dev_t = sigma_prev * math.sin(a * math.pi / 2)
    pred_original_sample = x - sigma * v
    noise_estimate = x + v * (1 - sigma)
    mean = pred_original_sample * (1 - sigma_prev) + noise_estimate * torch.sqrt(sigma_prev**2 - std_dev_t**2)
    if prev is None:
        prev = mean + std_dev_t * torch.randn(v.shape, generator=generator, dtype=v.dtype)
    log_prob = -((prev.detach() - mean) ** 2)
    return prev, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean, std_dev_t


@pytest.mark.parametrize("num_steps, a, seed", [(10, 0.7, 0), (40, 0.7, 1), (10, 0.3, 2), (16, 1.0, 3)])
def test_the_step_matches_the_official_cps_step(num_steps, a, seed):
    """Sampling (same generator: same noise), the mean, the std and the log-prob of a recorded
    transition, at every step including t = 1 and the final step to sigma = 0, to 1e-5."""
    sigmas = sd3_sigmas(num_steps)
    sampler = FlowSDESampler(sigmas, noise_level=a, variant="cps")
    g = torch.Generator().manual_seed(seed)
    b = 5
    for k in range(num_steps):
        x = torch.randn(b, 4, 8, 8, generator=g)
        v = torch.randn(b, 4, 8, 8, generator=g)
        idx = torch.full((b,), k)
        ours = sampler.step(v, x, sampler.timesteps[idx], idx, generator=torch.Generator().manual_seed(k))
        prev, logp, mean, std = official_cps_step(v, x, sigmas, idx, a, generator=torch.Generator().manual_seed(k))
        torch.testing.assert_close(ours.x_next, prev, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.mean, mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.std, std.flatten(), rtol=0, atol=1e-6)
        # the log-prob of a recorded transition, under another velocity (a training step's)
        v2 = v + 0.1 * torch.randn(b, 4, 8, 8, generator=g)
        again = sampler.step(v2, x, sampler.timesteps[idx], idx, prev=ours.x_next)
        _, logp2, mean2, _ = official_cps_step(v2, x, sigmas, idx, a, prev=ours.x_next)
        torch.testing.assert_close(again.logp, logp2, rtol=0, atol=1e-5)
        torch.testing.assert_close(again.mean, mean2, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.logp, logp, rtol=0, atol=1e-5)
    assert sampler.sde_steps.tolist() == list(range(num_steps - 1))  # the final step has std 0


def test_the_cps_step_preserves_the_flows_coefficients():
    """With the exact model of a data point x0 (v = eps - x0 at x_t = (1 - t) x0 + t eps), the step
    gives x_t' = (1 - t') x0 + t' eps' with eps' standard normal: the mean's noise coefficient c and
    the std satisfy c^2 + std^2 = t'^2 exactly (to float rounding), and a Monte-Carlo check of the
    marginal. Flow-GRPO's Euler-Maruyama SDE keeps the coefficients only to first order in dt: its
    noise variance misses t'^2 by far at the large late steps (the control)."""
    sigmas = sd3_sigmas(10)
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, n, generator=g).expand(2, n).reshape(2, 1, 1, n)  # the same point, two draws
    for a in (0.3, 0.7, 1.0):
        cps = FlowSDESampler(sigmas, noise_level=a, variant="cps")
        sde = FlowSDESampler(sigmas, noise_level=a, variant="flowgrpo")
        worst_sde = 0.0
        for k in range(9):
            t, t_next = float(sigmas[k]), float(sigmas[k + 1])
            idx = torch.full((2,), k)
            eps = torch.randn(2, 1, 1, n, generator=g)
            x = (1 - t) * x0 + t * eps
            v = eps - x0
            res = cps.step(v, x, cps.timesteps[idx], idx, generator=g)
            one = torch.ones(2, 1, 1, 4)  # x0 = 0, eps = 1: the mean is the noise coefficient c
            c = float(cps.step(one, t * one, cps.timesteps[idx], idx, generator=g).mean[0, 0, 0, 0])
            assert c**2 + float(res.std[0]) ** 2 == pytest.approx(t_next**2, abs=1e-6)
            torch.testing.assert_close(res.mean, (1 - t_next) * x0 + c * eps, rtol=0, atol=1e-5)
            z = (res.x_next - (1 - t_next) * x0) / t_next  # should be standard normal
            assert abs(float(z.mean())) < 0.01 and float(z.var()) == pytest.approx(1.0, abs=0.02), (a, k)
            other = sde.step(v, x, sde.timesteps[idx], idx, generator=g)
            worst_sde = max(worst_sde, abs(float(((other.x_next - (1 - t_next) * x0) / t_next).var()) - 1))
        assert worst_sde > 0.2, (a, worst_sde)  # the control: the SDE's marginal is off by more than 20%
        # the final step lands on the predicted data point exactly
        idx = torch.full((2,), 9)
        eps = torch.randn(2, 1, 1, n, generator=g)
        x = (1 - sigmas[9]) * x0 + sigmas[9] * eps
        last = cps.step(eps - x0, x, cps.timesteps[idx], idx, generator=g)
        torch.testing.assert_close(last.x_next, x0, rtol=0, atol=1e-5)
        assert (last.std == 0).all() and (last.logp == 0).all()


@pytest.mark.parametrize("variant", ["cps", "flowgrpo", "dancegrpo"])
def test_native_weights_are_the_log_probs_velocity_gradient(variant):
    """d logp / d v at the sampling velocity = -(w / D) z, z the step's standard-normal noise and D
    the dimension (per-dimension-mean log-prob): the credit PCPO flattens, for each variant."""
    sigmas = sd3_sigmas(10)
    sampler = FlowSDESampler(sigmas, noise_level=0.7, variant=variant)
    w = sampler.native_weights()
    assert w[-1] == 0 if variant == "cps" else (w > 0).all()
    g = torch.Generator().manual_seed(1)
    for k in (0, 4, 8):
        x = torch.randn(1, 4, 8, 8, generator=g)
        v = torch.randn(1, 4, 8, 8, generator=g).requires_grad_(True)
        idx = torch.tensor([k])
        with torch.no_grad():
            drawn = sampler.step(v, x, sampler.timesteps[idx], idx, generator=g)
        res = sampler.step(v, x, sampler.timesteps[idx], idx, prev=drawn.x_next)
        (grad,) = torch.autograd.grad(res.logp.sum(), v)
        z = (drawn.x_next - drawn.mean) / drawn.std
        torch.testing.assert_close(grad, -w[k] * z / z.numel(), rtol=1e-3, atol=1e-7)


def test_cps_trains_no_final_step_and_the_window_still_applies():
    sampler = FlowSDESampler(sd3_sigmas(6), variant="cps")
    assert trainable_steps(sampler, drop_last=False).tolist() == [0, 1, 2, 3, 4]
    window = FlowSDESampler(sd3_sigmas(6), variant="cps", sde_window=(3, 3))
    assert window.sde_steps.tolist() == [3, 4]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FlowSDESampler(sd3_sigmas(6), noise_level=1.2, variant="cps")


def _flowgrpo_batch(sampler, seed: int, b: int = 6):
    """One trained step per sample at steps 0..b-1 with current, old and reference velocities."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(b) % (sampler.num_steps - 1)
    x = torch.randn(b, 4, 8, 8, generator=g)
    v_old = torch.randn(b, 4, 8, 8, generator=g)
    v = v_old + 0.05 * torch.randn(b, 4, 8, 8, generator=g)
    v_ref = v_old + 0.3 * torch.randn(b, 4, 8, 8, generator=g)
    old = sampler.step(v_old, x, sampler.timesteps[idx], idx, generator=g)
    cur = sampler.step(v, x, sampler.timesteps[idx], idx, prev=old.x_next)
    ref = sampler.step(v_ref, x, sampler.timesteps[idx], idx, prev=old.x_next)
    adv = torch.randn(b, generator=g)
    return old, cur, ref, adv, idx


def test_flowgrpo_on_cps_is_flowcps_training_step():
    """FlowCPS's train_sd3.py: the PPO clip on ratios of its log-prob, plus beta mean_dims((mu - mu_ref)^2)
    (its KL has no std). Transcribed per step j as the official loop computes it."""
    sampler = FlowSDESampler(sd3_sigmas(10), noise_level=0.7, variant="cps")
    algo = FlowGRPO(clip_range=0.2, beta=0.04)
    algo.setup(sampler)
    old, cur, ref, adv, idx = _flowgrpo_batch(sampler, 0)
    batch = StepBatch(
        logp=cur.logp[:, None],
        logp_old=old.logp[:, None],
        advantages=adv,
        rewards=adv,
        group_ids=torch.zeros(6, dtype=torch.long),
        timesteps=sampler.timesteps[idx][:, None],
        step_index=idx[:, None],
        mean=cur.mean[:, None],
        std=cur.std[:, None],
        mean_ref=ref.mean[:, None],
    )
    ratio = torch.exp(cur.logp - old.logp)
    policy = torch.mean(torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2)))
    kl = torch.mean(((cur.mean - ref.mean) ** 2).mean(dim=(1, 2, 3), keepdim=True))
    got = algo.loss(batch)
    torch.testing.assert_close(got.value, policy + 0.04 * kl, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.metrics["kl_ref"], kl, rtol=1e-6, atol=1e-8)


def test_grpo_guard_refuses_the_cps_sampler():
    with pytest.raises(ValueError, match="cps"):
        GRPOGuard().setup(FlowSDESampler(sd3_sigmas(6), variant="cps"))


def test_the_study_refuses_grpo_guard_on_cps_before_any_job_naming_the_key():
    cfg = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    cfg["algorithms"]["guard_cps"] = {"plugin": "grpo_guard", "flow_variant": "cps"}
    with pytest.raises(study.ConfigError, match=r"algorithms\.guard_cps\.flow_variant.*'cps'"):
        study.validate(cfg, check_paths=False)
    cfg["algorithms"] = {"grpo_guard": {}}
    cfg["sampling"]["flow_variant"] = "cps"
    with pytest.raises(study.ConfigError, match=r"sampling\.flow_variant.*GRPOGuard"):
        study.validate(cfg, check_paths=False)
    cfg["sampling"]["flow_variant"] = "flowgrpo"  # its own SDEs pass
    study.validate(cfg, check_paths=False)


def test_the_config_takes_cps_and_checks_its_noise_level():
    cfg = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    cfg["algorithms"]["flowgrpo_cps"] = {"plugin": "flowgrpo", "flow_variant": "cps"}
    valid = study.validate(cfg, check_paths=False)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid)}
    assert specs["flowgrpo_cps"].flow_variant == "cps" and specs["flowgrpo_cps"].algorithm == "flowgrpo"
    cfg["sampling"]["eta"] = 1.5
    with pytest.raises(study.ConfigError, match=r"sampling\.eta.*flowgrpo_cps"):
        study.validate(cfg, check_paths=False)
    del cfg["algorithms"]["flowgrpo_cps"]
    cfg["sampling"].update(eta=0.7, flow_variant="cps")
    valid = study.validate(cfg, check_paths=False)
    assert {study.run_spec(valid, k).flow_variant for k in study.runs(valid)} == {"cps"}


@pytest.mark.parametrize("algorithm", ["flowgrpo", "ddpo_is"])
def test_training_with_cps_raises_the_reward(flow_toy, algorithm):
    cfg = toy.toy_spec(algorithm, eta=0.7, flow_variant="cps")
    trainer = train_mod.Trainer(cfg, out="unused")
    assert trainer.sampler.variant == "cps" and trainer.algorithm.recipe.drop_last_step == (algorithm == "flowgrpo")
    before = toy.expected_reward(trainer)
    line = {}
    for _ in range(30):
        line = trainer.round()
    after = toy.expected_reward(trainer)
    assert line["trained_steps_per_sample"] == 7  # the final step: dropped, or deterministic under cps
    optimum = -(FlowPointPolicy.data_std**2)
    assert after > before + (optimum - before) / 3, (algorithm, before, after)
