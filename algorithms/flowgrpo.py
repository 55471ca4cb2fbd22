"""Flow-GRPO (Liu et al. 2025, arXiv 2505.05470; code yifan123/flow_grpo scripts/train_sd3.py,
flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, config/grpo.py;
docs/algorithms.md#group-relative-advantages, docs/algorithms.md#the-flow-grpo-sde,
docs/algorithms.md#the-grpo-loss).

    A_i  = (r_i - mean_p r) / (std_all r + 1e-4),  mean per prompt, population std of the whole round
    loss = mean_{i,t} max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps, 1 + eps)) + beta mean_{i,t} KL_t
    KL_t = mean_dims((mu_theta - mu_ref)^2) / (2 std_dev_t^2)

The KL is the official one, not the Gaussian KL of the transition: `sde_step_with_logprob`
returns std_dev_t = a sqrt(t / (1 - t)) without the step's sqrt(-dt) (the transition's std is
std_dev_t sqrt(-dt)), and train_sd3.py divides by it. So KL_t = |dt_t| x the exact per-dimension
KL, a per-step factor (sigma_t - sigma_{t+1}) that this loss applies from the sampler's schedule.
On a DDIM sampler (which Flow-GRPO was not written for) there is no such factor: the KL is the exact
per-step Gaussian KL there.

The reference is the frozen initial weights (LoRA: adapters off). Sampling is the flow SDE
'flowgrpo' (std_dev_t = a sqrt(t/(1-t))); the first K-1 of K steps are trained, in order (the
official timestep_fraction 0.99 of 10 steps; the step to sigma = 0 is never trained); no shared
x_T (same_latent False). The evaluation with the ODE (noise level 0, 40 steps officially) is the
study's `evaluation.eta` / `evaluation.num_steps`, the same for every method.

Samples whose advantage is exactly 0 (every sample of a group whose rewards are all equal) are left
out of the round's updates (train_sd3.py: `mask = advantages.abs().sum(dim=1) != 0`, then
`samples = samples[mask]`), so the loss is a mean over the others and they add no KL: the recipe's
`drop_zero_advantage` (on; false trains them as before). Not reproduced: the official code re-admits a
few of them at random so that the kept count divides num_batches_per_epoch (a reshape's need; the
updates here split any count), and EMA.

With the coefficients-preserving sampler (flow_variant 'cps', IamCreateAI/FlowCPS, a fork of
flow_grpo) the KL is FlowCPS's: KL_t = mean_dims((mu_theta - mu_ref)^2), without a std (its
train_sd3.py drops the division along with the log-prob's 1/(2 std^2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.algorithm import Algorithm, AlgorithmSettings, Loss, Paper, Recipe, StepBatch, setting
from t2i_rl_bench.losses import ppo_clip_loss


@dataclass(frozen=True)
class FlowGRPOSettings(AlgorithmSettings):
    clip_range: float = setting(1e-4, gt=0)  # config/base.py train.clip_range
    # config/grpo.py train.beta: 0.04 for GenEval and OCR (the paper's main tasks), 0.01 for PickScore
    beta: float = setting(0.04, ge=0)


def flowgrpo_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's per-step KL, (B, S): mean_dims((mean - mean_ref)^2) / (2 std_dev_t^2) with
    std_dev_t^2 = std^2 / dt, std the transition's std and dt = sigma_t - sigma_{t+1} > 0 of each
    step (1 for samplers without one: the exact Gaussian KL).

    mean, mean_ref: (B, S, C, H, W); std, dt: (B, S)."""
    sq = (mean.float() - mean_ref.float()).pow(2).flatten(2).mean(-1)
    return sq * dt.float() / (2 * std.float().pow(2))


class FlowGRPO(Algorithm):
    """PPO clip on per-step ratios with per-prompt advantages over the global std, plus the
    official per-step KL to the frozen base."""

    paper = Paper(
        "liu2025flowgrpo",
        "Flow-GRPO: Training Flow Matching Models via Online RL",
        (
            "Liu, Jie",
            "Liu, Gongye",
            "Liang, Jiajun",
            "Li, Yangguang",
            "Liu, Jiaheng",
            "Wang, Xintao",
            "Wan, Pengfei",
            "Zhang, Di",
            "Ouyang, Wanli",
        ),
        2025,
        arxiv="2505.05470",
    )

    Settings = FlowGRPOSettings
    settings: FlowGRPOSettings
    recipe = Recipe(
        advantages="flowgrpo",  # stat_tracking.py with global_std=True
        adv_clip=5.0,  # train.adv_clip_max
        inner_epochs=1,
        updates_per_round=2,  # gradient_accumulation_steps = num_batches_per_epoch / 2
        timestep_fraction=1.0,  # with drop_last_step: int(10 x 0.99) = 9 of 10 steps
        drop_last_step=True,
        shuffle_timesteps=False,  # train_timesteps = range(num_train_timesteps), in order
        same_noise_per_group=False,  # config.sample.same_latent = False
        drop_zero_advantage=True,  # train_sd3.py: samples with an all-zero advantage are filtered out
    )
    flow_variant = "flowgrpo"

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.step_dt: torch.Tensor | None = None  # (K,) sigma_t - sigma_{t+1}, set by setup
        self.unscaled_kl = False  # the cps sampler: FlowCPS's KL, without a std

    @property
    def needs_reference_means(self) -> bool:
        return self.settings.beta > 0

    def setup(self, sampler) -> None:
        self.unscaled_kl = getattr(sampler, "variant", None) == "cps"
        if sampler.family == "flow":
            self.step_dt = (sampler.sigmas[:-1] - sampler.sigmas[1:]).float()
        else:  # no std_dev_t without sqrt(dt) on DDIM: the exact KL
            self.step_dt = torch.ones(sampler.num_steps)

    def loss(self, batch: StepBatch) -> Loss:
        loss = ppo_clip_loss(batch.logp, batch.logp_old, batch.advantages, self.settings.clip_range)
        if self.settings.beta <= 0:
            return loss
        if batch.mean_ref is None or batch.mean is None or batch.std is None:
            raise ValueError("beta > 0 needs the reference's transition means (StepBatch.mean_ref)")
        if self.step_dt is None:
            raise RuntimeError("FlowGRPO.setup(sampler) must run before loss(): the KL's scale comes from the schedule")
        if self.unscaled_kl:
            kl = (batch.mean.float() - batch.mean_ref.float()).pow(2).flatten(2).mean(-1).mean()
        else:
            dt = self.step_dt.to(batch.std.device)[batch.step_index]
            kl = flowgrpo_kl(batch.mean, batch.mean_ref, batch.std, dt).mean()
        return Loss(
            loss.value + self.settings.beta * kl, metrics={**loss.metrics, "kl_ref": kl.detach()}, clipped=loss.clipped
        )
