"""Differentiable-reward fine-tuning: DRaFT-K (Clark et al. 2024, "Directly Fine-Tuning Diffusion
Models on Differentiable Rewards", Alg. 1 with truncated backpropagation) and ReFL (Xu et al. 2023,
ImageReward; THUDM/ImageReward ImageReward/ReFL.py).

DRaFT-K samples the whole chain and backpropagates the reward of the final image through the last
K steps only (the input of step K_total - K detached); the paper finds K = 1 best:

    L = -r(x_0),  x_0 = sample(theta, x_T) with stop_gradient before the last K steps.

ReFL runs the sampler without gradient to a random late step s (30..39 of 40 steps), takes the
model's x0 prediction there with gradient and scores it:

    L = grad_scale * relu(margin - r(x0_hat_s)),  margin 2, grad_scale 1e-3.

Both need a differentiable reward (the study refuses others); neither has sampler log-probs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.algorithm import (
    AlgorithmSettings,
    DifferentiableRewardAlgorithm,
    Loss,
    Paper,
    Recipe,
    RewardBatch,
    setting,
)


@dataclass(frozen=True)
class DRaFTSettings(AlgorithmSettings):
    k: int = setting(1, ge=1)  # DRaFT-K: steps with gradient at the end of the chain (K = 1, the paper's best)


@dataclass(frozen=True)
class ReFLSettings(AlgorithmSettings):
    stop_from: float = setting(0.75, ge=0, lt=1)  # the stop step is uniform in [floor(f K), K - 1] (30..39 of 40)
    margin: float = 2.0  # relu(margin - r) (ImageReward's reward is roughly in [-2, 2])
    grad_scale: float = setting(1e-3, gt=0)  # --grad_scale


class DRaFT(DifferentiableRewardAlgorithm):
    """Reward gradient through the last K sampling steps."""

    paper = Paper(
        "clark2024draft",
        "Directly Fine-Tuning Diffusion Models on Differentiable Rewards",
        ("Clark, Kevin", "Vicol, Paul", "Swersky, Kevin", "Fleet, David J."),
        2024,
        arxiv="2309.17400",
        venue="International Conference on Learning Representations (ICLR)",
    )

    Settings = DRaFTSettings
    settings: DRaFTSettings
    recipe = Recipe(advantages="none", inner_epochs=1, updates_per_round=1)

    def backprop_window(self, num_steps: int, generator: torch.Generator) -> tuple[int, int]:
        return max(num_steps - self.settings.k, 0), num_steps

    def loss(self, batch: RewardBatch) -> Loss:  # type: ignore[override]
        return Loss(-batch.rewards.mean())


class ReFL(DifferentiableRewardAlgorithm):
    """Reward feedback learning: the reward of the x0 prediction at one random late step."""

    paper = Paper(
        "xu2023imagereward",
        "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation",
        (
            "Xu, Jiazheng",
            "Liu, Xiao",
            "Wu, Yuchen",
            "Tong, Yuxuan",
            "Li, Qinkai",
            "Ding, Ming",
            "Tang, Jie",
            "Dong, Yuxiao",
        ),
        2023,
        arxiv="2304.05977",
        venue="Advances in Neural Information Processing Systems (NeurIPS)",
    )

    Settings = ReFLSettings
    settings: ReFLSettings
    recipe = Recipe(advantages="none", inner_epochs=1, updates_per_round=1)

    def backprop_window(self, num_steps: int, generator: torch.Generator) -> tuple[int, int]:
        low = min(int(self.settings.stop_from * num_steps), num_steps - 1)
        stop = int(torch.randint(low, num_steps, (1,), generator=generator))  # random.randint(30, 39)
        return stop, stop

    def loss(self, batch: RewardBatch) -> Loss:  # type: ignore[override]
        s = self.settings
        return Loss(torch.relu(s.margin - batch.rewards).mean() * s.grad_scale)
