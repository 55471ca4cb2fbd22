"""REINFORCE over the denoising MDP: DDPO-SF (Black et al. 2023, eq. "DDPO_SF"; docs/algorithms.md#the-reinforce-loss).

    grad J = E[ sum_t grad log p_theta(x_{t-1} | x_t, c) * A ]

Trajectories must come from the current weights, so there is exactly one optimiser step per
sampling round (DDPO App. D.1 accumulates all 256 samples into one step)."""

from __future__ import annotations

import torch

from t2i_rl_bench.algorithm import Algorithm, Loss, Paper, Recipe, StepBatch

# the paper of both DDPO variants (DDPO-SF here, DDPO-IS in ddpo_is.py)
DDPO_PAPER = Paper(
    "black2024ddpo",
    "Training Diffusion Models with Reinforcement Learning",
    ("Black, Kevin", "Janner, Michael", "Du, Yilun", "Kostrikov, Ilya", "Levine, Sergey"),
    2024,
    arxiv="2305.13301",
    venue="International Conference on Learning Representations (ICLR)",
)


class Reinforce(Algorithm):
    """Score-function policy gradient with a normalised advantage (DDPO-SF)."""

    paper = DDPO_PAPER

    recipe = Recipe(
        advantages="per_prompt",  # DDPO's per-prompt stat tracker (ddpo-pytorch stat_tracking.py)
        adv_clip=5.0,
        inner_epochs=1,  # on-policy: one pass ...
        updates_per_round=1,  # ... and one optimiser step per round
    )

    def __init__(self, **overrides):
        super().__init__(**overrides)
        if self.recipe.inner_epochs != 1 or self.recipe.updates_per_round != 1:
            raise ValueError("REINFORCE is on-policy: inner_epochs and updates_per_round must be 1")

    def loss(self, batch: StepBatch) -> Loss:
        surrogate = -batch.advantages[:, None] * batch.logp  # (B, S)
        return Loss(surrogate.mean(), clipped=torch.zeros_like(batch.logp, dtype=torch.bool))
