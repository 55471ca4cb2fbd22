"""Advantage estimators of the six methods, in one place (docs/algorithms.md#advantage-estimators).

All take rewards (B,) and group ids (B,) (the samples of one prompt share an id) and return
advantages (B,); the training loop clamps them afterwards.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

MODES = ("batch", "per_prompt", "grpo_group", "group_pop", "flowgrpo", "loo", "loo_std", "none")


def batch_normalised(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(r - mean) / (std + eps) over the whole batch (population std, as np.std)."""
    r = rewards.double()
    return ((r - r.mean()) / (r.std(unbiased=False) + eps)).to(rewards.dtype)


def _group_stats(r: torch.Tensor, group_ids: torch.Tensor, unbiased: bool):
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n = torch.bincount(inverse).to(r)
    mean = torch.zeros_like(n).index_add_(0, inverse, r) / n
    sq = torch.zeros_like(n).index_add_(0, inverse, (r - mean[inverse]) ** 2)
    var = sq / (n - 1).clamp(min=1) if unbiased else sq / n
    return inverse, n, mean, var.sqrt()


def grpo_group(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DanceGRPO: (r - mean_g) / (std_g + eps) with the unbiased (Bessel) group std."""
    r = rewards.double()
    inverse, _, mean, std = _group_stats(r, group_ids, unbiased=True)
    return ((r - mean[inverse]) / (std[inverse] + eps)).to(rewards.dtype)


def group_population(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """DiffusionNFT: (r - mean_g) / (population std_g + 1e-4), flow_grpo's PerPromptStatTracker
    cleared every round (each prompt's statistics are its group's)."""
    r = rewards.double()
    inverse, _, mean, std = _group_stats(r, group_ids, unbiased=False)
    return ((r - mean[inverse]) / (std[inverse] + eps)).to(rewards.dtype)


def flowgrpo_group(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Flow-GRPO: (r - mean_g) / (global population std + 1e-4)."""
    r = rewards.double()
    inverse, _, mean, _ = _group_stats(r, group_ids, unbiased=False)
    return ((r - mean[inverse]) / (r.std(unbiased=False) + eps)).to(rewards.dtype)


def leave_one_out(
    rewards: torch.Tensor, group_ids: torch.Tensor, normalise: bool = False, eps: float = 1e-8
) -> torch.Tensor:
    """LOOP/RLOO: r_i - mean_{j != i} r_j = K/(K-1) (r_i - mean_g); optionally / std_g."""
    r = rewards.double()
    inverse, n, mean, std = _group_stats(r, group_ids, unbiased=True)
    if (n < 2).any():
        raise ValueError("leave-one-out advantages need at least 2 samples per prompt group")
    a = n[inverse] / (n[inverse] - 1) * (r - mean[inverse])
    if normalise:
        a = a / (std[inverse] + eps)
    return a.to(rewards.dtype)


def reward_pairs(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """PRDP: index pairs (i, j) of the same group with r_i > r_j (ties dropped), (P, 2)."""
    same = group_ids[:, None] == group_ids[None, :]
    better = rewards[:, None] > rewards[None, :]
    return torch.nonzero(same & better)


class PerPromptTracker:
    """ddpo-pytorch's per-prompt stat tracker: a running buffer of each prompt's rewards; below
    min_count it falls back to the whole batch's statistics. Population std, eps 1e-6."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque] = {}

    def __call__(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        r = rewards.double().numpy()
        prompts_arr = np.asarray(prompts, dtype=object)
        out = np.empty_like(r)
        for prompt in dict.fromkeys(prompts):
            idx = prompts_arr == prompt
            buf = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(r[idx].tolist())
            if len(buf) < self.min_count:
                mean, std = r.mean(), r.std() + 1e-6
            else:
                mean, std = np.mean(buf), np.std(buf) + 1e-6
            out[idx] = (r[idx] - mean) / std
        return torch.from_numpy(out).to(rewards.dtype)


class AdvantageEstimator:
    def __init__(self, mode: str, buffer_size: int = 16, min_count: int = 16):
        if mode not in MODES:
            raise ValueError(f"unknown advantage mode {mode!r}; known: {MODES}")
        self.mode = mode
        self.tracker = PerPromptTracker(buffer_size, min_count) if mode == "per_prompt" else None

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if self.mode == "batch":
            return batch_normalised(rewards)
        if self.mode == "per_prompt":
            assert self.tracker is not None  # made with this mode
            return self.tracker(rewards, prompts)
        if self.mode == "grpo_group":
            return grpo_group(rewards, group_ids)
        if self.mode == "group_pop":
            return group_population(rewards, group_ids)
        if self.mode == "flowgrpo":
            return flowgrpo_group(rewards, group_ids)
        if self.mode in ("loo", "loo_std"):
            return leave_one_out(rewards, group_ids, normalise=self.mode == "loo_std")
        return rewards.clone()  # "none": raw rewards (PRDP reads rewards itself)
