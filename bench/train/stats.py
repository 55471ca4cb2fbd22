"""A round's training statistics: the means over its micro-batches and optimiser steps that
make the round's log line (loss, approximate KL, clip fractions overall and per sampler step,
gradient norm, and whatever metrics the loss reports)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from t2i_rl_bench.algorithm import Loss, StepBatch


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class RoundStats:
    def __init__(self, num_steps: int):
        self.loss: list[float] = []
        self.approx_kl: list[float] = []
        self.clipfrac: list[float] = []
        self.grad_norm: list[float] = []  # one per optimiser step
        # mechanism diagnostics (bench/mechanisms.py): |log rho| on the round's later optimiser steps
        # (the first samples with the sampling weights, rho = 1) and |log p - log p_ref| to the reference
        self.logratio_later: list[float] = []
        self.ref_logratio: list[float] = []
        self.extra: dict[str, list[float]] = {}
        self.clip_hits, self.clip_counts = torch.zeros(num_steps), torch.zeros(num_steps)

    @torch.no_grad()
    def add(self, batch: Any, loss: Loss) -> None:
        """One micro-batch's loss and the metrics of its steps (log-prob ones for a StepBatch only)."""
        self.loss.append(loss.value.item())
        if isinstance(batch, StepBatch):
            delta = batch.logp.detach() - batch.logp_old
            self.approx_kl.append(0.5 * delta.pow(2).mean().item())
            if self.grad_norm:  # an optimiser step of this round already moved the weights
                self.logratio_later.append(delta.abs().mean().item())
            if batch.logp_ref is not None:
                self.ref_logratio.append((batch.logp.detach() - batch.logp_ref).abs().mean().item())
        if loss.clipped is not None and isinstance(batch, StepBatch):
            cols = batch.step_index
            self.clipfrac.append(loss.clipped.float().mean().item())
            self.clip_hits.index_add_(0, cols.flatten(), loss.clipped.float().flatten())
            self.clip_counts.index_add_(0, cols.flatten(), torch.ones(cols.numel()))
        for key, value in loss.metrics.items():
            self.extra.setdefault(key, []).append(float(value))

    def line(self) -> dict[str, Any]:
        per_step = [round(float(h / c), 5) if c else None for h, c in zip(self.clip_hits, self.clip_counts)]
        return {
            "loss": _mean(self.loss),
            "approx_kl": _mean(self.approx_kl),
            "clipfrac": _mean(self.clipfrac),
            "clipfrac_per_step": per_step,
            "grad_norm": _mean(self.grad_norm),
            "optimiser_steps": len(self.grad_norm),
            "logratio_abs_later": _mean(self.logratio_later),
            "ref_logratio_abs": _mean(self.ref_logratio),
            **{k: _mean(v) for k, v in self.extra.items()},
        }
