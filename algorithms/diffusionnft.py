"""DiffusionNFT: online RL on the forward process (Zheng et al. 2025, "DiffusionNFT: Online Diffusion
Reinforcement with Forward Process"; NVlabs/DiffusionNFT scripts/train_nft_sd3.py, config/nft.py).

Likelihood-free: no sampler log-probs. Each clean sample x0 of the round is re-noised at a sampler
time t, x_t = (1 - t) x0 + t eps, and the current velocity v_theta is mixed with the old policy's
v_old into an implicit positive and negative policy,

    v+ = beta v_theta + (1 - beta) v_old,      v- = (1 + beta) v_old - beta v_theta,

each trained toward x0 through its x0 prediction x_t - t v, with an adaptive per-sample weight
(the detached mean |x0_hat - x0|). The reward, as an advantage clamped to [-c, c], becomes the
optimality probability r = clamp(A / (2c) + 1/2, 0, 1):

    L = c/beta [ r ||x0+ - x0||^2 / w+ + (1 - r) ||x0- - x0||^2 / w- ] + kl_beta ||v_theta - v_ref||^2.

The old policy samples; after each round it moves toward the trained weights by the official
decay schedule (`old_policy_decay`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.algorithm import AlgorithmSettings, ForwardAlgorithm, ForwardBatch, Loss, Paper, Recipe, setting

ADV_MODES = ("all", "positive_only", "negative_only", "one_only", "binary")
# return_decay of train_nft_sd3.py: (flat, uprate, uphold) by decay_type
DECAY_SCHEDULES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


@dataclass(frozen=True)
class DiffusionNFTSettings(AlgorithmSettings):
    beta: float = setting(1.0, gt=0)  # config.beta: the mixing strength (1.0; 0.1 for OCR and multi-reward)
    kl_beta: float = setting(1e-4, ge=0)  # config.train.beta: velocity MSE to the reference (SD3.5-M)
    adv_mode: str = setting("all", choices=ADV_MODES)  # config.train.adv_mode
    decay_type: int = setting(1, choices=(0, 1, 2))  # the old policy's EMA schedule (1; 2 for OCR)
    weight_floor: float = setting(1e-5, gt=0)  # the adaptive weight's clip(min=...)


def optimality(advantages: torch.Tensor, adv_clip: float, mode: str) -> torch.Tensor:
    """r in [0, 1] from advantages (N,) already clamped to [-adv_clip, adv_clip]."""
    a = advantages
    if mode == "positive_only":
        a = a.clamp(0, adv_clip)
    elif mode == "negative_only":
        a = a.clamp(-adv_clip, 0)
    elif mode == "one_only":
        a = (a > 0).to(a.dtype)
    elif mode == "binary":
        a = torch.sign(a)
    return ((a / adv_clip) / 2.0 + 0.5).clamp(0, 1)


def adaptive_x0_loss(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, floor: float):
    """(N,) mean ||x_t - t v - x0||^2 / w, w = the detached mean |x_t - t v - x0| (fp64, >= floor)."""
    dims = tuple(range(1, x0.ndim))
    x0_hat = x_t - t.view(-1, *[1] * (x0.ndim - 1)) * v
    with torch.no_grad():
        w = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clip(min=floor)
    return ((x0_hat - x0) ** 2 / w).mean(dim=dims)


class DiffusionNFT(ForwardAlgorithm):
    """Negative-aware fine-tuning on the forward process (flow models)."""

    paper = Paper(
        "zheng2026diffusionnft",
        "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
        (
            "Zheng, Kaiwen",
            "Chen, Huayu",
            "Ye, Haotian",
            "Wang, Haoxiang",
            "Zhang, Qinsheng",
            "Jiang, Kai",
            "Su, Hang",
            "Ermon, Stefano",
            "Zhu, Jun",
            "Liu, Ming-Yu",
        ),
        2026,
        arxiv="2509.16117",
        venue="International Conference on Learning Representations (ICLR)",
    )

    Settings = DiffusionNFTSettings
    settings: DiffusionNFTSettings
    recipe = Recipe(
        advantages="group_pop",  # per-prompt tracker cleared every round: group mean, population std + 1e-4
        adv_clip=5.0,  # config.train.adv_clip_max
        inner_epochs=1,  # config.train.num_inner_epochs
        updates_per_round=1,  # gradient_step_per_epoch (1; 2 for OCR)
        timestep_fraction=0.99,  # int(K * 0.99) sampler times per sample, a random subset
    )

    @property
    def needs_reference(self) -> bool:
        return self.settings.kl_beta > 0

    def old_policy_decay(self, optimiser_steps: int) -> float:
        flat, uprate, uphold = DECAY_SCHEDULES[self.settings.decay_type]
        return 0.0 if optimiser_steps < flat else min((optimiser_steps - flat) * uprate, uphold)

    def loss(self, batch: ForwardBatch) -> Loss:  # type: ignore[override]
        s, c = self.settings, self.recipe.adv_clip
        r = optimality(batch.advantages, c, s.adv_mode)
        old = batch.pred_old.detach()
        positive = s.beta * batch.pred + (1 - s.beta) * old
        negative = (1.0 + s.beta) * old - s.beta * batch.pred
        pos = adaptive_x0_loss(batch.x_t, batch.t, positive, batch.x0, s.weight_floor)
        neg = adaptive_x0_loss(batch.x_t, batch.t, negative, batch.x0, s.weight_floor)
        policy = ((r * pos / s.beta + (1.0 - r) * neg / s.beta) * c).mean()
        dims = tuple(range(1, batch.x0.ndim))
        metrics = {"policy_loss": policy.detach(), "old_deviate": (batch.pred - old).pow(2).mean().detach()}
        value = policy
        if batch.pred_ref is not None:
            kl = (batch.pred - batch.pred_ref).pow(2).mean(dim=dims).mean()
            value = value + s.kl_beta * kl
            metrics["kl_div"] = kl.detach()
        return Loss(value.float(), metrics)
