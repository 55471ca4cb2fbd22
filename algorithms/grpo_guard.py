"""GRPO-Guard (Wang et al. 2025, arXiv 2510.22319): Flow-GRPO with a regulated clip, two per-step
corrections of the importance ratio of the flow SDE's Gaussian transitions.

1. RatioNorm (the paper's Eq. 8). With per-dimension-mean log-probs, the log-ratio of a step is
       log r = mean_dims[(x' - mu_old)^2 - (x' - mu)^2] / (2 s^2),   s = the transition's std,
   whose mean over the sampling noise is -mean_dims((mu - mu_old)^2) / (2 s^2) < 0: ratios are
   biased below 1, the more so where s is small, so the clip acts on the two sides unevenly and
   differently per step. RatioNorm removes the bias and rescales by s:
       log r^ = s (log r + mean_dims((mu - mu_old)^2) / (2 s^2)) = mean_dims(eps * (mu - mu_old)),
       eps = (x' - mu_old) / s ~ N(0, I)                                           [derived]
   so log r^ has mean 0 and a spread that does not depend on the step's noise.
2. Gradient reweighting (Eq. 12): each step's clipped loss is multiplied by delta_t = beta_t / dt_t
   (dt_t = sigma_t - sigma_{t+1}), which makes the gradient's scale independent of the step size:
   the mean mu moves with dt_t beta_t v. Flow-GRPO's SDE has beta = 1 + a^2/2 at every step, a
   constant absorbed into the learning rate: delta_t = 1 / dt_t; DanceGRPO's constant-eta SDE has
   beta_t = 1 + eta^2 (1 - t) / (2 t).
Then loss = mean_{i,t} delta_t max(-A r^, -A clip(r^, 1 - eps, 1 + eps)) + Flow-GRPO's KL.

Checked against the official code: yifan123/flow_grpo's scripts/train_sd3_GRPO_Guard.py (added by
the paper's first author in commit 2e2f712e, 2025-10-31, merged as PR #175; read in a fork that
holds the merged tree, zhtmike/flow_grpo at 9745241c), lines 915-933, with
flow_grpo/diffusers_patch/sd3_sde_with_logprob.py lines 47-93 of that tree:
    scale = mean_batch(sqrt(-dt)) * mean_batch(std_dev_t)    (= the transition's std s of step j)
    bias  = mean((mu - mu_old)^2) / (2 scale^2);  ratio = exp((log p - log p_old + bias) * scale)
    policy_loss = mean_batch(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))) / mean_batch(sqrt(-dt))^2
    + beta x train_sd3.py's KL (unchanged)
One switch (`config.rationorm`) turns both corrections on; they are the two settings here, both on
by default. The official Eq. 12 weight is 1 / dt (Flow-GRPO's SDE, beta_t constant), not
normalised over the steps: what `reweight_factors` gives for flow_variant flowgrpo; DanceGRPO's
beta_t is the paper's, the official script has only Flow-GRPO's SDE. One deliberate difference:
the script reduces the bias with `.mean(dim=tuple(range(1, log_prob.ndim)))` on a log_prob already
averaged to (B,), an empty dim tuple that torch reads as "every dimension", so its bias is one
number per batch; the author confirmed that this is a bug and that the bias is per sample
(yifan123/flow_grpo issue #244, 2026-06-01), as the paper writes it and as it is here.
Defaults are those of the official config/grpo_guard.py (`pickscore_hps_sd3_ratio_norm`): clip
4e-6 (the OCR config: 2e-6), beta 0, and per-group std advantages (`sample.global_std = False`:
recipe `group_pop`); its learning rate 1e-4 is a study setting. Otherwise Flow-GRPO's recipe. Both
corrections are derived for the flow SDEs (the paper's scope; Flow-Factory also refuses other
dynamics), so a DDIM sampler is refused: there RatioNorm alone scales the policy term by sigma_t
against an unscaled KL, and on the analytic toy it learns only with the KL off and a 100x wider clip."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from t2i_rl_bench.algorithm import Loss, Paper, StepBatch, setting
from t2i_rl_bench.algorithms.flowgrpo import FlowGRPO, FlowGRPOSettings, flowgrpo_kl
from t2i_rl_bench.losses import ppo_clip_loss


@dataclass(frozen=True)
class GRPOGuardSettings(FlowGRPOSettings):
    # config/grpo_guard.py: train.clip_range 4e-6 (PickScore; 2e-6 for OCR) on the normalised ratio,
    # whose log is O(|mu - mu_old|) rather than O(|mu - mu_old| / s); train.beta 0
    clip_range: float = setting(4e-6, gt=0)
    beta: float = setting(0.0, ge=0)
    ratio_norm: bool = True  # Eq. 8
    grad_reweight: bool = True  # Eq. 12


def ratio_norm_log_ratio(
    logp: torch.Tensor, logp_old: torch.Tensor, mean: torch.Tensor, mean_old: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Eq. 8: s (log r + mean_dims((mu - mu_old)^2) / (2 s^2)), (B, S); differentiable in logp and mean.

    logp, logp_old, std: (B, S); mean, mean_old: (B, S, C, H, W)."""
    s = std.float()
    sq = (mean.float() - mean_old.float()).pow(2).flatten(2).mean(-1)
    return s * ((logp - logp_old) + sq / (2 * s**2))


def reweight_factors(sampler) -> torch.Tensor:
    """Eq. 12: delta_t = beta_t / dt_t per sampler step, (K,)."""
    if sampler.family != "flow":
        raise ValueError("GRPO-Guard's gradient reweighting (beta_t / dt_t) is defined for the flow SDEs, not DDIM")
    t = sampler.sigmas[:-1].double()
    dt = t - sampler.sigmas[1:].double()
    if sampler.variant == "dancegrpo":
        beta = 1 + sampler.noise_level**2 * (1 - t) / (2 * t)
    else:  # Flow-GRPO: beta = 1 + a^2/2 at every step, absorbed
        beta = torch.ones_like(t)
    return (beta / dt).float()


class GRPOGuard(FlowGRPO):
    """Flow-GRPO with RatioNorm and per-step gradient reweighting."""

    paper = Paper(
        "wang2025grpoguard",
        "GRPO-Guard: Mitigating Implicit Over-Optimization in Flow Matching via Regulated Clipping",
        (
            "Wang, Jing",
            "Liang, Jiajun",
            "Liu, Jie",
            "Liu, Henglin",
            "Liu, Gongye",
            "Zheng, Jun",
            "Pang, Wanyuan",
            "Ma, Ao",
            "Xie, Zhenyu",
            "Wang, Xintao",
            "Wang, Meng",
            "Wan, Pengfei",
            "Liang, Xiaodan",
        ),
        2025,
        arxiv="2510.22319",
    )

    Settings = GRPOGuardSettings
    settings: GRPOGuardSettings
    sampler_families = ("flow",)
    # config/grpo_guard.py: sample.global_std = False, the group's own population std
    recipe = replace(FlowGRPO.recipe, advantages="group_pop")
    # RatioNorm and the reweighting assume the Gaussian log-density of the Euler-Maruyama SDEs (the
    # study refuses cps before any job; setup refuses it for a run started by hand)
    flow_variants = ("flowgrpo", "dancegrpo")

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.delta: torch.Tensor | None = None  # (K,), set by setup

    def setup(self, sampler) -> None:
        if sampler.family not in self.sampler_families:
            raise ValueError(
                "GRPO-Guard is defined for the flow SDEs (Flow-GRPO's or DanceGRPO's), not for "
                f"a {sampler.family} sampler: train it on a flow-matching model"
            )
        if getattr(sampler, "variant", None) not in (None, *self.flow_variants):
            raise ValueError(
                "GRPO-Guard's RatioNorm and reweighting are derived for the Gaussian log-density of the "
                "Euler-Maruyama SDEs; the cps sampler scores with FlowCPS's unnormalised log-prob: use "
                "flow_variant flowgrpo or dancegrpo"
            )
        super().setup(sampler)
        self.delta = reweight_factors(sampler) if self.settings.grad_reweight else torch.ones(sampler.num_steps)

    def loss(self, batch: StepBatch) -> Loss:
        if self.delta is None or self.step_dt is None:
            raise RuntimeError("GRPOGuard.setup(sampler) must run before loss(): the weights come from the schedule")
        if self.settings.ratio_norm:
            if batch.mean is None or batch.mean_old is None or batch.std is None:
                raise ValueError("RatioNorm needs the current and recorded transition means (StepBatch.mean_old)")
            log_ratio = ratio_norm_log_ratio(batch.logp, batch.logp_old, batch.mean, batch.mean_old, batch.std)
        else:
            log_ratio = batch.logp - batch.logp_old
        # clip statistics and the steps whose gradient the clip removed (ppo_clip_loss reads log r as
        # logp - logp_old: a zero baseline)
        base = ppo_clip_loss(log_ratio, torch.zeros_like(log_ratio), batch.advantages, self.settings.clip_range)
        # the per-element clipped loss again, to weight each step by delta_t
        ratio = log_ratio.exp()
        a = batch.advantages[:, None]
        eps = self.settings.clip_range
        per_step = torch.maximum(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps))
        delta = self.delta.to(per_step.device)[batch.step_index]
        value = (delta * per_step).mean()
        metrics = dict(base.metrics)
        if self.settings.beta > 0:
            if batch.mean_ref is None or batch.mean is None or batch.std is None:
                raise ValueError("beta > 0 needs the reference's transition means (StepBatch.mean_ref)")
            dt = self.step_dt.to(batch.std.device)[batch.step_index]
            kl = flowgrpo_kl(batch.mean, batch.mean_ref, batch.std, dt).mean()
            value = value + self.settings.beta * kl
            metrics["kl_ref"] = kl.detach()
        return Loss(value, metrics=metrics, clipped=base.clipped)
