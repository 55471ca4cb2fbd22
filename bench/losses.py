"""Per-step surrogate losses shared by several algorithms."""

from __future__ import annotations

import torch

from t2i_rl_bench.algorithm import Loss


def ppo_clip_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_range: float) -> Loss:
    """PPO's clipped surrogate on per-step ratios
    (docs/algorithms.md#conventions-shared-by-every-method; ddpo-pytorch scripts/train.py): mean
    over (B, S) of max(-A rho, -A clip(rho, 1 - eps, 1 + eps)), rho = exp(logp - logp_old).

    logp, logp_old: (B, S); adv: (B,), already clamped. `clipped` marks the steps whose gradient the
    clip removed; the metric `clipfrac_ratio` is ddpo-pytorch's logged mean(|rho - 1| > eps)."""
    ratio = (logp - logp_old).exp()  # (B, S)
    a = adv[:, None]
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1 - clip_range, 1 + clip_range)
    with torch.no_grad():
        removed = ((a > 0) & (ratio > 1 + clip_range)) | ((a < 0) & (ratio < 1 - clip_range))
        outside = ((ratio - 1).abs() > clip_range).float().mean()
    return Loss(torch.maximum(unclipped, clipped).mean(), metrics={"clipfrac_ratio": outside}, clipped=removed)


def gaussian_kl_to_reference(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2 I) || N(mean_ref, std^2 I)) per transition, averaged over dimensions:
    mean_dims((mean - mean_ref)^2) / (2 std^2), (B, S). Flow-GRPO's `kl_loss` (docs/algorithms.md#the-flow-grpo-sde)
    divides by its std_dev_t^2, which lacks the sqrt(dt) of the step's std: its value is this one
    times |dt|, so its beta corresponds to beta x |dt| here.

    mean, mean_ref: (B, S, C, H, W); std: (B, S)."""
    sq = (mean.float() - mean_ref.float()).pow(2).flatten(2).mean(-1)  # (B, S)
    return sq / (2 * std.float().pow(2))
