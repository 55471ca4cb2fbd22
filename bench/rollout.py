"""Rollouts: sample trajectories with a policy and a sampler, recording every transition, and
recompute the log-probs of recorded transitions under the current (or reference) weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.interfaces import Sampler
from t2i_rl_bench.models.policy import Cond, Policy
from t2i_rl_bench.sampling import FLOW_VARIANTS, DDIMSampler, FlowSDESampler


@dataclass
class StepGraph:
    """Differentiable log-probs and means of the sampled transitions, from the sampling forward
    itself: while the weights are still the sampling weights (the first optimiser step of a round)
    they are what `recompute` would return, so training needs only the backward pass. It holds the
    steps the round trains (`steps`; default all), so an untrained step (the dropped last one, the
    ODE steps outside an SDE window) costs no backward. It may hold only the trajectory's first
    `samples` samples (bounded reuse, docs/performance.md#the-reused-graph-bounded): the others
    are recomputed."""

    logp: torch.Tensor  # (b, S), requires grad: the first b samples of the trajectory
    means: torch.Tensor  # (b, S, C, H, W) fp32, requires grad
    stds: torch.Tensor  # (b, S)
    steps: torch.Tensor | None = None  # (S,) the sampler steps held, ascending; None: all K in order

    @property
    def samples(self) -> int:
        """How many samples the graph holds: the trajectory's samples 0 .. samples - 1."""
        return len(self.logp)

    def select(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logp (b, S'), mean (b, S', C, H, W), std (b, S')) of samples (b,) at sampler steps
        (b, S'), as `recompute`."""
        if len(samples) and int(samples.max()) >= self.samples:
            raise ValueError(
                f"the sampling graph holds samples 0 .. {self.samples - 1}, "
                f"not {samples[samples >= self.samples].tolist()}"
            )
        if self.steps is not None:
            cols = torch.searchsorted(self.steps, steps.contiguous())
            if bool((cols >= len(self.steps)).any()) or not torch.equal(
                self.steps[cols.clamp(max=len(self.steps) - 1)], steps
            ):
                raise ValueError(
                    f"the sampling graph holds steps {self.steps.tolist()}, not all of {steps.unique().tolist()}"
                )
            steps = cols
        rows = samples[:, None].expand_as(steps)
        return self.logp[rows, steps], self.means[rows, steps], self.stds[rows, steps]


@dataclass
class Trajectory:
    prompts: list[str]
    group_ids: torch.Tensor  # (B,) index of the prompt group each sample belongs to
    latents: torch.Tensor  # (B, K+1, C, H, W): [:, k] before step k, [:, k+1] after it
    means: torch.Tensor  # (B, K, C, H, W) fp32
    stds: torch.Tensor  # (B, K) fp32
    logp: torch.Tensor  # (B, K) fp32, sampling-time log-probs
    timesteps: torch.Tensor  # (K,) model timesteps
    cond: Cond
    uncond: Cond
    graph: StepGraph | None = None  # the sampling forward's autograd graph, when kept

    @property
    def x0(self) -> torch.Tensor:
        return self.latents[:, -1]

    def __len__(self) -> int:
        return len(self.prompts)


def make_sampler(
    policy: Policy,
    num_steps: int,
    eta: float = 1.0,
    logp_reduce: str = "mean",
    flow_variant: str = FLOW_VARIANTS[0],
    sde_window: tuple[int, int] | None = None,
    window_shift: tuple[int, int] | None = None,
    window_range: tuple[int, int] | None = None,
    window_seed: int = 0,
) -> DDIMSampler | FlowSDESampler:
    """The sampler that matches the policy's objective: DDIM (epsilon/v) over the policy's
    scheduler, or a flow SDE over the sigmas the policy's flow scheduler uses (shift included),
    stochastic only inside `sde_window` (start, length) when given, sliding by `window_shift`
    (every, stride) over the rounds or drawn each round inside `window_range` (lo, hi) from
    `window_seed` (flow models only)."""
    if policy.objective == "flow":
        policy.scheduler.set_timesteps(num_steps)
        return FlowSDESampler(
            policy.scheduler.sigmas.float().clone(),
            noise_level=eta,
            variant=flow_variant,
            logp_reduce=logp_reduce,
            sde_window=sde_window,
            window_shift=window_shift,
            window_range=window_range,
            window_seed=window_seed,
        )
    if sde_window is not None or window_shift is not None or window_range is not None:
        raise ValueError(
            "sampling.sde_window (SDE inside a window, ODE elsewhere) is a flow-SDE option; "
            "this model samples with DDIM"
        )
    return DDIMSampler(policy.scheduler, num_steps, eta=eta, logp_reduce=logp_reduce)


@torch.no_grad()
def rollout(
    policy: Policy,
    sampler: Sampler,
    prompts: list[str],
    guidance: float,
    generator: torch.Generator,
    group_ids: torch.Tensor | None = None,
    same_noise_per_group: bool = False,
    keep_graph: bool = False,
    graph_steps: torch.Tensor | None = None,
    graph_samples: int | None = None,
) -> Trajectory:
    """Sample one trajectory per prompt (repeat a prompt G times for a group of G).

    keep_graph: run the denoiser with autograd on and keep each step's graph (`Trajectory.graph`):
    the same samples, and training can backpropagate without a second forward. Each step's input
    is detached, so no gradient flows through the chain of steps (as in recompute). graph_steps:
    the sampler steps whose graph is kept (default all); the others run without autograd. The
    samples are the same either way: each step's output does not depend on autograd.
    graph_samples: keep the graph of the first graph_samples samples only (default all): at the
    kept steps the denoiser runs in two forwards, with autograd over those samples and without it
    over the rest, so the graph's memory scales with graph_samples. The two forwards give the one
    forward's output to float rounding (bit for bit where the kernels do not depend on the batch
    size); the sampler's step, and so its noise, is one call over all samples as before."""
    n = len(prompts)
    group_ids = torch.arange(n) if group_ids is None else group_ids
    held = n if graph_samples is None else min(int(graph_samples), n)
    if keep_graph and held < 1:
        raise ValueError(
            f"graph_samples={graph_samples}: a kept graph holds at least one sample (keep_graph=False for none)"
        )
    cond, uncond = policy.encode(prompts), policy.encode([""] * n)
    shape = policy.sample_shape
    if same_noise_per_group:  # DanceGRPO: one x_T per group, members differ by the SDE noise
        groups = torch.unique(group_ids)
        first = torch.randn((len(groups), *shape), generator=generator)
        x = first[torch.searchsorted(groups, group_ids)]
    else:
        x = torch.randn((n, *shape), generator=generator)
    model_t = sampler.model_timesteps()
    latents, means, step_stds, logps = [x], [], [], []
    graph_means, graph_logps = [], []
    kept = torch.zeros(sampler.num_steps, dtype=torch.bool)
    if keep_graph:
        kept[slice(None) if graph_steps is None else graph_steps] = True
    for k in range(sampler.num_steps):
        t = sampler.timesteps[k]
        with torch.set_grad_enabled(bool(kept[k])):
            if kept[k] and held < n:  # the graph of the first `held` samples only
                out_held = policy.predict(x[:held], model_t[k], cond[:held], uncond[:held], guidance)
                with torch.no_grad():
                    out_rest = policy.predict(x[held:], model_t[k], cond[held:], uncond[held:], guidance)
                out = torch.cat([out_held, out_rest])
            else:
                out = policy.predict(x, model_t[k], cond, uncond, guidance)
            res = sampler.step(out, x, t.expand(n), step_index=torch.full((n,), k), generator=generator)
            if kept[k]:  # the held samples' slice, while autograd records
                graph_means.append(res.mean if held == n else res.mean[:held])
                graph_logps.append(res.logp if held == n else res.logp[:held])
        x = res.x_next.detach()
        latents.append(x)
        means.append(res.mean.detach())
        step_stds.append(res.std.expand(n))
        logps.append(res.logp.detach())
    stds = torch.stack(step_stds, 1)
    graph = None
    if keep_graph:
        steps = None if bool(kept.all()) else torch.nonzero(kept).flatten()
        with torch.enable_grad():
            graph = StepGraph(
                torch.stack(graph_logps, 1),
                torch.stack(graph_means, 1),
                (stds if steps is None else stds[:, steps])[:held],
                steps,
            )
    return Trajectory(
        prompts=list(prompts),
        group_ids=group_ids,
        latents=torch.stack(latents, 1),
        means=torch.stack(means, 1),
        stds=stds,
        logp=torch.stack(logps, 1),
        timesteps=sampler.timesteps.clone(),
        cond=cond,
        uncond=uncond,
        graph=graph,
    )


def recompute(
    policy: Policy,
    sampler: Sampler,
    traj: Trajectory,
    samples: torch.Tensor,
    steps: torch.Tensor,
    guidance: float,
    reference: bool = False,
    detach_uncond: bool = False,
):
    """Log-probs of recorded transitions under the current weights (or the reference).

    samples: (B,) trajectory indices; steps: (B, S) sampler step indices. One batched forward
    over all B*S transitions. Returns logp (B, S), mean (B, S, C, H, W), std (B, S)."""
    b, s = steps.shape
    rows = samples[:, None].expand(b, s).reshape(-1)
    cols = steps.reshape(-1)
    x = traj.latents[rows, cols]
    x_next = traj.latents[rows, cols + 1]
    t = sampler.timesteps[cols]
    out = policy.predict(
        x,
        sampler.model_timesteps()[cols],
        traj.cond[rows],
        traj.uncond[rows],
        guidance,
        detach_uncond=detach_uncond,
        reference=reference,
    )
    res = sampler.step(out, x, t, step_index=cols, prev=x_next)
    return res.logp.view(b, s), res.mean.view(b, s, *res.mean.shape[1:]), res.std.view(b, s)


@torch.no_grad()
def sample_images(
    policy: Policy, sampler: Sampler, prompts: list[str], guidance: float, seed: int, batch: int = 64
) -> torch.Tensor:
    """Decoded images (N, 3, H, W) in [0, 1] of the prompts, at a fixed seed, `batch` at a time."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, len(prompts), batch):
        traj = rollout(policy, sampler, prompts[start : start + batch], guidance, generator)
        images.append(policy.decode(traj.x0))
    return torch.cat(images)
