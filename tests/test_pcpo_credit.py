"""PCPO's multipliers against the credit of the sampler the study actually runs (issue: the weights
must equal the effective credit, not only the closed form): on a real rollout of the shipped flow
model, the effective per-step weight |d mean / d model_out| / std, read off autograd, times PCPO's
multiplier is proportional to the step's integration interval (6.5, option F1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2i_rl_bench.algorithms.pcpo import PCPO
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.rollout import make_sampler, rollout

FLOW_MODEL = Path(__file__).resolve().parent.parent / "results" / "models" / "dit16-flow"


def effective_weights(policy: Policy, sampler, prompts: list[str], guidance: float, seed: int) -> torch.Tensor:
    """(K,) mean over samples and elements of |d mean_k / d model_out_k| / std_k on a real rollout:
    the credit each step's log-prob gradient passes to the denoiser's output."""
    traj = rollout(policy, sampler, prompts, guidance, torch.Generator().manual_seed(seed))
    n = len(prompts)
    weights = []
    for k in range(sampler.num_steps):
        x = traj.latents[:, k]
        with torch.no_grad():
            out = policy.predict(x, sampler.model_timesteps()[k], traj.cond, traj.uncond, guidance)
        out = out.clone().requires_grad_(True)
        res = sampler.step(
            out, x, sampler.timesteps[k].expand(n), step_index=torch.full((n,), k), prev=traj.latents[:, k + 1]
        )
        (grad,) = torch.autograd.grad(res.mean.sum(), out)
        weights.append((grad.abs() / res.std.reshape(-1, 1, 1, 1)).mean())
    return torch.stack(weights)


@pytest.mark.skipif(not (FLOW_MODEL / "bench_model.json").is_file(), reason="shipped flow model missing")
def test_pcpo_multipliers_times_effective_credit_follow_dt_on_a_real_flow_rollout():
    torch.manual_seed(0)
    policy = Policy.load(FLOW_MODEL)
    sampler = make_sampler(policy, 10, 0.7, flow_variant="flowgrpo")  # the default study's sampler
    pcpo = PCPO()
    pcpo.setup(sampler)
    w_eff = effective_weights(policy, sampler, ["a small red circle on the left , black background"] * 2, 3.0, 0)
    dt = (sampler.sigmas[:-1] - sampler.sigmas[1:]).double()
    credit = pcpo.multipliers.double() * w_eff.double() / dt
    # equal for every step: the credit a step receives is proportional to its time interval
    torch.testing.assert_close(credit, credit.mean().expand_as(credit), rtol=1e-4, atol=0)
    # and the native credit is not (what PCPO corrects): the spread it removes is real
    native = w_eff.double() / dt
    assert native.max() / native.min() > 5


def test_pcpo_ddim_multipliers_flatten_the_effective_credit_without_x0_clipping():
    """DDIM (6.4 B): m_t w_eff(t) = w* at every step when the sampler does not clip x0; with
    clipping the effective credit of clipped elements is no longer C(t)/sigma_t, so the DDIM
    preset's PCPO rows are proportionate only up to the clipped share (stated in
    docs/usage.md#the-embedded-world-default-offline-cpu)."""
    from diffusers import DDIMScheduler

    from t2i_rl_bench.sampling import DDIMSampler

    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    sampler = DDIMSampler(scheduler, 20, eta=1.0)
    pcpo = PCPO()
    pcpo.setup(sampler)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g)
    w_eff = []
    for k, t in enumerate(sampler.timesteps):
        eps = torch.randn(3, 3, 8, 8, generator=g).requires_grad_(True)
        res = sampler.step(eps, x, t.expand(3), step_index=torch.full((3,), k), generator=g)
        (grad,) = torch.autograd.grad(res.mean.sum(), eps)
        w_eff.append((grad.abs() / res.std.reshape(-1, 1, 1, 1)).mean())
        x = res.x_next.detach()
    credit = pcpo.multipliers * torch.stack(w_eff)
    torch.testing.assert_close(credit, credit.mean().expand_as(credit), rtol=1e-4, atol=0)
