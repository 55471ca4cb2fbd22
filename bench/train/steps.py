"""What a loss sees, built once for training and for the probe (bench/probe.py): the sampler
steps each sample trains, the frozen reference's terms the algorithm declares, and the StepBatch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.algorithm import Algorithm, StepBatch
from t2i_rl_bench.interfaces import Sampler
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.rollout import Trajectory, recompute

# (logp (B, S), mean (B, S, C, H, W), std (B, S)) of the current policy at the trained steps
Current = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def trainable_steps(sampler: Sampler, drop_last: bool) -> torch.Tensor:
    """The sampler steps a sample can train, in order: the stochastic ones (a windowed flow SDE's
    window, else all), without the final step when the recipe drops it."""
    steps = getattr(sampler, "sde_steps", torch.arange(sampler.num_steps))
    return steps[steps < sampler.num_steps - 1] if drop_last else steps


def trained_steps(
    n: int,
    num_steps: int,
    fraction: float,
    drop_last: bool,
    shuffle: bool,
    generator: torch.Generator,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, S) sampler-step indices trained per sample: a random subset per sample (ddpo-pytorch's
    per-sample permutation of the time axis) or the first S steps, of `allowed` (default: all
    steps, the last dropped when asked; `trainable_steps` gives the sampler's)."""
    if allowed is None:
        allowed = torch.arange(num_steps - int(drop_last))
    available = len(allowed)
    if available == 0:
        raise ValueError("no sampler step to train: the SDE window holds only the dropped last step")
    s = max(1, int(available * fraction))
    if not shuffle:
        return allowed[:s].expand(n, s).clone()
    return torch.stack([allowed[torch.randperm(available, generator=generator)[:s]] for _ in range(n)])


@dataclass
class Reference:
    """The frozen reference policy's terms of the recorded transitions of samples `rows` (sorted)
    at steps 0..S-1: its log-probs and, when the loss declares it, its transition means."""

    rows: torch.Tensor  # (R,)
    logp: torch.Tensor  # (R, S)
    mean: torch.Tensor | None  # (R, S, C, H, W)

    def select(self, samples: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logp_ref (B, S'), mean_ref (B, S', ...) or None) of samples (B,) at steps cols (B, S')."""
        pos = torch.searchsorted(self.rows, samples)
        logp = torch.gather(self.logp[pos], 1, cols)
        mean = None if self.mean is None else self.mean[pos[:, None].expand_as(cols), cols]
        return logp, mean


def reference_terms(
    policy: Policy,
    sampler: Sampler,
    traj: Trajectory,
    algorithm: Algorithm,
    guidance: float,
    rows: torch.Tensor | None = None,
    num_steps: int | None = None,
) -> Reference | None:
    """The reference terms of samples `rows` (default: all) at their first `num_steps` steps
    (default: all), or None when the loss needs none. One batched forward without gradient."""
    if not algorithm.needs_reference:
        return None
    rows = torch.arange(len(traj)) if rows is None else rows
    s = sampler.num_steps if num_steps is None else num_steps
    with torch.no_grad():
        logp, mean, _ = recompute(
            policy, sampler, traj, rows, torch.arange(s).expand(len(rows), s), guidance, reference=True
        )
    return Reference(rows, logp, mean if algorithm.needs_reference_means else None)


def step_batch(
    traj: Trajectory,
    sampler: Sampler,
    samples: torch.Tensor,
    cols: torch.Tensor,
    current: Current,
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    reference: Reference | None,
) -> StepBatch:
    """The batch of samples (B,) at sampler steps cols (B, S): the current policy's terms
    `current`, the recorded ones of the trajectory, the samples' advantages and rewards (indexed
    like the trajectory) and the reference's terms."""
    logp, mean, std = current
    logp_ref, mean_ref = (None, None) if reference is None else reference.select(samples, cols)
    return StepBatch(
        logp=logp,
        logp_old=torch.gather(traj.logp[samples], 1, cols),
        advantages=advantages[samples],
        rewards=rewards[samples],
        group_ids=traj.group_ids[samples],
        timesteps=sampler.timesteps[cols],
        step_index=cols,
        logp_ref=logp_ref,
        mean=mean,
        std=std,
        mean_ref=mean_ref,
        mean_old=traj.means[samples[:, None].expand_as(cols), cols],
    )
