"""PCPO: Proportionate Credit Policy Optimization (Lee & Ye, ICLR 2026, arXiv 2509.25774;
docs/algorithms.md#pcpo). The official code (jaylee2000/pcpo) could not be read: what follows comes from
paper notes [note] and our derivations [derived]; uncertain choices are settings.

1. Log-hinge objective (docs/algorithms.md#the-log-hinge-objective) [note]: PPO's clipped loss has
the gradient of the hinge
   max(0, xi|A| - A(rho - 1)); PCPO replaces rho - 1 by log rho (never exponentiated):
       loss_t = m_t * relu(xi |A| - A log rho_t),  log rho_t = logp - logp_old.
2. Proportionate credit (docs/algorithms.md#per-step-credit): at theta_old the gradient of log rho_t
is an epsilon/velocity
   matching signal scaled by the sampler's native weight w(t) = C(t)/sigma_t (DDIM, Prop. 1) or
   sqrt(dt)/g (1 + (1-t) g^2/(2t)) (flow SDE, Prop. 2), read from `sampler.native_weights()`.
   credit='reweight' (default; 6.4 option B for DDIM, 6.5 option F1 for flow):
       DDIM: m_t = w*/w(t), w* = mean_t w(t)       -> m_t w(t) = w* for every step  [derived]
       flow: m_i = zeta dt_i / w(t_i), zeta = sum_i w(t_i) over all N sampler steps -> credit
             proportional to the integration interval, total credit preserved        [note]
   credit='sigma' (6.4 option A, DDIM only) [derived, "paper-exact pending verification"]:
       reshape the sampler's std to sigma~_t with C(t; sigma~)/sigma~ = w*, closed-form root
       sigma~ = (a w* - sqrt(b (1 + w*^2) - a^2)) / (1 + w*^2), a = sqrt(1-ab_t)/sqrt(alpha_t),
       b = 1 - ab_prev, used for sampling and log-probs (declared by `sampler_noise`), m_t = 1.
       The root exists iff w* >= w_min(t) = sqrt((1-alpha_t)/(alpha_t b)) (= w(t) at eta = 1),
       so w* defaults to max_t w_min(t) (3.27 on SD-1.x), not the mean (0.517) [unverified]; the
       paper note quotes w* ~ 4.5, an open discrepancy (docs/algorithms.md#proportionate-credit-on-ddim).
   credit='none': the log-hinge alone (the paper's ablation).
Weights are indexed by the actual sampler step of each trained step (pitfall iv). Framework
settings default to DDPO-IS (per-prompt advantages, clip 1e-4, 4 updates per round); xi = the base
framework's clip range is [unverified]."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.algorithm import Algorithm, AlgorithmSettings, Loss, Paper, Recipe, StepBatch, setting


@dataclass(frozen=True)
class PCPOSettings(AlgorithmSettings):
    clip_range: float = setting(1e-4, gt=0)  # xi, the hinge margin [unverified]: the base framework's clip range
    # 'reweight' (m_t = target/w(t)), 'sigma' (reshape DDIM std), 'none'
    credit: str = setting("reweight", choices=("reweight", "sigma", "none"))
    w_star: float | None = setting(None, gt=0)  # DDIM target weight; None: mean w (reweight), smallest feasible (sigma)


def proportionate_multipliers(sampler, w_star: float | None = None) -> torch.Tensor:
    """Per-step loss multipliers m (K,) that make the credit proportionate (6.4 B, 6.5 F1)."""
    w = sampler.native_weights().double()
    if sampler.family == "flow":
        dt = (sampler.sigmas[:-1] - sampler.sigmas[1:]).double()
        return (w.sum() * dt / w).float()  # zeta dt_i / w_i
    target = w.mean() if w_star is None else torch.as_tensor(w_star, dtype=torch.float64)
    return (target / w).float()


def sigma_tilde(ab_t: torch.Tensor, ab_prev: torch.Tensor, w_star: float | None = None) -> torch.Tensor:
    """DDIM std per step with C(t; sigma)/sigma = w* (6.4, closed form, '-' root), (K,)."""
    ab_t, ab_prev = ab_t.double(), ab_prev.double()
    alpha = ab_t / ab_prev  # per inference step
    a = (1 - ab_t).sqrt() / alpha.sqrt()
    b = 1 - ab_prev
    w_min = ((1 - alpha) / (alpha * b)).sqrt()
    w = w_min.max() if w_star is None else torch.as_tensor(w_star, dtype=torch.float64)
    if (w < w_min - 1e-12).any():
        raise ValueError(
            f"PCPO: no DDIM std gives w* = {float(w):.4g} at every step; need w* >= "
            f"{float(w_min.max()):.4g} (max_t sqrt((1-alpha_t)/(alpha_t (1-ab_prev))))"
        )
    disc = (b * (1 + w**2) - a**2).clamp(min=0)
    return ((a * w - disc.sqrt()) / (1 + w**2)).float()


class PCPO(Algorithm):
    """Log-hinge PPO with per-step multipliers that flatten the sampler's native credit."""

    paper = Paper(
        "lee2026pcpo",
        "PCPO: Proportionate Credit Policy Optimization for Aligning Image Generation Models",
        ("Lee, Jeongjae", "Ye, Jong Chul"),
        2026,
        arxiv="2509.25774",
        venue="International Conference on Learning Representations (ICLR)",
    )

    Settings = PCPOSettings
    settings: PCPOSettings
    recipe = Recipe(
        advantages="per_prompt",  # base framework DDPO-IS
        adv_clip=5.0,
        inner_epochs=1,
        updates_per_round=4,
    )

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.multipliers: torch.Tensor | None = None  # (K,), set by setup

    def sampler_noise(self, sampler) -> torch.Tensor | None:
        """credit='sigma': the DDIM std sigma~ (K,) with C/sigma~ = w* at every step, else None."""
        if self.settings.credit != "sigma":
            return None
        if sampler.family != "ddim":
            raise ValueError(
                "PCPO credit='sigma' reshapes a DDIM variance; flow samplers use 'reweight' "
                "(docs/algorithms.md#proportionate-credit-on-flow-models)"
            )
        ab_t, ab_prev = sampler.alpha_bars(sampler.timesteps)
        return sigma_tilde(ab_t, ab_prev, self.settings.w_star)

    def setup(self, sampler) -> None:
        if self.settings.credit == "reweight":
            self.multipliers = proportionate_multipliers(sampler, self.settings.w_star)
        else:  # 'sigma' (the sampler already carries sigma~) or 'none'
            self.multipliers = torch.ones(sampler.num_steps)

    def loss(self, batch: StepBatch) -> Loss:
        if self.multipliers is None:
            raise RuntimeError("PCPO.setup(sampler) must run before loss(): the weights come from the schedule")
        m = self.multipliers.to(batch.logp.device)[batch.step_index]  # (B, S), the step's own weight
        logr = batch.logp - batch.logp_old  # log rho, fp32
        a = batch.advantages[:, None]
        hinge = torch.relu(self.settings.clip_range * a.abs() - a * logr)
        clipped = ((hinge == 0) & (a != 0)).detach()
        return Loss((m * hinge).mean(), clipped=clipped)
