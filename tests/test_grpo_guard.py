"""GRPO-Guard (algorithms/grpo_guard.py): RatioNorm (Eq. 8) and the per-step gradient reweighting
(Eq. 12) against a transcription of the equations on random transitions of Flow-GRPO's SDE, their
invariants, and learning on the analytic toys."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import tomllib
import torch

from t2i_rl_bench import factory
from t2i_rl_bench import train as train_mod
from t2i_rl_bench.algorithm import StepBatch
from t2i_rl_bench.algorithms.flowgrpo import FlowGRPO
from t2i_rl_bench.algorithms.grpo_guard import GRPOGuard, ratio_norm_log_ratio, reweight_factors
from t2i_rl_bench.registry import _load_reference
from t2i_rl_bench.sampling import FlowSDESampler
from tests import test_learning as toy
from tests.test_flowgrpo import FlowPointPolicy, official_sde_step, sd3_sigmas

torch.set_num_threads(1)
A = 0.7


def guard_transitions(seed: int, b: int = 5, num_steps: int = 10, shift: float = 0.05):
    """Recorded transitions (sampled with the old velocity) of the first num_steps - 1 steps, re-scored
    under a new velocity and the reference's: our sampler's terms and the transcribed official ones."""
    g = torch.Generator().manual_seed(seed)
    sigmas = sd3_sigmas(num_steps)
    sampler = FlowSDESampler(sigmas, noise_level=A, variant="flowgrpo")
    ours, theirs = {k: [] for k in ("logp", "logp_old", "mean", "mean_old", "std", "mean_ref")}, []
    for k in range(num_steps - 1):
        x = torch.randn(b, 4, 8, 8, generator=g)
        v_old = torch.randn(b, 4, 8, 8, generator=g)
        v_new = v_old + shift * torch.randn(b, 4, 8, 8, generator=g)
        v_ref = v_old + 0.3 * torch.randn(b, 4, 8, 8, generator=g)
        idx = torch.full((b,), k)
        old = sampler.step(v_old, x, sampler.timesteps[idx], idx, generator=g)
        new = sampler.step(v_new, x, sampler.timesteps[idx], idx, prev=old.x_next)
        ref = sampler.step(v_ref, x, sampler.timesteps[idx], idx, prev=old.x_next)
        for key, val in (
            ("logp", new.logp),
            ("logp_old", old.logp),
            ("mean", new.mean),
            ("mean_old", old.mean),
            ("std", new.std.expand(b)),
            ("mean_ref", ref.mean),
        ):
            ours[key].append(val)
        lp_new, mu_new, std_dev_t = official_sde_step(v_new, x, sigmas, idx, A, old.x_next)
        lp_old, mu_old, _ = official_sde_step(v_old, x, sigmas, idx, A, old.x_next)
        _, mu_ref, _ = official_sde_step(v_ref, x, sigmas, idx, A, old.x_next)
        sqrt_dt = (sigmas[idx] - sigmas[idx + 1]).sqrt()
        theirs.append(
            {
                "logp": lp_new,
                "logp_old": lp_old,
                "mean": mu_new,
                "mean_old": mu_old,
                "mean_ref": mu_ref,
                "std_dev_t": std_dev_t,
                "sqrt_dt": sqrt_dt,
                "x_next": old.x_next,
            }
        )
    return sampler, {k: torch.stack(v, 1) for k, v in ours.items()}, theirs


def batch_of(ours, adv) -> StepBatch:
    b, s = ours["logp"].shape
    return StepBatch(
        logp=ours["logp"],
        logp_old=ours["logp_old"],
        advantages=adv,
        rewards=torch.zeros(b),
        group_ids=torch.zeros(b, dtype=torch.long),
        timesteps=torch.zeros(b, s),
        step_index=torch.arange(s).expand(b, s),
        mean=ours["mean"],
        std=ours["std"],
        mean_ref=ours["mean_ref"],
        mean_old=ours["mean_old"],
    )


def official_guard_loss(step, adv, clip_range, beta, adv_clip=5.0, batch_bias=False):
    """Transcription of the official GRPO-Guard loss for one timestep j: yifan123/flow_grpo
    scripts/train_sd3_GRPO_Guard.py lines 909-938 (commit 2e2f712e; read in zhtmike/flow_grpo at
    9745241c), with sde_step_with_logprob's std_dev_t (no sqrt(-dt)) and sqrt(-dt) (return_sqrt_dt):
        sigma_t = mean_batch(std_dev_t); scale = mean_batch(sqrt_dt) sigma_t
        bias = mean_dims((mu - mu_old)^2) / (2 scale^2); ratio = exp((log p - log p_old + bias) scale)
        policy = mean_batch(max(-A ratio, -A clip(ratio))) / mean_batch(sqrt_dt)^2
        loss = policy + beta mean_batch(mean_dims((mu - mu_ref)^2) / (2 std_dev_t^2))
    The bias is per sample, as the author corrected it (flow_grpo issue #244); batch_bias=True is the
    script as released, whose mean over an empty dim tuple reduces the whole batch to one number."""
    a = torch.clamp(adv, -adv_clip, adv_clip)
    sigma_t = step["std_dev_t"].mean()
    sqrt_dt = step["sqrt_dt"].mean()
    diff2 = (step["mean"] - step["mean_old"]) ** 2
    bias = diff2.mean() if batch_bias else diff2.mean(dim=(1, 2, 3))
    bias = bias / (2 * (sqrt_dt * sigma_t) ** 2)
    ratio = torch.exp((step["logp"] - step["logp_old"] + bias) * (sqrt_dt * sigma_t))
    policy = torch.mean(torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)))
    policy = policy / sqrt_dt**2
    kl = ((step["mean"] - step["mean_ref"]) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * step["std_dev_t"] ** 2)
    return policy + beta * torch.mean(kl)


@pytest.mark.parametrize("seed, clip_range, beta", [(0, 4e-6, 0.0), (1, 1e-4, 0.04), (2, 1e-2, 0.01), (3, 1.0, 0.04)])
def test_guard_loss_matches_the_official_loss(seed, clip_range, beta):
    """The mean over the trained steps of the official per-step loss (the official code backpropagates
    each step's loss through gradient accumulation over the steps: a mean), to 1e-5."""
    sampler, ours, theirs = guard_transitions(seed)
    adv = 2 * torch.randn(ours["logp"].shape[0], generator=torch.Generator().manual_seed(50 + seed))
    algo = GRPOGuard(clip_range=clip_range, beta=beta)
    algo.setup(sampler)
    got = algo.loss(batch_of(ours, adv)).value
    want = torch.stack([official_guard_loss(st, adv, clip_range, beta) for st in theirs]).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # and the gradient in the current means through the bias (float32 summation order: 1e-4 of its size)
    mean = ours["mean"].clone().requires_grad_(True)
    algo.loss(batch_of({**ours, "mean": mean}, adv)).value.backward()
    steps = [dict(st, mean=st["mean"].clone().requires_grad_(True)) for st in theirs]
    torch.stack([official_guard_loss(st, adv, clip_range, beta) for st in steps]).mean().backward()
    want_grad = torch.stack([st["mean"].grad for st in steps], 1)
    assert want_grad.abs().max() > 0
    torch.testing.assert_close(mean.grad, want_grad, rtol=1e-5, atol=1e-4 * want_grad.abs().max().item())


def test_the_released_batch_wide_bias_is_not_the_loss():
    """The script as released reduces the bias over the whole batch (issue #244), so a sample's mean
    moves every sample's ratio; ours is per sample. The values barely differ (ratios near 1), the
    gradients in the means do."""
    sampler, ours, theirs = guard_transitions(7, shift=0.3)
    adv = torch.randn(ours["logp"].shape[0], generator=torch.Generator().manual_seed(7))
    algo = GRPOGuard(clip_range=1.0)
    algo.setup(sampler)
    mean = ours["mean"].clone().requires_grad_(True)
    algo.loss(batch_of({**ours, "mean": mean}, adv)).value.backward()
    grads = {}
    for batch_bias in (False, True):
        steps = [dict(st, mean=st["mean"].clone().requires_grad_(True)) for st in theirs]
        loss = torch.stack([official_guard_loss(st, adv, 1.0, 0.0, batch_bias=batch_bias) for st in steps]).mean()
        loss.backward()
        grads[batch_bias] = torch.stack([st["mean"].grad for st in steps], 1)
    scale = grads[False].abs().max().item()
    torch.testing.assert_close(mean.grad, grads[False], rtol=1e-5, atol=1e-4 * scale)
    assert (mean.grad - grads[True]).abs().max() > 0.1 * scale


def test_defaults_are_the_official_configs():
    """config/grpo_guard.py (pickscore_hps_sd3_ratio_norm): clip 4e-6, beta 0, global_std False (the
    group's own population std + 1e-4); otherwise train_sd3.py's recipe (FlowGRPO's)."""
    guard = GRPOGuard()
    assert (guard.settings.clip_range, guard.settings.beta, guard.settings.ratio_norm) == (4e-6, 0.0, True)
    assert guard.settings.grad_reweight
    assert guard.recipe.advantages == "group_pop"
    rest = {k: v for k, v in asdict(guard.recipe).items() if k != "advantages"}
    assert rest == {k: v for k, v in asdict(FlowGRPO.recipe).items() if k != "advantages"}


def test_ratio_norm_is_the_noise_projection_and_removes_the_negative_bias():
    """log r^ = mean_dims(eps (mu - mu_old)) with eps = (x' - mu_old)/s: mean 0 over the sampling
    noise, where log r has mean -mean((mu - mu_old)^2)/(2 s^2) < 0 (the bias the paper names)."""
    sampler, ours, theirs = guard_transitions(3, b=400, shift=0.2)
    eps = (torch.stack([st["x_next"] for st in theirs], 1) - ours["mean_old"]) / ours["std"][..., None, None, None]
    norm = ratio_norm_log_ratio(ours["logp"], ours["logp_old"], ours["mean"], ours["mean_old"], ours["std"])
    proj = (eps * (ours["mean"] - ours["mean_old"])).flatten(2).mean(-1)
    torch.testing.assert_close(norm, proj, rtol=1e-3, atol=1e-6)
    raw = ours["logp"] - ours["logp_old"]
    expected_bias = -((ours["mean"] - ours["mean_old"]) ** 2).flatten(2).mean(-1) / (2 * ours["std"] ** 2)
    se = raw.std(0) / 20  # 400 samples
    assert ((raw.mean(0) - expected_bias.mean(0)).abs() < 5 * se).all()  # the bias has its formula's size
    assert (raw.mean(0)[-3:] < -5 * se[-3:]).all()  # and is clearly below 0 where s is small (late steps)
    assert (norm.mean(0).abs() < 5 * norm.std(0) / 20).all()


def test_reweight_factors():
    sigmas = sd3_sigmas(10)
    dt = sigmas[:-1] - sigmas[1:]
    torch.testing.assert_close(reweight_factors(FlowSDESampler(sigmas, 0.7, "flowgrpo")), 1 / dt)
    t = sigmas[:-1]
    torch.testing.assert_close(
        reweight_factors(FlowSDESampler(sigmas, 0.3, "dancegrpo")), (1 + 0.09 * (1 - t) / (2 * t)) / dt
    )
    from tests.test_algorithms import sd1_sampler

    for settings in ({}, {"grad_reweight": False}):
        with pytest.raises(ValueError, match="flow"):
            GRPOGuard(**settings).setup(sd1_sampler())


def test_guard_off_is_flowgrpo():
    sampler, ours, _ = guard_transitions(4)
    adv = torch.randn(ours["logp"].shape[0], generator=torch.Generator().manual_seed(9))
    guard = GRPOGuard(ratio_norm=False, grad_reweight=False, clip_range=1e-4, beta=0.04)
    plain = FlowGRPO()
    guard.setup(sampler)
    plain.setup(sampler)
    torch.testing.assert_close(guard.loss(batch_of(ours, adv)).value, plain.loss(batch_of(ours, adv)).value)


def test_pyproject_registers_grpo_guard():
    eps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["entry-points"]
    assert _load_reference(eps["t2i_rl_bench.algorithms"]["grpo_guard"], "algorithm") is GRPOGuard


@pytest.fixture
def toy_world(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(factory, "Policy", toy.PointPolicy)
    toy.REWARDS.register("test_point_target")(toy.point_reward)


@pytest.mark.parametrize("settings", [{}, {"ratio_norm": False}])
def test_grpo_guard_raises_the_reward(toy_world, monkeypatch, settings):
    """On the flow toy (GRPO-Guard is defined for the flow SDEs), with and without RatioNorm."""
    monkeypatch.setattr(factory, "Policy", FlowPointPolicy)
    cfg = toy.toy_spec("grpo_guard", eta=0.7, algorithm_settings=settings)
    trainer = train_mod.Trainer(cfg, out="unused")
    before = toy.expected_reward(trainer)
    for _ in range(30):
        trainer.round()
    after = toy.expected_reward(trainer)
    optimum = -(FlowPointPolicy.data_std**2)
    assert after > before + (optimum - before) / 3, (settings, before, after)


def test_a_study_refuses_grpo_guard_on_a_ddim_model(toy_world):
    import yaml

    from t2i_rl_bench import study

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "quick.yaml").read_text())
    cfg["algorithms"] = {"guard": {"plugin": "grpo_guard"}, "ddpo_is": {}}
    with pytest.raises(study.ConfigError, match=r"algorithms\.guard.*flow.*dit16-ddim"):
        study.validate(cfg, check_paths=False)
    cfg["models"] = {
        "dit16-flow": {"path": "results/models/dit16-flow", "pretrain": {"steps": 6000, "seed": 0, "objective": "flow"}}
    }
    study.validate(cfg, check_paths=False)


def test_the_extended_preset_adds_the_new_methods_to_the_quick_grid(toy_world):
    import yaml

    from t2i_rl_bench import study

    root = Path(__file__).parents[1] / "config"
    quick = yaml.safe_load((root / "quick.yaml").read_text())
    cfg = study.load(root / "extended.yaml")
    new = {"flowgrpo", "grpo_guard", "flowgrpo_fast", "flowgrpo_cps", "mixgrpo", "diffusionnft", "draft", "refl"}
    assert set(cfg["algorithms"]) == set(quick["algorithms"]) | new
    assert cfg["seeds"] == quick["seeds"]
    assert cfg["rewards"] == ["clip_alignment"]  # the one differentiable reward (DRaFT, ReFL)
    assert cfg["train"]["budgets"] == quick["train"]["budgets"]
    assert len(study.runs(cfg)) == 14 * 2
    fast = study.run_spec(cfg, study.RunKey("dit16-flow", "clip_alignment", "flowgrpo_fast", 0))
    assert (fast.algorithm, fast.sde_window, fast.sde_window_range) == ("flowgrpo", (0, 2), (0, 3))
    cps = study.run_spec(cfg, study.RunKey("dit16-flow", "clip_alignment", "flowgrpo_cps", 0))
    assert (cps.algorithm, cps.flow_variant, cps.sde_window) == ("flowgrpo", "cps", None)
    mix = study.run_spec(cfg, study.RunKey("dit16-flow", "clip_alignment", "mixgrpo", 0))
    assert (mix.algorithm, mix.flow_variant, mix.sde_window, mix.sde_window_shift) == (
        "dancegrpo",
        "flowgrpo",
        (0, 2),
        (1, 1),
    )
