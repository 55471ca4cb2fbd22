"""Sampling with a gradient for the differentiable-reward family (DRaFT-K, ReFL;
t2i_rl_bench.algorithm.DifferentiableRewardAlgorithm): the sampler's own steps, without gradient up to a
window and with it (the chain of inputs kept) inside, the image being the final latent or the
model's x0 prediction where the window stops early."""

from __future__ import annotations

import torch

from t2i_rl_bench.interfaces import Sampler
from t2i_rl_bench.models.policy import Policy


def predicted_x0(sampler: Sampler, model_out: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """The model's clean-sample prediction at sampler step k (the x0 term of the step rule): flow
    x - sigma_k v; DDIM (x - sqrt(1 - ab) eps) / sqrt(ab), or sqrt(ab) x - sqrt(1 - ab) v."""
    x32, out = x.float(), model_out.float()
    if sampler.family == "flow":
        return x32 - sampler.timesteps[k].to(x.device) * out
    ab = sampler.alpha_bars(sampler.timesteps[k : k + 1])[0].to(x.device)  # type: ignore[attr-defined]
    if sampler.prediction_type == "v_prediction":  # type: ignore[attr-defined]
        return ab.sqrt() * x32 - (1 - ab).sqrt() * out
    return (x32 - (1 - ab).sqrt() * out) / ab.sqrt()


def backprop_sample(
    policy: Policy,
    sampler: Sampler,
    prompts: list[str],
    guidance: float,
    generator: torch.Generator,
    window: tuple[int, int],
) -> torch.Tensor:
    """Latents (B, C, H, W) of the prompts whose graph reaches the weights through sampler steps
    window = (start, stop): steps < start without gradient, start..stop-1 with it (DRaFT-K: the
    last K steps); stop < K: the x0 prediction at step `stop`, with gradient (ReFL)."""
    start, stop = window
    if not 0 <= start <= stop <= sampler.num_steps:
        raise ValueError(f"backprop window {window} must satisfy 0 <= start <= stop <= {sampler.num_steps}")
    n = len(prompts)
    cond, uncond = policy.encode(prompts), policy.encode([""] * n)
    x = torch.randn((n, *policy.sample_shape), generator=generator)
    model_t = sampler.model_timesteps()
    for k in range(stop):
        with torch.set_grad_enabled(k >= start):
            out = policy.predict(x, model_t[k], cond, uncond, guidance)
            step = torch.full((n,), k)
            x = sampler.step(out, x, sampler.timesteps[k].expand(n), step_index=step, generator=generator).x_next
    if stop == sampler.num_steps:
        return x
    out = policy.predict(x, model_t[stop], cond, uncond, guidance)
    return predicted_x0(sampler, out, x, stop)
