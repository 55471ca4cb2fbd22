"""Flow-GRPO as its own algorithm (algorithms/flowgrpo.py): conformance to the official training
step on random inputs, its recipe, and learning on the analytic toy of test_learning.py, DDIM and
flow versions."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from t2i_rl_bench import factory
from t2i_rl_bench import train as train_mod
from t2i_rl_bench.algorithm import StepBatch
from t2i_rl_bench.algorithms.flowgrpo import FlowGRPO, flowgrpo_kl
from t2i_rl_bench.sampling import FlowSDESampler
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train.steps import trained_steps
from tests import test_learning as toy

torch.set_num_threads(1)


def sd3_sigmas(num_steps: int = 10) -> torch.Tensor:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.float()


def official_sde_step(v, x, sigmas, k, a, prev):
    """Transcription of flow_grpo's sde_step_with_logprob (sde_type 'sde') at step index k (B,):
    returns (log_prob, prev_sample_mean, std_dev_t), std_dev_t WITHOUT sqrt(-dt)."""
    sigma = sigmas[k].view(-1, 1, 1, 1)
    sigma_prev = sigmas[k + 1].view(-1, 1, 1, 1)
    sigma_max = sigmas[1].item()
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * a
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    logp = (
        -((prev.detach() - mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
        - torch.log(std_dev_t * torch.sqrt(-1 * dt))
        - math.log(math.sqrt(2 * math.pi))
    )
    return logp.mean(dim=(1, 2, 3)), mean, std_dev_t


def official_loss(logp, logp_old, adv, mean, mean_ref, std_dev_t, clip_range, beta, adv_clip=5.0):
    """Transcription of train_sd3.py's per-timestep loss for one timestep j (tensors of the batch at j)."""
    a = torch.clamp(adv, -adv_clip, adv_clip)
    ratio = torch.exp(logp - logp_old)
    policy = torch.mean(torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)))
    kl = ((mean - mean_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std_dev_t**2)
    return policy + beta * torch.mean(kl)


def random_transitions(seed: int, b: int = 6, num_steps: int = 10, a: float = 0.7):
    """Recorded transitions of the first num_steps-1 steps for b samples, with a current and a reference
    velocity: our sampler's (logp, mean, std) and the official (logp, mean, std_dev_t) of each."""
    g = torch.Generator().manual_seed(seed)
    sigmas = sd3_sigmas(num_steps)
    sampler = FlowSDESampler(sigmas, noise_level=a, variant="flowgrpo")
    s = num_steps - 1
    ours = {"logp": [], "mean": [], "std": [], "mean_ref": []}
    theirs = {"logp": [], "mean": [], "std_dev_t": [], "mean_ref": []}
    for k in range(s):
        x = torch.randn(b, 4, 8, 8, generator=g)
        v = torch.randn(b, 4, 8, 8, generator=g)
        v_ref = v + 0.3 * torch.randn(b, 4, 8, 8, generator=g)
        idx = torch.full((b,), k)
        prev = sampler.step(v, x, sampler.timesteps[idx], idx, generator=g).x_next
        res = sampler.step(v, x, sampler.timesteps[idx], idx, prev=prev)
        ref = sampler.step(v_ref, x, sampler.timesteps[idx], idx, prev=prev)
        ours["logp"].append(res.logp)
        ours["mean"].append(res.mean)
        ours["std"].append(res.std.expand(b))
        ours["mean_ref"].append(ref.mean)
        logp, mean, std_dev_t = official_sde_step(v, x, sigmas, idx, a, prev)
        _, mean_ref, _ = official_sde_step(v_ref, x, sigmas, idx, a, prev)
        for key, val in (("logp", logp), ("mean", mean), ("std_dev_t", std_dev_t), ("mean_ref", mean_ref)):
            theirs[key].append(val)
    return sampler, {k: torch.stack(v, 1) for k, v in ours.items()}, theirs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flowgrpo_loss_matches_the_official_training_step(seed):
    """The mean over steps of train_sd3.py's per-timestep loss (its gradient accumulates over the
    trained timesteps) = FlowGRPO.loss over (B, S), PPO part and per-step-scaled KL, to 1e-6."""
    sampler, ours, theirs = random_transitions(seed)
    b, s = ours["logp"].shape
    g = torch.Generator().manual_seed(100 + seed)
    logp_old = ours["logp"] + 1e-4 * torch.randn(b, s, generator=g)  # ratios inside and outside the clip
    adv = 3 * torch.randn(b, generator=g)
    beta = 0.04
    algo = FlowGRPO(beta=beta)
    algo.setup(sampler)
    batch = StepBatch(
        logp=ours["logp"],
        logp_old=logp_old,
        advantages=adv.clamp(-5, 5),
        rewards=torch.zeros(b),
        group_ids=torch.zeros(b, dtype=torch.long),
        timesteps=sampler.timesteps[:s].expand(b, s),
        step_index=torch.arange(s).expand(b, s),
        mean=ours["mean"],
        std=ours["std"],
        mean_ref=ours["mean_ref"],
    )
    got = algo.loss(batch)
    want = torch.stack(
        [
            official_loss(
                theirs["logp"][j],
                logp_old[:, j],
                adv,
                theirs["mean"][j],
                theirs["mean_ref"][j],
                theirs["std_dev_t"][j],
                1e-4,
                beta,
            )
            for j in range(s)
        ]
    ).mean()
    torch.testing.assert_close(got.value, want, rtol=1e-6, atol=1e-7)
    kl_official = torch.stack(
        [
            (
                ((theirs["mean"][j] - theirs["mean_ref"][j]) ** 2).mean(dim=(1, 2, 3), keepdim=True)
                / (2 * theirs["std_dev_t"][j] ** 2)
            ).mean()
            for j in range(s)
        ]
    ).mean()
    torch.testing.assert_close(got.metrics["kl_ref"], kl_official, rtol=1e-6, atol=0)


def test_flowgrpo_kl_is_the_exact_gaussian_kl_times_dt():
    """The official KL differs from the per-dimension Gaussian KL of the transition by dt per step
    (docs/algorithms.md#the-flow-grpo-sde): at 10 SD3 steps the factor runs from 0.025 to 0.16, so a constant beta
    cannot stand in for it."""
    sampler, ours, _ = random_transitions(3)
    b, s = ours["std"].shape
    dt = (sampler.sigmas[:-1] - sampler.sigmas[1:])[:s].expand(b, s)
    exact = (ours["mean"] - ours["mean_ref"]).pow(2).flatten(2).mean(-1) / (2 * ours["std"] ** 2)
    torch.testing.assert_close(flowgrpo_kl(ours["mean"], ours["mean_ref"], ours["std"], dt), exact * dt)
    assert float(dt.max() / dt.min()) > 3


def test_flowgrpo_recipe_trains_the_first_nine_of_ten_steps_in_order():
    """Official: num_train_timesteps = int(10 x 0.99) = 9, train_timesteps = range(9)."""
    algo = FlowGRPO()
    r = algo.recipe
    steps = trained_steps(4, 10, r.timestep_fraction, r.drop_last_step, r.shuffle_timesteps, torch.Generator())
    assert steps.tolist() == [list(range(9))] * 4
    assert (r.advantages, r.same_noise_per_group, algo.flow_variant) == ("flowgrpo", False, "flowgrpo")
    assert (algo.settings.beta, algo.settings.clip_range) == (0.04, 1e-4)
    assert algo.needs_reference_means and not FlowGRPO(beta=0.0).needs_reference_means


def test_flowgrpo_kl_on_ddim_is_the_exact_kl():
    """No std_dev_t without sqrt(dt) on a DDIM sampler: the scale is 1 at every step."""
    from tests.test_algorithms import sd1_sampler

    algo = FlowGRPO()
    algo.setup(sd1_sampler())
    assert torch.equal(algo.step_dt, torch.ones(50))


def test_flowgrpo_without_reference_means_is_refused():
    algo = FlowGRPO()
    algo.setup(FlowSDESampler(sd3_sigmas()))
    batch = StepBatch(
        logp=torch.zeros(2, 3),
        logp_old=torch.zeros(2, 3),
        advantages=torch.ones(2),
        rewards=torch.zeros(2),
        group_ids=torch.zeros(2, dtype=torch.long),
        timesteps=torch.zeros(2, 3),
        step_index=torch.arange(3).expand(2, 3),
    )
    with pytest.raises(ValueError, match="mean_ref"):
        algo.loss(batch)


def test_pyproject_registers_flowgrpo():
    """The entry point the installed package will carry (the registry reads installed metadata)."""
    from pathlib import Path

    import tomllib

    from t2i_rl_bench.registry import _load_reference

    eps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["entry-points"]
    assert _load_reference(eps["t2i_rl_bench.algorithms"]["flowgrpo"], "algorithm") is FlowGRPO


# ---- learning on the analytic toy -------------------------------------------------------------
class FlowPointPolicy(toy.PointPolicy):
    """The toy with a rectified-flow objective and data N(theta, s^2 I), s = 0.5: x_t = (1 - t) x_0 + t eps,
    and the exact velocity (x_t - E[x_0 | x_t]) / t with
    E[x_0 | x_t] = theta + c_t (x_t - (1 - t) theta),  c_t = (1 - t) s^2 / ((1 - t)^2 s^2 + t^2).
    Not a point mass as the DDIM toy: an exact flow denoiser of a point mass maps every x to theta at
    the last step (to sigma = 0), so the noise of the trained steps would never reach the reward.
    The optimum of the reward is -s^2 = -0.25."""

    objective = "flow"
    data_std = 0.5

    def __init__(self):
        super().__init__()
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)

    def predict(self, x, t_model, cond, uncond, guidance, detach_uncond=False, reference=False):
        theta = (self._reference if reference else self.denoiser).theta
        t = (torch.as_tensor(t_model, dtype=torch.float32) / 1000).reshape(-1, 1, 1, 1)
        s2 = self.data_std**2
        c = (1 - t) * s2 / ((1 - t) ** 2 * s2 + t**2)
        return (x - theta - c * (x - (1 - t) * theta)) / t


@pytest.fixture
def toy_world(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(factory, "Policy", toy.PointPolicy)
    toy.REWARDS.register("test_point_target")(toy.point_reward)


# flow: the official settings (beta 0.04, its dt-scaled KL). DDIM has the exact per-step KL, about
# 1/mean(dt) = 10x the official's at 10 flow steps: there beta 0.01 (the PickScore setting); at 0.04
# the reference holds it to 31% of the gap in 30 rounds
@pytest.mark.parametrize("family, beta", [("ddim", 0.01), ("flow", 0.04)])
def test_flowgrpo_raises_the_reward(toy_world, monkeypatch, family, beta):
    if family == "flow":
        monkeypatch.setattr(factory, "Policy", FlowPointPolicy)
    cfg = toy.toy_spec("flowgrpo", eta=0.7 if family == "flow" else 1.0, algorithm_settings={"beta": beta})
    trainer = train_mod.Trainer(cfg, out="unused")
    if family == "flow":
        assert isinstance(trainer.sampler, FlowSDESampler) and trainer.sampler.variant == "flowgrpo"
        assert trainer.algorithm.step_dt is not None and float(trainer.algorithm.step_dt.min()) < 1
    before = toy.expected_reward(trainer)
    for _ in range(30):
        trainer.round()
    after = toy.expected_reward(trainer)
    optimum = -(FlowPointPolicy.data_std**2) if family == "flow" else 0.0
    assert after > before + (optimum - before) / 3, (family, before, after)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ---- train with the SDE, evaluate with the ODE -----------------------------------------------
def test_evaluation_sampler_is_the_flow_ode_at_eta_zero():
    """evaluation.eta = 0 / evaluation.num_steps (Flow-GRPO: ODE, 40 steps): the evaluator's
    sampler is the Euler ODE step x + dt v (no noise, any generator), the training spec unchanged."""
    from t2i_rl_bench.evaluate import evaluation_spec

    spec = RunSpec(model_path="unused", algorithm="flowgrpo", reward="r", num_steps=10, eta=0.7)
    assert evaluation_spec(spec, {"seed": 1}) is spec
    ode = evaluation_spec(spec, {"eta": 0.0, "num_steps": 40})
    assert (ode.eta, ode.num_steps, spec.eta, spec.num_steps) == (0.0, 40, 0.7, 10)
    sampler = FlowSDESampler(sd3_sigmas(40), noise_level=ode.eta, variant="flowgrpo")
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for k in (0, 17, 39):
        idx = torch.full((3,), k)
        a = sampler.step(v, x, sampler.timesteps[idx], idx, generator=torch.Generator().manual_seed(1)).x_next
        b = sampler.step(v, x, sampler.timesteps[idx], idx, generator=torch.Generator().manual_seed(2)).x_next
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, x + (sampler.sigmas[k + 1] - sampler.sigmas[k]) * v)


def test_a_study_may_evaluate_with_its_own_sampler():
    from pathlib import Path

    import yaml

    from t2i_rl_bench import study

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "quick.yaml").read_text())
    cfg["evaluation"].update(eta=0.0, num_steps=12)
    study.validate(cfg, check_paths=False)
    cfg["evaluation"]["eta"] = -0.1
    with pytest.raises(study.ConfigError, match="evaluation"):
        study.validate(cfg, check_paths=False)
