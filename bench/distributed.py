"""One run across several processes (torch.distributed, launched by torchrun):

    torchrun --nproc-per-node 8 -m t2i_rl_bench train --run-config "$(cat run.json)" --out results/runs/x

Each process samples its share of the round's prompt groups (whole groups, its own noise seeded
by (seed, rank, images seen)), rewards them, and gathers every process's rewards, group ids and
prompts, so the advantages (group statistics, per-prompt trackers) are the ones one process
would compute from the whole round, on every process. The optimiser steps are split from the
whole round with the same generator everywhere; each process backpropagates its own samples of a
step with the loss normalised by the step's global sample count, and the gradients are summed
over processes before clipping and the step: the global-batch average (the ddpo-pytorch#10 bug
averaged per process). This is what DistributedDataParallel's all-reduce does, done on the
trainable parameters directly because the policy calls its denoiser inside the sampler loop.
Process 0 alone writes the log, checkpoints and resumable states; the log's reward, advantage and
zero-spread columns are the whole round's, its loss, approx_kl, clipfrac and algorithm metrics
process 0's share (the same in expectation). A lone process is World(0, 1),
and every method is then the identity: the single-process path is unchanged, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n_groups: int) -> slice:
        """This process's contiguous block of a round's prompt groups (whole groups per process, so
        a group's shared initial noise and its members stay together)."""
        if n_groups % self.size:
            raise ValueError(
                f"{n_groups} prompt groups per round do not split over {self.size} processes: "
                "make images_per_round / group_size a multiple of the process count"
            )
        per = n_groups // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def rows(self, n_local: int) -> slice:
        """This process's rows of a gathered round (processes in rank order, equal shares)."""
        return slice(self.rank * n_local, (self.rank + 1) * n_local)

    def sample_generator(self, seed: int, images_seen: int, fallback: torch.Generator) -> torch.Generator:
        """The sampling noise of one round: the trainer's own generator for a lone process, else a
        generator seeded by (seed, rank, images seen), so resuming needs no per-process state."""
        if self.size == 1:
            return fallback
        entropy = np.random.SeedSequence([seed, self.rank, images_seen]).generate_state(2)
        return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation over processes (rank order) along dim 0; equal shapes (a scalar counts as
        one row)."""
        if self.size == 1:
            return t
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        x = t.detach().to(device).reshape(-1, *t.shape[1:]).contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x)
        return torch.cat(parts).to(t.device)

    def gather_list(self, items: list) -> list:
        if self.size == 1:
            return items
        parts: list = [None] * self.size
        dist.all_gather_object(parts, list(items))
        return [x for part in parts for x in part]

    def own(self, indices: torch.Tensor, n_local: int) -> torch.Tensor:
        """The entries of a global index tensor that are this process's samples, in order, as local
        indices."""
        lo = self.rank * n_local
        return indices[(indices >= lo) & (indices < lo + n_local)] - lo

    def sum_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Sum the gradients over processes in one flat all-reduce (a missing one counts as zero;
        a parameter no process reached keeps no gradient, so the optimiser skips it as in one
        process)."""
        if self.size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for p, g in zip(params, torch.split(flat, [g.numel() for g in grads]), strict=True):
            unreached = p.grad is None and not g.any()
            p.grad = None if unreached else g.view_as(p).clone()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_from_env() -> World:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT in the environment): NCCL with one GPU per process, else gloo. A process started
    alone stays alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World.current()
