"""Per-step surrogate losses shared by several algorithms."""

from __future__ import annotations

import torch

from bench.algorithm import Loss


def ppo_clip_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_range: float) -> Loss:
    """PPO's clipped surrogate on per-step ratios (ALGORITHMS.md 0; ddpo-pytorch scripts/train.py):
    mean over (B, S) of max(-A rho, -A clip(rho, 1 - eps, 1 + eps)), rho = exp(logp - logp_old).

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
