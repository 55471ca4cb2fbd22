"""The one training loop every algorithm uses:
sample -> reward -> advantages -> (reference terms) -> inner epochs of loss/backward -> step,
with a checkpoint at every budget (a number of sampled training images) and a JSON line per round.
What each part does lives in its own small piece: the step batch (bench/train/steps.py), the
round's statistics (bench/train/stats.py), checkpoints and resuming (bench/train/state.py),
the sharding over processes (bench/distributed.py). Each algorithm family has its batch: the
per-step log-prob family trains recorded transitions (steps.py), the forward-process family clean
samples re-noised (forward.py), the differentiable-reward family samples with gradient
(differentiable.py)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from t2i_rl_bench.algorithm import Loss, RewardBatch
from t2i_rl_bench.distributed import World
from t2i_rl_bench.factory import open_run
from t2i_rl_bench.io import atomic_write_json, atomic_write_text, dumps_json
from t2i_rl_bench.models.latent import LatentPolicy
from t2i_rl_bench.registry import PluginError
from t2i_rl_bench.reward import zero_spread_fraction
from t2i_rl_bench.rollout import StepGraph, Trajectory, recompute, rollout
from t2i_rl_bench.sampling import sampler_at_round
from t2i_rl_bench.spec import RUN_SPEC_FILE, RunSpec
from t2i_rl_bench.tracking import flatten, open_tracker
from t2i_rl_bench.train.allocator import keep_freed_memory, release_freed_memory
from t2i_rl_bench.train.differentiable import backprop_sample
from t2i_rl_bench.train.forward import OldPolicy, forward_batch
from t2i_rl_bench.train.state import RunState, peak_memory_mb
from t2i_rl_bench.train.stats import RoundStats
from t2i_rl_bench.train.steps import Reference, reference_terms, step_batch, trainable_steps, trained_steps


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


def call_loss(name: str, algorithm: Any, batch: Any, finite: bool = True) -> Loss:
    """The algorithm's loss of a batch, checked. An exception inside a plugin's loss() ends the
    run as a recorded failure naming the algorithm (PluginError), as a reward's does. `finite`:
    a non-finite value is a DivergedError (training); the probe records it as a measurement."""
    try:
        loss = algorithm.loss(batch)
    except (PluginError, DivergedError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure ends its run, not the study
        raise PluginError(f"algorithm {name!r}: loss() raised {exc!r}") from exc
    return _check_loss(name, loss, finite)


def _check_loss(name: str, loss: Any, finite: bool = True) -> Loss:
    if not isinstance(loss, Loss):
        raise PluginError(
            f"algorithm {name!r}: loss() returned {type(loss).__name__}, expected t2i_rl_bench.algorithm.Loss"
        )
    if not torch.is_tensor(loss.value) or loss.value.ndim != 0:
        raise PluginError(f"algorithm {name!r}: Loss.value must be a scalar tensor, got {loss.value!r}")
    if finite and not torch.isfinite(loss.value):
        raise DivergedError(f"algorithm {name!r}: non-finite loss {loss.value.item()}")
    if not loss.value.requires_grad:  # a loss cut from the policy's graph would train nothing, silently
        raise PluginError(
            f"algorithm {name!r}: Loss.value {loss.value.item():.6g} has no gradient; compute it from the "
            "batch's tensors (batch.logp, ...) without .item(), .detach() or torch.no_grad()"
        )
    return loss


@dataclass
class Scored:
    """A round's rewards and advantages: of the whole round (every process computes the same
    statistics) and of this process's own samples (`own`; one process: all)."""

    rewards_all: torch.Tensor  # (N,)
    group_ids_all: torch.Tensor  # (N,)
    advantages_all: torch.Tensor  # (N,)
    own: slice
    info: dict[str, Any]  # the reward's per-component scores of this process's samples

    @property
    def rewards(self) -> torch.Tensor:
        return self.rewards_all[self.own]

    @property
    def advantages(self) -> torch.Tensor:
        return self.advantages_all[self.own]

    def line(self, world: World) -> dict[str, Any]:
        components = {f"reward/{k}": float(world.gather(v).mean()) for k, v in self.info.items() if torch.is_tensor(v)}
        rewards = self.rewards_all
        return {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            **components,
            "adv_abs_mean": float(self.advantages_all.abs().mean()),
            "zero_spread_groups": zero_spread_fraction(rewards, self.group_ids_all),
        }


class Clock:
    """Seconds of a round's phases (sample, reward, train)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[f"seconds_{name}"], self.last = now - self.last, now

    @property
    def total(self) -> float:
        return self.last - self.start


def global_mean_weight(cols: torch.Tensor, step_samples: int, steps_per_sample: int) -> float:
    """A micro-batch's share of its optimiser step: the loss is a mean over the batch's (sample,
    step) elements, the step's gradient is the mean over all of them (every process's samples)."""
    return cols.numel() / (step_samples * steps_per_sample)


def whole_group_batches(group_ids: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Positions into `group_ids` (B,) cut into micro-batches of whole groups, the groups in order
    of first appearance: each micro-batch holds as many whole groups as fit in `size` samples, and
    at least one. Where the groups are contiguous runs (an optimiser step's samples are) the
    positions keep their order, so one micro-batch is the whole sequence as it was."""
    batches: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    n = 0
    for g in dict.fromkeys(group_ids.tolist()):
        members = torch.nonzero(group_ids == g).flatten()
        if current and n + len(members) > size:
            batches.append(torch.cat(current))
            current, n = [], 0
        current.append(members)
        n += len(members)
    if current:
        batches.append(torch.cat(current))
    return batches


# the diffusers families' default bound on the reused graph (RunSpec.reuse_graph_samples): the
# samples of a round that keep the sampling graph, chosen by measurement on the tiny Stable
# Diffusion pipeline so that the default epoch's peak memory stays within 1.5x the plain DDPO
# loop's (docs/performance.md#the-reused-graph-bounded)
LATENT_GRAPH_SAMPLES = 4


def graph_sample_bound(spec: RunSpec, policy: Any) -> int | None:
    """How many of a round's samples may keep the sampling graph (RunSpec.reuse_graph_samples):
    None for all of them. Unset: LATENT_GRAPH_SAMPLES for the diffusers families, all for the
    embedded one (its reuse, when asked for, holds the whole round as before)."""
    k = spec.reuse_graph_samples
    if k is None:
        return LATENT_GRAPH_SAMPLES if isinstance(policy, LatentPolicy) else None
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"reuse_graph_samples: an integer >= 0 (0: no graph) or null, got {k!r}")
    return k


def can_reuse_graph(spec: RunSpec, algorithm_recipe: Any, policy: Any) -> bool:
    """Whether the first update of a round can backpropagate through the sampling forward: its
    weights are the sampling weights, and it must train every transition the sampler can train
    (one update per inner epoch, the whole timestep fraction; the graph is kept for those steps
    only, `trainable_steps`: not the dropped last step, not the ODE steps outside an SDE window),
    else the graph's unused part would cost a wasted backward. The denoiser must compute the same
    in eval and train mode (no dropout, no batch norm)."""
    wanted = spec.reuse_sampling_graph
    r = algorithm_recipe
    trains_all = r.updates_per_round == 1 and r.timestep_fraction >= 1
    if wanted is None:  # only where the memory of a full-batch recompute was asked for anyway
        full_batch = spec.micro_batch >= spec.images_per_round and not spec.step_chunk
        wanted = isinstance(policy, LatentPolicy) and full_batch
        # by default only where every step trains, as before the graph could hold a subset: the
        # runs that did not reuse it stay bit for bit as they were (asked for, it holds the subset)
        trains_all = trains_all and not r.drop_last_step and spec.sde_window is None
    mode_free = not any(
        (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
        or isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for m in policy.denoiser.modules()
    )
    return bool(wanted and trains_all and mode_free)


class Trainer:
    def __init__(self, spec: RunSpec, out: str | Path, threads: int = 1):
        self.out = Path(out)
        torch.set_num_threads(threads)
        keep_freed_memory()  # the same arithmetic, fewer page faults (bench/train/allocator.py)
        run = open_run(spec)  # seeded: policy (+ LoRA), algorithm, reward, sampler, frozen reference
        self.policy, self.algorithm, self.reward, self.sampler = run.policy, run.algorithm, run.reward, run.sampler
        self.recipe = self.algorithm.recipe
        self.params = self.policy.trainable_parameters()
        self.optimiser = torch.optim.AdamW(
            self.params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, eps=spec.adam_eps
        )
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.rng = np.random.default_rng(spec.seed)
        self.group_size = self.recipe.group_size or spec.group_size
        if spec.images_per_round % self.group_size:
            raise ValueError(
                f"images_per_round={spec.images_per_round} is not a multiple of the group size "
                f"{self.group_size} ({spec.algorithm})"
            )
        if not spec.prompts:
            from t2i_rl_bench.world.captions import prompt_sets

            spec = spec.replace(prompts=tuple(prompt_sets()["train"]))
        self.spec = spec
        self.images_seen = 0
        self.seconds = 0.0
        self.family = self.algorithm.family
        if self.family == "differentiable" and not self.reward.differentiable:  # before any sampling
            raise ValueError(
                f"algorithm {spec.algorithm!r} backpropagates the reward, and reward {self.reward.name!r} has "
                "no gradient in the images: train it on a differentiable reward (e.g. clip_alignment)"
            )
        # the sampling graph reused by the round's first update, for at most `graph_bound` of its
        # samples (None: all); a bound of 0 keeps no graph
        self.graph_bound = graph_sample_bound(spec, self.policy)
        self.reuse_graph = (
            self.family == "step" and self.graph_bound != 0 and can_reuse_graph(spec, self.recipe, self.policy)
        )
        # the forward family's old policy samples and anchors the loss (bench/train/forward.py)
        self.old = OldPolicy(self.params) if self.family == "forward" else None
        self.world = World.current()  # several processes under torchrun (t2i_rl_bench.distributed), else one
        self.state = RunState(self.out, self.world)

    # ---- one round -----------------------------------------------------------------------
    def round(self) -> dict[str, Any]:
        """One round: sample this process's share of the prompt groups; score them; advantages
        over the whole round; then the algorithm family's training (`inner_epochs` passes of
        `updates_per_round` optimiser steps each) and the round's log line. The differentiable
        family samples with gradient inside its optimiser steps, so its phases are one."""
        clock = Clock()
        cpu = time.process_time()  # the process's CPU seconds (all its threads): device-seconds on a shared machine
        self.follow_window()
        stats = RoundStats(self.sampler.num_steps)
        extra: dict[str, Any] = {}
        if self.family == "differentiable":
            scored, trained = self.train_differentiable(stats)
        else:
            traj = self.sample_round()
            clock.lap("sample")
            scored = self.score(traj)
            clock.lap("reward")
            self.policy.denoiser.train()
            # Flow-GRPO: samples whose advantage is exactly 0 (a group of equal rewards) are left out
            # of the round's updates: they carry no policy gradient, and the loss is a mean over the rest
            keep = scored.advantages_all != 0 if self.recipe.drop_zero_advantage else None
            if keep is not None:
                extra["zero_advantage_dropped"] = int((~keep).sum())
            train = self.train_forward if self.family == "forward" else self.train_steps
            trained = train(traj, scored, stats, keep)
        clock.lap("train")
        window = getattr(self.sampler, "sde_window", None)  # a windowed flow SDE's, this round
        if window is not None:
            extra["sde_window"] = list(window)
        self.images_seen += len(scored.group_ids_all)
        cpu = time.process_time() - cpu
        # device-seconds (docs/measurements.md#device-seconds): on a CPU the process's CPU time, which
        # other jobs on a shared machine do not inflate; on an accelerator the round's wall time
        on_cpu = next(iter(self.params)).device.type == "cpu" if self.params else True
        self.seconds += cpu if on_cpu else clock.total
        return {
            "images_seen": self.images_seen,
            **scored.line(self.world),
            "trained_steps_per_sample": trained,
            **extra,
            **stats.line(),
            **clock.laps,
            "seconds_cpu": cpu,
            "seconds_total": self.seconds,
            "peak_memory_mb": peak_memory_mb(),
        }

    def train_steps(self, traj: Trajectory, scored: Scored, stats: RoundStats, keep: torch.Tensor | None = None) -> int:
        """The per-step log-prob family: StepBatches of recorded transitions. Returns the steps trained per sample."""
        reference = reference_terms(self.policy, self.sampler, traj, self.algorithm, self.spec.guidance)
        trained = 0
        for _ in range(self.recipe.inner_epochs):
            parts = self._update_chunks(scored.group_ids_all, keep)
            steps = trained_steps(
                len(scored.group_ids_all),
                self.sampler.num_steps,
                self.recipe.timestep_fraction,
                self.recipe.drop_last_step,
                self.recipe.shuffle_timesteps,
                self.generator,
                trainable_steps(self.sampler, self.recipe.drop_last_step),
            )[scored.own]
            trained = steps.shape[1]
            for part in parts:
                stats.grad_norm.append(self.update(traj, scored, reference, part, steps, stats))
        return trained

    def train_forward(
        self, traj: Trajectory, scored: Scored, stats: RoundStats, keep: torch.Tensor | None = None
    ) -> int:
        """The forward-process family: the round's clean samples re-noised at a random subset of
        the sampler's times (any step: the SDE window concerns log-probs), a ForwardBatch per
        micro-batch; then the old policy moves toward the trained weights."""
        assert self.old is not None  # made for this family
        trained = 0
        for _ in range(self.recipe.inner_epochs):
            parts = self._update_chunks(scored.group_ids_all, keep)
            n, k = len(scored.group_ids_all), self.sampler.num_steps
            steps = trained_steps(
                n, k, self.recipe.timestep_fraction, False, self.recipe.shuffle_timesteps, self.generator
            )[scored.own]
            trained = steps.shape[1]
            for part in parts:
                chunk = self.world.own(part, len(traj))
                batches = (
                    (
                        forward_batch(
                            self.policy,
                            self.sampler,
                            traj,
                            mb,
                            cols,
                            scored.advantages,
                            scored.rewards,
                            self.old,
                            self.generator,
                            self.algorithm.needs_reference,
                        ),
                        self._share(mb, cols, part, trained, scored, traj.group_ids),
                    )
                    for mb, cols, _ in self._micro_batches(chunk, steps, None, traj.group_ids)
                )
                stats.grad_norm.append(self.optimiser_step(batches, stats))
                self.old.optimiser_steps += 1
        self.old.update(self.algorithm.old_policy_decay(self.old.optimiser_steps))  # type: ignore[attr-defined]
        return trained

    def train_differentiable(self, stats: RoundStats) -> tuple[Scored, float]:
        """The differentiable-reward family: each optimiser step samples its images with gradient
        through the algorithm's window of steps and backpropagates their reward. Returns the
        round's rewards (the advantages are the algorithm's, unused by its loss) and the mean
        number of model evaluations with gradient per sample."""
        prompts, group_ids, generator = self.round_prompts()
        self.policy.denoiser.train()
        rewards = torch.zeros(len(prompts))
        with_grad: list[int] = []
        for _ in range(self.recipe.inner_epochs):
            for part in self._update_chunks(group_ids):  # this process's own samples (equal shares)
                batches = self._reward_batches(part, prompts, group_ids, generator, rewards, with_grad)
                stats.grad_norm.append(self.optimiser_step(batches, stats))
        rewards_all, group_ids_all = self.world.gather(rewards), self.world.gather(group_ids)
        prompts_all = self.world.gather_list(prompts)
        advantages_all = self.algorithm.advantages(rewards_all, group_ids_all, prompts_all).float()
        scored = Scored(rewards_all, group_ids_all, advantages_all, self.world.rows(len(prompts)), {})
        return scored, float(np.mean(with_grad))

    def _reward_batches(
        self,
        part: torch.Tensor,
        prompts: list[str],
        group_ids: torch.Tensor,
        generator: torch.Generator,
        rewards: torch.Tensor,
        with_grad: list[int],
    ) -> Iterator[tuple[RewardBatch, float]]:
        """RewardBatches of this process's samples `part`, micro-batch by micro-batch (recording
        their rewards into `rewards` and their model evaluations with gradient into `with_grad`),
        each with its share of the optimiser step."""
        for mb in torch.split(part, self.spec.micro_batch):
            chosen = [prompts[i] for i in mb.tolist()]
            window = self.algorithm.backprop_window(self.sampler.num_steps, self.generator)  # type: ignore[attr-defined]
            with_grad.append(window[1] - window[0] + int(window[1] < self.sampler.num_steps))
            x0 = backprop_sample(self.policy, self.sampler, chosen, self.spec.guidance, generator, window)
            scores = self.reward.differentiable_score(self.policy.decode(x0), chosen, {"group_ids": group_ids[mb]})
            rewards[mb] = scores.detach().float()
            # every process steps on its own part of equal size: the summed gradient is the global mean
            yield RewardBatch(scores.float(), group_ids[mb], chosen), len(mb) / (len(part) * self.world.size)

    def follow_window(self) -> None:
        """A sliding SDE window (MixGRPO) at this round's position, derived from the images seen
        (so a resumed run continues where it was); the algorithm's set-up follows the sampler."""
        moved = sampler_at_round(self.sampler, self.images_seen // self.spec.images_per_round)
        if moved is not self.sampler:
            self.sampler = moved
            self.algorithm.setup(moved)

    def round_prompts(self) -> tuple[list[str], torch.Tensor, torch.Generator]:
        """This process's prompts of the round (G copies per chosen prompt), their group ids and
        the round's sampling generator."""
        n_prompts = self.spec.images_per_round // self.group_size
        prompts_all = self.spec.prompts
        chosen = self.rng.choice(len(prompts_all), size=n_prompts, replace=len(prompts_all) < n_prompts)
        share = self.world.share(n_prompts)
        prompts = [prompts_all[i] for i in chosen[share] for _ in range(self.group_size)]
        group_ids = torch.arange(n_prompts)[share].repeat_interleave(self.group_size)
        generator = self.world.sample_generator(self.spec.seed, self.images_seen, self.generator)
        return prompts, group_ids, generator

    def sample_round(self) -> Trajectory:
        """This process's prompt groups of the round, sampled (one process: all of them) by the
        current weights, or by the old policy where the algorithm keeps one."""
        prompts, group_ids, generator = self.round_prompts()
        self.policy.denoiser.eval()
        with self.old.applied() if self.old is not None else contextlib.nullcontext():
            return rollout(
                self.policy,
                self.sampler,
                prompts,
                self.spec.guidance,
                generator,
                group_ids,
                self.recipe.same_noise_per_group,
                keep_graph=self.reuse_graph,
                graph_steps=trainable_steps(self.sampler, self.recipe.drop_last_step) if self.reuse_graph else None,
                graph_samples=self.graph_samples(group_ids) if self.reuse_graph else None,
            )

    def graph_samples(self, group_ids: torch.Tensor) -> int | None:
        """How many of this process's samples (group_ids (B,), groups contiguous) keep the round's
        sampling graph: the bound (None: all), down to whole groups where the loss pairs group
        members, but at least one group, so that the graph's samples are one micro-batch."""
        n, k = len(group_ids), self.graph_bound
        if k is None or k >= n:
            return None
        if self.algorithm.whole_groups:
            while 0 < k < n and group_ids[k - 1] == group_ids[k]:
                k -= 1
            if k == 0:  # a group larger than the bound: its members are kept together
                k = int((group_ids == group_ids[0]).sum())
        return k

    def score(self, traj: Trajectory) -> Scored:
        """Rewards of this process's images; the whole round's advantages (gathered from every process)."""
        rewards, info = self.reward(self.policy.decode(traj.x0), traj.prompts, {"group_ids": traj.group_ids})
        rewards = rewards.float()
        rewards_all, group_ids_all = self.world.gather(rewards), self.world.gather(traj.group_ids)
        prompts_all = self.world.gather_list(traj.prompts)
        advantages_all = self.algorithm.advantages(rewards_all, group_ids_all, prompts_all).float()
        return Scored(rewards_all, group_ids_all, advantages_all, self.world.rows(len(traj)), info)

    def update(
        self,
        traj: Trajectory,
        scored: Scored,
        reference: Reference | None,
        part: torch.Tensor,
        steps: torch.Tensor,
        stats: RoundStats,
    ) -> float:
        """One optimiser step on the round's samples `part` (this process trains its own of them,
        micro-batch by micro-batch); returns the gradient norm before clipping."""
        chunk = self.world.own(part, len(traj))
        graph, traj.graph = traj.graph, None  # only the round's first update still has the sampling weights

        def batches() -> Iterator[tuple[Any, float]]:
            after_graph = False
            for mb, cols, on_graph in self._micro_batches(chunk, steps, graph, traj.group_ids):
                # the bounded graph's memory, freed by its backward, back to the system: the recompute
                # does not reuse it (heap fragmentation), and the peak is then the larger phase, not the sum
                if after_graph and not on_graph:
                    release_freed_memory()
                after_graph = on_graph
                current = (
                    graph.select(mb, cols)
                    if on_graph and graph is not None
                    else recompute(self.policy, self.sampler, traj, mb, cols, self.spec.guidance)
                )
                batch = step_batch(traj, self.sampler, mb, cols, current, scored.advantages, scored.rewards, reference)
                yield batch, self._share(mb, cols, part, steps.shape[1], scored, traj.group_ids)
            if graph is not None and graph.samples < len(traj):  # and the recompute's, before the next graph
                release_freed_memory()

        return self.optimiser_step(batches(), stats)

    def _share(
        self,
        mb: torch.Tensor,
        cols: torch.Tensor,
        part: torch.Tensor,
        steps_per_sample: int,
        scored: Scored,
        group_ids: torch.Tensor,
    ) -> float:
        """A micro-batch's weight in its optimiser step: its samples `mb` (this process's; their
        trained step columns `cols`) of the step's samples `part` (of the whole round). A loss
        that couples a group's samples weights by its terms (`Algorithm.loss_terms`: PRDP's
        pairs), else by the (sample, step) elements; the weights of all micro-batches of every
        process sum to 1."""
        if not self.algorithm.whole_groups:
            return global_mean_weight(cols, len(part), steps_per_sample)
        terms = self.algorithm.loss_terms
        total = terms(scored.rewards_all[part], scored.group_ids_all[part], steps_per_sample)
        return terms(scored.rewards[mb], group_ids[mb], cols.shape[1]) / total if total else 0.0

    def optimiser_step(self, batches: Iterator[tuple[Any, float]], stats: RoundStats) -> float:
        """Accumulate the gradient of each (batch, weight): weight x the loss's mean over the
        batch's elements, summed over processes; clip and step. Returns the norm before clipping."""
        self.optimiser.zero_grad(set_to_none=True)
        for batch, weight in batches:
            loss = call_loss(self.spec.algorithm, self.algorithm, batch)
            (loss.value * weight).backward()
            stats.add(batch, loss)
        self.world.sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.spec.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise DivergedError(f"algorithm {self.spec.algorithm!r}: non-finite gradient norm")
        self.optimiser.step()
        return grad_norm.item()

    def _update_chunks(self, group_ids: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Sample indices (of the whole round, group_ids (N,)) of each optimiser step of one inner
        epoch (whole groups when the loss pairs group members); only the samples `keep` (N,) marks
        when given (whole groups: those with a marked member). Leaving samples out draws the same
        random numbers, so it changes nothing else."""
        parts = self.recipe.updates_per_round
        if self.algorithm.whole_groups:
            groups = torch.unique(group_ids)
            groups = groups[torch.randperm(len(groups), generator=self.generator)]
            if keep is not None:
                groups = groups[torch.tensor([bool(keep[group_ids == g].any()) for g in groups], dtype=torch.bool)]
            return [
                torch.cat([torch.nonzero(group_ids == g).flatten() for g in part])
                for part in torch.tensor_split(groups, parts)
                if len(part)
            ]
        order = torch.randperm(len(group_ids), generator=self.generator)
        if keep is not None:
            order = order[keep[order]]
        return [c for c in torch.tensor_split(order, parts) if len(c)]

    def _micro_batches(
        self, chunk: torch.Tensor, steps: torch.Tensor, graph: StepGraph | None, group_ids: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """(samples, step columns, on the sampling graph) per forward/backward: memory only, the
        gradient is the same. The samples the sampling graph holds are backpropagated at once,
        first, whatever the micro-batch; where it holds only some (bounded reuse) the others are
        recomputed in micro-batches of at most as many samples as it holds. A loss that couples a
        group's samples gets whole groups (`group_ids` (B,) of this process's samples), at most
        `micro_batch` samples but at least one group per micro-batch, with all their trained steps."""
        if not len(chunk):
            return
        size = self.spec.micro_batch
        if graph is not None:
            on = chunk < graph.samples
            if bool(on.any()):
                yield chunk[on], steps[chunk[on]], True
            chunk, size = chunk[~on], min(size, graph.samples)
            if not len(chunk):
                return
        if self.algorithm.whole_groups:
            for positions in whole_group_batches(group_ids[chunk], size):
                mb = chunk[positions]
                yield mb, steps[mb], False
            return
        for mb in torch.split(chunk, size):
            cols = steps[mb]
            if self.algorithm.whole_trajectory or not self.spec.step_chunk:
                yield mb, cols, False
            else:
                yield from ((mb, c, False) for c in torch.split(cols, self.spec.step_chunk, dim=1))

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        main = self.world.main  # the other processes of a distributed run write nothing
        self.state.lock()  # one trainer per run folder (an orphan still running is refused)
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / RUN_SPEC_FILE, self.spec.to_dict())
        budgets = sorted(self.spec.budgets)
        rounds = math.ceil(budgets[-1] / self.spec.images_per_round)
        done = self.state.restore(self)
        if main and done < rounds:  # a finished run extended to more budgets is not finished until it ends
            (self.out / "summary.json").unlink(missing_ok=True)
        log_path = self.out / "log.jsonl"
        kept = log_path.read_text().splitlines()[:done] if done and log_path.is_file() else []
        if main:
            atomic_write_text(log_path, "".join(line + "\n" for line in kept))
        # the curves beside the log (bench/tracking.py): a resumed run writes from its restored round
        tracker = open_tracker(
            self.out,
            "train",
            self.spec.tracking,
            self.spec.to_dict(),
            main,
            resume_step=self.images_seen if done else None,
        )
        status, error = "finished", None
        progress = tqdm(
            range(done, rounds),
            initial=done,
            total=rounds,
            desc="train rounds",
            unit="round",
            file=sys.stderr,
            disable=not main,
        )
        with open(log_path if main else os.devnull, "a") as log:
            try:
                for i in progress:
                    line = {"round": i, **self.round()}
                    log.write(dumps_json(line, indent=None) + "\n")
                    log.flush()
                    tracker.scalars(flatten("train", line), self.images_seen)
                    for b in budgets:
                        if self.images_seen - self.spec.images_per_round < b <= self.images_seen:
                            self.state.checkpoint(self, b)
                    if (i + 1) % self.spec.state_every == 0 or i + 1 == rounds:
                        self.state.save(self, i + 1)
            except DivergedError as exc:
                status, error = "diverged", str(exc)
            finally:
                tracker.close()
        summary = {
            "status": status,
            "error": error,
            "images_seen": self.images_seen,
            "device_seconds": self.seconds,
            "peak_memory_mb": peak_memory_mb(),
            "algorithm": self.spec.algorithm,
            "settings": self.algorithm.describe(),
        }
        if main:
            atomic_write_json(self.out / "summary.json", summary)
        return summary


def train(spec: RunSpec, out: str | Path, threads: int = 1) -> dict[str, Any]:
    return Trainer(spec, out, threads).run()
