"""DDPO-IS: PPO-clipped importance-sampled policy gradient over the denoising MDP
(Black et al. 2023, arXiv 2305.13301, Sec. 4.3 and App. D; docs/algorithms.md#ddpo-is).

    loss = mean_{i,t} max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps, 1 + eps)),
    rho_{i,t} = p_theta(x_{t-1} | x_t, c) / p_old(x_{t-1} | x_t, c)

Log-probs are per-dimension means (ddpo-pytorch), so rho is a per-dimension geometric mean and
the clip range is tiny. theta_old is only the stored sampling-time log-prob."""

from __future__ import annotations

from dataclasses import dataclass

from t2i_rl_bench.algorithm import Algorithm, AlgorithmSettings, Loss, Recipe, StepBatch, setting
from t2i_rl_bench.algorithms.reinforce import DDPO_PAPER
from t2i_rl_bench.losses import ppo_clip_loss


@dataclass(frozen=True)
class DDPOISSettings(AlgorithmSettings):
    clip_range: float = setting(1e-4, gt=0)  # DDPO App. D.5 Table; ddpo-pytorch config/base.py train.clip_range


class DDPOIS(Algorithm):
    """PPO clip on per-step ratios with per-prompt normalised advantages."""

    paper = DDPO_PAPER  # the same paper as DDPO-SF

    Settings = DDPOISSettings
    settings: DDPOISSettings
    recipe = Recipe(
        advantages="per_prompt",  # per-prompt stat tracker (ddpo-pytorch stat_tracking.py)
        adv_clip=5.0,  # ddpo-pytorch train.adv_clip_max
        inner_epochs=1,  # ddpo-pytorch train.num_inner_epochs
        updates_per_round=4,  # paper: 256 samples / batch 64 = 4 gradient updates per iteration
        timestep_fraction=1.0,  # all 50 steps trained in the paper
    )

    def loss(self, batch: StepBatch) -> Loss:
        return ppo_clip_loss(batch.logp, batch.logp_old, batch.advantages, self.settings.clip_range)
