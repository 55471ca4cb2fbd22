import re
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from t2i_rl_bench import study
from t2i_rl_bench.evaluate import Evaluator
from t2i_rl_bench.models.embedded import EmbeddedSpec, build_scheduler
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.rollout import make_sampler, recompute, rollout
from t2i_rl_bench.sampling import DDIMSampler, FlowSDESampler, flow_sigmas, gaussian_logp


def test_gaussian_logp_equals_torch_normal():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    std = torch.rand(5, generator=g) + 0.1
    ref = torch.distributions.Normal(mean, std[:, None, None, None]).log_prob(x)
    assert torch.allclose(gaussian_logp(x, mean, std), ref.mean(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(gaussian_logp(x, mean, std, reduce="sum"), ref.sum(dim=(1, 2, 3)), atol=1e-4)
    with pytest.raises(ValueError):
        gaussian_logp(x, mean, std, reduce="max")


@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddim_step_at_eta_zero_equals_diffusers(clip_sample):
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=clip_sample,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    sampler = DDIMSampler(sched, num_steps=10, eta=0.0)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in sampler.timesteps[[0, 4, 9]]:
        ours = sampler.step(eps, x, t.expand(2))
        theirs = sched.step(eps, int(t), x, eta=0.0).prev_sample
        assert torch.allclose(ours.x_next, theirs, atol=1e-5)


def test_ddim_mean_at_eta_one_equals_diffusers_without_noise():
    sched = build_scheduler(EmbeddedSpec())
    sampler = DDIMSampler(sched, num_steps=20, eta=1.0)
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = sampler.timesteps[5]
    ours = sampler.step(eps, x, t.expand(3), generator=g)
    theirs = sched.step(eps, int(t), x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    assert torch.allclose(ours.mean, theirs, atol=1e-5)
    assert torch.allclose(ours.std, sampler.variance(t.expand(3)).sqrt())


def test_recomputing_a_recorded_step_reproduces_its_logp(tiny_model):
    policy = Policy.load(tiny_model)
    sampler = make_sampler(policy, num_steps=6, eta=1.0)
    traj = rollout(
        policy,
        sampler,
        ["a red circle", "two small blue squares on the left"] * 2,
        3.0,
        torch.Generator().manual_seed(0),
    )
    assert traj.latents.shape == (4, 7, *policy.sample_shape)
    assert traj.logp.shape == (4, 6) and traj.means.shape == (4, 6, *policy.sample_shape)
    steps = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    logp, mean, std = recompute(policy, sampler, traj, torch.arange(4), steps, 3.0)
    assert torch.allclose(logp, torch.gather(traj.logp, 1, steps), atol=1e-5)
    assert torch.allclose(std, torch.gather(traj.stds, 1, steps))
    # changed weights change the log-prob of the same transition
    with torch.no_grad():
        for p in policy.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    logp2, _, _ = recompute(policy, sampler, traj, torch.arange(4), steps, 3.0)
    assert not torch.allclose(logp2, logp, atol=1e-4)


@pytest.mark.parametrize("variant", ["flowgrpo", "dancegrpo"])
def test_flow_sde_step_recomputes_its_logp(variant):
    sampler = FlowSDESampler(flow_sigmas(8, shift=3.0), noise_level=0.7, variant=variant)
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for k in range(sampler.num_steps):
        res = sampler.step(v, x, sampler.timesteps[k], step_index=k, generator=g)
        again = sampler.step(v, x, sampler.timesteps[k], step_index=k, prev=res.x_next)
        assert torch.allclose(res.logp, again.logp, atol=1e-5)
        x = res.x_next
    assert torch.isfinite(x).all()


def test_step_refuses_prev_and_generator_together():
    sampler = DDIMSampler(build_scheduler(EmbeddedSpec()), num_steps=4)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="not both"):
        sampler.step(x, x, sampler.timesteps[0], prev=x, generator=torch.Generator())


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_logp_is_finite_with_set_alpha_to_one_and_conforms_to_ddpo_pytorch(set_alpha_to_one):
    """ddpo-pytorch's ddim_step_with_logprob clamps the previous timestep to [0, T - 1] before it
    reads alpha_bar: the last step goes to alpha_bar(0), whatever final_alpha_cumprod is. Here the
    same step written out from the DDIM paper's eq. (12) and (16) with that clamp."""
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        steps_offset=1,
    )
    sampler = DDIMSampler(sched, num_steps=10, eta=1.0)
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    abar = sched.alphas_cumprod.double()
    for t in sampler.timesteps:
        prev = int(t) - sched.config.num_train_timesteps // 10
        a_t, a_prev = abar[int(t)], abar[min(max(prev, 0), sched.config.num_train_timesteps - 1)]
        std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
        mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps.double()
        x_next = mean + std * torch.randn(x.shape, generator=g, dtype=torch.float64)
        logp = torch.distributions.Normal(mean, std).log_prob(x_next).mean(dim=(1, 2, 3))
        ours = sampler.step(eps, x, t.expand(2), prev=x_next.float())
        assert torch.isfinite(ours.logp).all(), int(t)
        assert torch.allclose(ours.mean.double(), mean, atol=1e-4) and torch.allclose(
            ours.logp.double(), logp, atol=1e-3
        )


def test_the_noise_level_table_of_dancegrpos_sde(tmp_path):
    """docs/study.md#dancegrpos-noise-level: the base model's held-out shape_iou under each training sampler,
    recomputed on the shipped model. DanceGRPO's constant diffusion at Flow-GRPO's 0.7 leaves its final images
    noisy; at its own 0.3 they score as the ODE's."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "study.md").read_text()
    section = text.split("### DanceGRPO's noise level", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| [^|]+ \| ([\d.]+) \| ([\d.]+) \|$", section, flags=re.M)
    cfg = study.load(root / "config" / "config.yaml", check_paths=False)
    spec = study.run_spec(cfg, study.runs(cfg)[0])
    evaluation = {
        "prompts": "heldout",
        "max_prompts": 40,
        "images_per_prompt": 4,
        "rewards": ["shape_iou"],
        "seed": 1234,
    }
    measured = []
    for variant, eta in (("flowgrpo", 0.0), ("flowgrpo", 0.7), ("dancegrpo", 0.7), ("dancegrpo", 0.3)):
        row = Evaluator(spec.replace(flow_variant=variant, eta=eta), evaluation)(0, 0.0, tmp_path / "grid.png")
        measured.append((f"{eta:g}", f"{row['reward/shape_iou']:.4f}"))
    assert [(f"{float(a):g}", b) for a, b in rows] == measured
    assert float(measured[2][1]) < float(measured[0][1]) - 0.1 < float(measured[3][1]) - 0.1
    below = float(measured[0][1]) - float(measured[2][1])
    assert f"trained on images {below:.2f} below what its ODE evaluation makes" in " ".join(section.split())
