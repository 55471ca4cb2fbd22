"""The gradient-variance probe: at the start and at every budget, on fixed probe prompts and
seeds (the same for every method), K independent minibatch gradients of the algorithm's own loss
and the share of the gradient each denoising step contributes
(docs/measurements.md#gradient-signal-and-per-step-credit).

Minibatch k is one prompt group of G images, its StepBatch built as training builds it
(t2i_rl_bench.train.steps.step_batch), reference terms included. Its gradient is decomposed exactly by
step: with c = dL/dlogp (B, S) and c_mean = dL/dmean (B, S, C, H, W) from the loss on detached
copies of the current log-probs and transition means (the terms a loss reads that depend on the
weights), g_k = sum_s grad(sum_b c[b, s] logp[b, s] + <c_mean[b, s], mean[b, s]>), and g_{k,s} is
the s-th term. So any loss over these (pairwise PRDP, Flow-GRPO's KL to the reference) gets a
per-step credit without assuming it is a mean of per-step terms.

The two families without per-step log-probs get the same gradient statistics (minibatch k: the
gradient of the loss training computes on group k) and, instead of a credit share, a
`credit_note` that says why they have none (NO_STEP_CREDIT).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from t2i_rl_bench.algorithm import Algorithm, RewardBatch
from t2i_rl_bench.factory import open_algorithm, open_run
from t2i_rl_bench.interfaces import Reward, Sampler
from t2i_rl_bench.io import atomic_write_json, read_shared
from t2i_rl_bench.metrics.gradient_variance import credit_share, gini, gradient_statistics, max_min_ratio
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.rollout import Trajectory, recompute, rollout
from t2i_rl_bench.sampling import sampler_at_round
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.tracking import flatten, open_tracker
from t2i_rl_bench.train.differentiable import backprop_sample
from t2i_rl_bench.train.forward import forward_batch
from t2i_rl_bench.train.loop import call_loss
from t2i_rl_bench.train.steps import reference_terms, step_batch, trainable_steps, trained_steps
from t2i_rl_bench.world.captions import prompt_sets


def probe_prompts(k: int, seed: int) -> list[str]:
    prompts = prompt_sets()["train"]
    return [prompts[i] for i in np.random.default_rng(seed).choice(len(prompts), size=k, replace=False)]


def _flat(grads: tuple[torch.Tensor | None, ...], params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def step_gradients(
    policy: Policy,
    sampler: Sampler,
    algorithm: Algorithm,
    traj: Trajectory,
    rows: torch.Tensor,
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    guidance: float,
) -> list[torch.Tensor]:
    """The flat gradient of the loss of samples `rows` over their trained steps, one term per
    step (they sum to the gradient of the loss). The trajectory was sampled by the current
    weights, so its recorded log-probs and means are the current ones."""
    trained = trainable_steps(sampler, algorithm.recipe.drop_last_step)
    k_steps = len(trained)
    steps = trained.expand(len(rows), k_steps)
    reference = reference_terms(policy, sampler, traj, algorithm, guidance, rows, int(trained.max()) + 1)
    logp = torch.gather(traj.logp[rows], 1, steps).clone().requires_grad_(True)
    mean = traj.means[rows[:, None].expand_as(steps), steps].clone().requires_grad_(True)
    std = torch.gather(traj.stds[rows], 1, steps)
    batch = step_batch(traj, sampler, rows, steps, (logp, mean, std), advantages, rewards, reference)
    loss = call_loss(type(algorithm).__name__, algorithm, batch, finite=False)
    coef, coef_mean = torch.autograd.grad(loss.value, [logp, mean], allow_unused=True)
    coef = torch.zeros_like(logp) if coef is None else coef
    params = policy.trainable_parameters()
    grads = []
    for s in range(k_steps):
        logp_s, mean_s, _ = recompute(policy, sampler, traj, rows, steps[:, s : s + 1], guidance)
        objective = (coef[:, s : s + 1] * logp_s).sum()
        if coef_mean is not None:  # a loss that reads the means (a KL to the reference)
            objective = objective + (coef_mean[:, s : s + 1] * mean_s).sum()
        grads.append(_flat(torch.autograd.grad(objective, params, allow_unused=True), params))
    return grads


NO_STEP_CREDIT = {
    "forward": (
        "no per-step log-prob credit: a forward-process (likelihood-free) method trains on clean "
        "samples re-noised at random times, not on the sampler's transitions, so no step's "
        "log-prob carries its gradient; gradient statistics only"
    ),
    "differentiable": (
        "no per-step log-prob credit: the reward's gradient reaches the weights through the last "
        "sampling steps by the chain rule (reparameterised noise), not through log-probs; "
        "gradient statistics only"
    ),
}


def family_gradient(
    policy: Policy,
    sampler: Sampler,
    algorithm: Algorithm,
    reward: Reward,
    traj: Trajectory,
    rows: torch.Tensor,
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    guidance: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The flat gradient of the loss of samples `rows` as training computes it, for the families
    without log-probs: a ForwardBatch of the rows (the current weights as the old policy) or the
    rows' prompts sampled with gradient through the algorithm's window."""
    params = policy.trainable_parameters()
    if algorithm.family == "forward":
        r = algorithm.recipe
        cols = trained_steps(len(rows), sampler.num_steps, r.timestep_fraction, False, r.shuffle_timesteps, generator)
        batch: Any = forward_batch(
            policy, sampler, traj, rows, cols, advantages, rewards, None, generator, algorithm.needs_reference
        )
    else:
        prompts = [traj.prompts[i] for i in rows.tolist()]
        window = algorithm.backprop_window(sampler.num_steps, generator)  # type: ignore[attr-defined]
        x0 = backprop_sample(policy, sampler, prompts, guidance, generator, window)
        scores = reward.differentiable_score(policy.decode(x0), prompts, {})  # type: ignore[attr-defined]
        batch = RewardBatch(scores.float(), traj.group_ids[rows], prompts)
    loss = call_loss(type(algorithm).__name__, algorithm, batch, finite=False)
    return _flat(torch.autograd.grad(loss.value, params, allow_unused=True), params)


def probe_rollout(
    policy: Policy,
    sampler: Sampler,
    algorithm: Algorithm,
    reward: Reward,
    prompts: list[str],
    group_size: int,
    guidance: float,
    seed: int,
) -> tuple[Trajectory, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probe's minibatches: one group of `group_size` samples per prompt from the seed, scored,
    with the algorithm's advantages. Returns (trajectory, group ids, rewards, advantages)."""
    all_prompts = [p for p in prompts for _ in range(group_size)]
    group_ids = torch.arange(len(prompts)).repeat_interleave(group_size)
    traj = rollout(
        policy,
        sampler,
        all_prompts,
        guidance,
        torch.Generator().manual_seed(seed),
        group_ids,
        algorithm.recipe.same_noise_per_group,
    )
    rewards, _ = reward(policy.decode(traj.x0), all_prompts, {"group_ids": group_ids})
    rewards = rewards.float()
    return traj, group_ids, rewards, algorithm.advantages(rewards, group_ids, all_prompts).float()


def probe_gradients(
    policy: Policy,
    sampler: Sampler,
    algorithm: Algorithm,
    reward: Reward,
    prompts: list[str],
    group_size: int,
    guidance: float,
    seed: int,
) -> dict[str, Any]:
    """One checkpoint: returns the gradient statistics and the per-step credit shares."""
    n_groups = len(prompts)
    traj, group_ids, rewards, advantages = probe_rollout(
        policy, sampler, algorithm, reward, prompts, group_size, guidance, seed
    )
    if algorithm.family != "step":
        generator = torch.Generator().manual_seed(seed + 1)
        grads = [
            family_gradient(
                policy,
                sampler,
                algorithm,
                reward,
                traj,
                torch.nonzero(group_ids == g).flatten(),
                advantages,
                rewards,
                guidance,
                generator,
            )
            for g in range(n_groups)
        ]
        return {
            **asdict(gradient_statistics(torch.stack(grads))),
            "credit_note": NO_STEP_CREDIT[algorithm.family],
            "reward_mean": float(rewards.mean()),
        }
    trained = trainable_steps(sampler, algorithm.recipe.drop_last_step)
    grads, norms = [], torch.zeros(n_groups, sampler.num_steps, dtype=torch.float64)
    for g in range(n_groups):
        rows = torch.nonzero(group_ids == g).flatten()
        per_step = step_gradients(policy, sampler, algorithm, traj, rows, advantages, rewards, guidance)
        total = per_step[0]
        for s, g_s in enumerate(per_step):
            norms[g, trained[s]] = g_s.norm().double()
            total = total + g_s if s else total
        grads.append(total)
    stats = gradient_statistics(torch.stack(grads))
    shares = credit_share(norms[:, trained])
    share_per_step = torch.zeros(sampler.num_steps, dtype=torch.float64)
    share_per_step[trained] = torch.as_tensor(shares, dtype=torch.float64)
    return {
        **asdict(stats),
        "credit_share": [round(float(v), 6) for v in share_per_step],
        "credit_max_min": max_min_ratio(shares),
        "credit_gini": gini(shares),
        "reward_mean": float(rewards.mean()),
    }


# run-spec fields that cannot change the probe of the base model (training-only or bookkeeping);
# runs that agree on every other field share it. With LoRA the seed draws the initial adapters.
_NOT_BASE = (
    "seed",
    "budgets",
    "state_every",
    "prompts",
    "micro_batch",
    "step_chunk",
    "lr",
    "betas",
    "weight_decay",
    "adam_eps",
    "max_grad_norm",
    "images_per_round",
    "reuse_sampling_graph",
    "tracking",
)


def base_key(spec: RunSpec, probe: dict[str, Any]) -> dict[str, Any]:
    lora = bool(spec.lora_rank)
    run = {k: v for k, v in spec.to_dict().items() if k not in _NOT_BASE or (lora and k == "seed")}
    return {"run": run, "probe": probe}


class Prober:
    """The probe of one run's policy at its checkpoints; starts as the base model with the
    run's trainable parameters (LoRA adapters drawn from the run's seed, as in training)."""

    def __init__(self, spec: RunSpec, probe: dict[str, Any], threads: int = 1):
        torch.set_num_threads(threads)
        self.spec, self.probe = spec, probe
        run = open_run(spec)  # as training opens it: seed, policy (+ LoRA), sampler noise, reference
        self.policy, self.sampler, self.reward = run.policy, run.sampler, run.reward
        self.prompts = probe_prompts(probe["minibatches"], probe["seed"])

    def __call__(self, budget: int) -> dict[str, Any]:
        algorithm = open_algorithm(self.spec)  # fresh: no tracker history
        # a sliding SDE window where the round after this checkpoint would have it
        self.sampler = sampler_at_round(self.sampler, budget // self.spec.images_per_round)
        algorithm.setup(self.sampler)
        group = algorithm.recipe.group_size or self.spec.group_size
        return {
            "budget": budget,
            **probe_gradients(
                self.policy,
                self.sampler,
                algorithm,
                self.reward,
                self.prompts,
                group,
                self.spec.guidance,
                self.probe["seed"],
            ),
        }


def probe_base(spec: RunSpec, probe: dict[str, Any], out: str | Path, threads: int = 1) -> dict[str, Any]:
    """The base model's probe (budget 0), once for every run that shares its key (the seeds of a
    model x reward x algorithm under full fine-tuning)."""
    result = {"key": base_key(spec, probe), "row": Prober(spec, probe, threads)(0)}
    atomic_write_json(Path(out), result)
    return result


def probe_run(
    run_dir: str | Path, spec: RunSpec, probe: dict[str, Any], threads: int = 1, base: str | Path | None = None
) -> dict[str, Any]:
    """Probe every checkpoint of a run (0 = the base model) and write probe.json. `base`: a file
    from probe_base; its row is used when its key matches this run's, else the base is probed here."""
    run_dir = Path(run_dir)
    prober = Prober(spec, probe, threads)
    shared = read_shared(base, base_key(spec, probe))
    rows = [shared["row"]] if shared is not None else [prober(0)]
    for budget in tqdm(sorted(spec.budgets), desc="probe checkpoints", unit="checkpoint"):
        folder = run_dir / "checkpoints" / str(budget)
        if not (folder / "state.json").is_file():
            break  # a diverged run stops at its last good checkpoint
        prober.policy.load_denoiser_state(folder)
        rows.append(prober(budget))
    out = {"minibatches": probe["minibatches"], "seed": probe["seed"], "base_shared": shared is not None, "rows": rows}
    atomic_write_json(run_dir / "probe.json", out)
    tracker = open_tracker(run_dir, "probe", spec.tracking, spec.to_dict())  # the run's curves, at each budget
    try:
        for row in rows:
            tracker.scalars(flatten("probe", {k: v for k, v in row.items() if k != "budget"}), row["budget"])
    finally:
        tracker.close()
    return out
