"""PRDP: Proximal Reward Difference Prediction (Deng et al., CVPR 2024, arXiv 2402.08714;
docs/algorithms.md#prdp; loss transcribed from the paper's App. G JAX code, docs/algorithms.md#the-prdp-loss).

For two trajectories a, b of the same prompt with r_a > r_b (ties dropped):
    lr_t     = log p_theta(x_{t-1}|x_t,c) - log p_ref(x_{t-1}|x_t,c)       implied reward of step t
    lr_old_t = log p_old - log p_ref
    lr_clip  = clip(lr_t, lr_old_t - eps, lr_old_t + eps)                   stepwise proximal clip
    s, s_clip = reduce_t(lr), reduce_t(lr_clip)                             mean over t (App. G)
    l, l_clip = (s_a - s_b - dr/beta)^2, (s_clip_a - s_clip_b - dr/beta)^2
    loss     = mean over pairs of max(l, l_clip)
The loss is zero iff pi_theta = pi_ref exp(r/beta)/Z on the trajectories (App. A.3).

Defaults: the small-scale column of App. E Table 4 (45 prompts, SD-1.4): beta 3e-5, eps 1e-6,
K = 10 gradient updates per epoch, DDPM sampling (eta 1), 16 images per prompt (left to the
study's group size here). beta is convention-dependent (docs/algorithms.md#prdps-beta): App. C quotes
beta in {0.1, 1, 10} for another log-prob scaling, and mean vs sum over steps (and over pixels)
rescales it. We keep 3e-5 because the official loss (App. G) averages over steps, as `step_reduce`
'mean' does here; with per-dim-mean log-probs dr/beta is far larger than any reachable implied
reward difference, so beta then mostly sets the loss scale (Adam removes it) and the KL strength
is weak. [unverified] that App. G's per-step log-probs are per-dim means like ddpo-pytorch's;
calibrate beta (|dr/beta| ~ typical |ds|) when comparing KL strength. [unverified] whether the K
updates each use all pairs (here: K inner epochs of one update each) or K minibatches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.advantages import reward_pairs
from t2i_rl_bench.algorithm import Algorithm, AlgorithmSettings, Loss, Paper, Recipe, StepBatch, setting


@dataclass(frozen=True)
class PRDPSettings(AlgorithmSettings):
    beta: float = setting(3e-5, gt=0)  # KL weight, App. E Table 4 small-scale (convention-dependent, see above)
    clip_range: float = setting(1e-6, gt=0)  # stepwise clip eps on the implied reward, Table 4 small-scale
    # 'mean' over steps (App. G code) or 'sum' (docs/algorithms.md#the-prdp-loss)
    step_reduce: str = setting("mean", choices=("mean", "sum"))


class PRDP(Algorithm):
    """Reward-difference regression on same-prompt pairs with a stepwise proximal clip."""

    paper = Paper(
        "deng2024prdp",
        "PRDP: Proximal Reward Difference Prediction for Large-Scale Reward Finetuning of Diffusion Models",
        ("Deng, Fei", "Wang, Qifei", "Wei, Wei", "Grundmann, Matthias", "Hou, Tingbo"),
        2024,
        arxiv="2402.08714",
        venue="IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)",
    )

    Settings = PRDPSettings
    settings: PRDPSettings
    whole_trajectory = True  # s sums/averages all trained steps of a sample
    whole_groups = True  # pairs are formed inside a prompt group
    recipe = Recipe(
        advantages="none",  # the loss reads raw rewards
        inner_epochs=10,  # K = 10 gradient updates per epoch, Table 4 small-scale
        updates_per_round=1,
    )

    @property
    def needs_reference(self) -> bool:
        return True  # the implied reward is a log-ratio to the reference

    def loss_terms(self, rewards: torch.Tensor, group_ids: torch.Tensor, steps: int) -> int:
        return len(reward_pairs(rewards, group_ids))  # the loss is a mean over pairs

    def loss(self, batch: StepBatch) -> Loss:
        s_ = self.settings
        if batch.logp_ref is None:
            raise ValueError("PRDP needs the reference's log-probs (StepBatch.logp_ref)")
        lr = batch.logp - batch.logp_ref  # (B, S)
        lr_old = batch.logp_old - batch.logp_ref
        lr_clip = lr.clamp(lr_old - s_.clip_range, lr_old + s_.clip_range)
        reduce = torch.mean if s_.step_reduce == "mean" else torch.sum
        s, s_clip = reduce(lr, dim=1), reduce(lr_clip, dim=1)  # (B,)
        pairs = reward_pairs(batch.rewards, batch.group_ids)  # (P, 2), r_i > r_j
        clipped = (lr - lr_clip).detach() != 0
        if len(pairs) == 0:  # all groups tied: no signal, zero gradient
            return Loss(0.0 * batch.logp.sum(), metrics={"pairs": torch.tensor(0.0)}, clipped=clipped)
        i, j = pairs[:, 0], pairs[:, 1]
        target = (batch.rewards[i] - batch.rewards[j]).to(lr) / s_.beta
        l = (s[i] - s[j] - target) ** 2  # noqa: E741 - the paper's name
        l_clip = (s_clip[i] - s_clip[j] - target) ** 2
        return Loss(
            torch.maximum(l, l_clip).mean(), metrics={"pairs": torch.tensor(float(len(pairs)))}, clipped=clipped
        )
