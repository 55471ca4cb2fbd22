"""LOOP: leave-one-out PPO (Gupta et al. 2025, arXiv 2503.00897; docs/algorithms.md#loop).

    A_i  = r_i - 1/(K-1) sum_{j != i} r_j = K/(K-1) (r_i - mean_g r)      (RLOO baseline)
    loss = mean_{i,t} max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps, 1 + eps))

K images of each prompt are sampled in the same round. Only the abstract was read: the
leave-one-out-inside-PPO-clip form is [derived/unverified] (it matches the abstract and RLOO);
whether A is also divided by the group std is [unverified], so 'loo_std' is offered as a setting
(docs/algorithms.md#what-is-unverified-in-loop recommends reporting both). K = 4 and the PPO
settings, taken from DDPO-IS, are [unverified] placeholders."""

from __future__ import annotations

from dataclasses import dataclass

from t2i_rl_bench.algorithm import Algorithm, AlgorithmSettings, Loss, Paper, Recipe, StepBatch, setting
from t2i_rl_bench.losses import ppo_clip_loss


@dataclass(frozen=True)
class LOOPSettings(AlgorithmSettings):
    # DDPO-IS defaults (docs/algorithms.md#what-is-unverified-in-loop recommendation)
    clip_range: float = setting(1e-4, gt=0)


class LOOP(Algorithm):
    """PPO clip with a leave-one-out baseline over the K samples of a prompt."""

    paper = Paper(
        "gupta2025loop",
        "A Simple and Effective Reinforcement Learning Method for Text-to-Image Diffusion Fine-tuning",
        (
            "Gupta, Shashank",
            "Ahuja, Chaitanya",
            "Lin, Tsung-Yu",
            "Dutta Roy, Sreya",
            "Oosterhuis, Harrie",
            "de Rijke, Maarten",
            "Shukla, Satya Narayan",
        ),
        2025,
        arxiv="2503.00897",
    )

    Settings = LOOPSettings
    settings: LOOPSettings
    recipe = Recipe(
        group_size=4,  # K images per prompt [unverified]; RLOO literature uses 2-8
        advantages="loo",  # 'loo' (raw leave-one-out) or 'loo_std' (divided by the group std)
        adv_clip=5.0,
        inner_epochs=1,
        updates_per_round=4,
    )

    def __init__(self, **overrides):
        super().__init__(**overrides)
        if self.recipe.advantages not in ("loo", "loo_std"):
            raise ValueError(f"LOOP: advantages must be 'loo' or 'loo_std', got {self.recipe.advantages!r}")
        if self.recipe.group_size is not None and self.recipe.group_size < 2:
            raise ValueError("LOOP: the leave-one-out baseline needs group_size >= 2")

    def loss(self, batch: StepBatch) -> Loss:
        return ppo_clip_loss(batch.logp, batch.logp_old, batch.advantages, self.settings.clip_range)
