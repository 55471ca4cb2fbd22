"""The interface every algorithm implements: a settings dataclass with the official defaults and
a loss over a batch of recorded denoising steps. An algorithm never touches the sampler, the
optimiser or the files; the training loop (bench/train.py) does that, the same way for all."""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench import advantages as adv


@dataclass(frozen=True)
class AlgorithmSettings:
    """Settings the training loop reads; each algorithm subclasses with its own defaults."""

    advantages: str = "batch"  # one of bench.advantages.MODES
    adv_clip: float = 5.0  # advantages are clamped to [-adv_clip, adv_clip] (all official code)
    inner_epochs: int = 1  # passes over each round's samples
    updates_per_round: int = 1  # optimiser steps per inner epoch (the samples are split evenly)
    timestep_fraction: float = 1.0  # fraction of the sampler's steps trained per sample
    drop_last_step: bool = False  # DanceGRPO / Flow-GRPO never train the final step
    shuffle_timesteps: bool = True  # per-sample random subset of steps (ddpo-pytorch), else the first ones
    same_noise_per_group: bool = False  # one x_T per prompt group (DanceGRPO)
    needs_reference: bool = False  # the loss reads log-probs of the frozen initial policy
    group_size: int | None = None  # images per prompt; None keeps the study's value
    tracker_buffer: int = 16  # per-prompt stat tracker (ddpo-pytorch defaults)
    tracker_min_count: int = 16


@dataclass
class StepBatch:
    """B samples x S trained steps each. Log-probs follow the sampler's convention (per-dim mean)."""

    logp: torch.Tensor  # (B, S) current policy, differentiable
    logp_old: torch.Tensor  # (B, S) at sampling time
    advantages: torch.Tensor  # (B,) already clamped
    rewards: torch.Tensor  # (B,)
    group_ids: torch.Tensor  # (B,)
    timesteps: torch.Tensor  # (B, S) model timesteps
    step_index: torch.Tensor  # (B, S) index k of each step in the sampler's schedule
    logp_ref: torch.Tensor | None = None  # (B, S) frozen reference policy, when needs_reference
    mean: torch.Tensor | None = None  # (B, S, C, H, W) current transition mean
    std: torch.Tensor | None = None  # (B, S)
    mean_ref: torch.Tensor | None = None  # (B, S, C, H, W) frozen reference's mean (Flow-GRPO's KL)


@dataclass
class Loss:
    value: torch.Tensor  # scalar, averaged over the batch's elements
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    clipped: torch.Tensor | None = None  # (B, S) bool, the steps whose gradient the clip removed


class Algorithm:
    """Subclass, set `Settings`, implement `loss`. Register in an entry point `bench.algorithms`."""

    Settings: ClassVar[type[AlgorithmSettings]] = AlgorithmSettings
    # True when the loss couples the steps of a sample (it gets all of them at once) or the
    # samples of a group (batches then hold whole groups): PRDP's pairwise regression.
    whole_trajectory: ClassVar[bool] = False
    whole_groups: ClassVar[bool] = False

    def __init__(self, **overrides):
        known = {f.name for f in dataclasses.fields(self.Settings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown setting(s) {unknown}; known: {sorted(known)}")
        self.settings = self.Settings(**overrides)
        self._advantages = adv.AdvantageEstimator(
            self.settings.advantages, buffer_size=self.settings.tracker_buffer,
            min_count=self.settings.tracker_min_count,
        )

    def setup(self, sampler) -> None:
        """Called once with the sampler before training (e.g. PCPO reads its schedule)."""

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        a = self._advantages(rewards, group_ids, prompts)
        return a.clamp(-self.settings.adv_clip, self.settings.adv_clip)

    def loss(self, batch: StepBatch) -> Loss:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """State that carries across rounds (the per-prompt tracker's buffers), for resuming."""
        tracker = self._advantages.tracker
        return {"tracker": None if tracker is None else {k: list(v) for k, v in tracker.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        tracker = self._advantages.tracker
        if tracker is not None and state.get("tracker") is not None:
            tracker.buffers = {k: deque(v, maxlen=tracker.buffer_size) for k, v in state["tracker"].items()}
