"""The gradient-variance probe: at the start and at every budget, on fixed probe prompts and
seeds (the same for every method), K independent minibatch gradients of the algorithm's own loss
and the share of the gradient each denoising step contributes (docs/mechanisms.md#the-gradient-probe).

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

Beside the trace SNR, each row carries the statistics that resolve signal at this K
(docs/mechanisms.md#the-gradient-probe): the cross-fitted projected SNR with its interval, the
cosine to the reference direction by batch size, the noise scale, per step the variance share
and the trace and projected SNR of g_{k,s}, and, for methods that make several updates per
round, the off-policy probe (`off_policy_probe`: importance-ratio ESS, clip fraction and the
gradient statistics after the 1st, 2nd, ... update; docs/mechanisms.md#off-policy-probe).
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
from t2i_rl_bench.metrics.gradient_variance import (
    credit_share,
    effective_sample_size,
    gini,
    gradient_statistics,
    max_min_ratio,
    projected_statistics,
    step_statistics,
)
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


def probe_prompts(k: int, seed: int, draw: str = "distinct") -> list[str]:
    """The probe's K prompts from the training set: `distinct` (K different prompts, drawn without
    replacement) or `independent` (K independent draws, with replacement). Only independent draws
    make the K group gradients independent, as the SNR estimators assume: distinct prompts from a
    set of N bias ||mean g||^2 by -V / (N - 1), V the variance of the per-prompt expected gradients
    (docs/mechanisms.md#independent-prompt-draws)."""
    if draw not in ("distinct", "independent"):
        raise ValueError(f"probe.prompt_draw: expected 'distinct' or 'independent', got {draw!r}")
    prompts = prompt_sets()["train"]
    rng = np.random.default_rng(seed)
    return [prompts[i] for i in rng.choice(len(prompts), size=k, replace=draw == "independent")]


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


# A checkpoint whose K probed prompt groups all tied on the reward (likely for a discrete reward and a sampler
# whose group shares its initial noise, e.g. DanceGRPO on attribute_match): every advantage is zero, so is every
# probe gradient; the row keeps the norms (zero) and says why its SNR and credit are missing.
ALL_TIED = (
    "every probed prompt group tied on the reward, so every advantage and every probe gradient is zero: "
    "no SNR and no per-step credit at this checkpoint"
)

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


def _off_policy_parts(
    group_ids: torch.Tensor, updates_per_round: int, inner_epochs: int, round_groups: int
) -> list[torch.Tensor]:
    """The samples of each update of a round, as training splits it: the round's groups in
    `updates_per_round` even parts of whole groups, `inner_epochs` passes. The round is the
    probe's first `round_groups` groups (a training round's images / G), so a probe with more
    minibatches than a round updates on a round's samples as training does."""
    n_groups = min(int(group_ids.max()) + 1, max(1, round_groups))
    chunks = torch.tensor_split(torch.arange(n_groups), updates_per_round)
    parts = [torch.nonzero(torch.isin(group_ids, c)).flatten() for c in chunks if len(c)]
    return parts * inner_epochs


def _step_batch(policy, sampler, algorithm, traj, rows, advantages, rewards, guidance, grad: bool):
    trained = trainable_steps(sampler, algorithm.recipe.drop_last_step)
    steps = trained.expand(len(rows), len(trained))
    reference = reference_terms(policy, sampler, traj, algorithm, guidance, rows, int(trained.max()) + 1)
    with torch.enable_grad() if grad else torch.no_grad():
        current = recompute(policy, sampler, traj, rows, steps, guidance)
    return step_batch(traj, sampler, rows, steps, current, advantages, rewards, reference)


def _update_row(u: int, grads: torch.Tensor, group_size: int) -> dict[str, Any]:
    stats = gradient_statistics(grads)
    proj = projected_statistics(grads, group_size)
    return {
        f"update{u}/snr_unbiased": stats.snr_unbiased,
        f"update{u}/snr_unbiased_low": stats.snr_unbiased_low,
        f"update{u}/snr_unbiased_high": stats.snr_unbiased_high,
        **{f"update{u}/{k}": proj[k] for k in ("proj_snr", "proj_snr_low", "proj_snr_high")},
    }


def off_policy_probe(
    policy: Policy,
    sampler: Sampler,
    algorithm: Algorithm,
    spec: RunSpec,
    traj: Trajectory,
    group_ids: torch.Tensor,
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    on_policy: torch.Tensor,
    minibatches: int,
) -> dict[str, Any]:
    """For a method that makes several updates per round (inner_epochs x updates_per_round > 1):
    the probe's first round of samples (a training round's groups), updated as training updates
    it (a fresh AdamW with the run's settings, the round's parts in order), and after the u-th
    update (u = 1 .. U-1, the updates that train on samples of an older policy): the effective
    sample size of the importance ratios r = exp(logp - logp_old) per (sample, step) and per
    trajectory (the product over steps), the fraction of (sample, step) terms the loss clips
    (`Loss.clipped`), and the trace and projected SNR of the gradients of the loss at the updated
    weights, all on the first `minibatches` groups (update 0: the on-policy gradients `on_policy`,
    ratio 1). The weights are restored after. Empty for the other methods and families
    (docs/mechanisms.md#off-policy-probe)."""
    r = algorithm.recipe
    updates = r.inner_epochs * r.updates_per_round
    if algorithm.family != "step" or updates < 2 or minibatches < 2:
        return {}
    group_size = int((group_ids == 0).sum())
    parts = _off_policy_parts(group_ids, r.updates_per_round, r.inner_epochs, spec.images_per_round // group_size)
    updates = len(parts)  # fewer probe groups than updates per round: one update per group
    if updates < 2:
        return {}
    name = type(algorithm).__name__
    k = min(minibatches, len(on_policy))
    out: dict[str, Any] = {"updates_per_round": updates, **_update_row(0, on_policy[:k], group_size)}
    params = policy.trainable_parameters()
    saved = [p.detach().clone() for p in params]
    optimiser = torch.optim.AdamW(
        params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, eps=spec.adam_eps
    )
    args = (policy, sampler, algorithm, traj)
    try:
        for u in range(1, updates):
            optimiser.zero_grad(set_to_none=True)
            part = _step_batch(*args, parts[u - 1], advantages, rewards, spec.guidance, True)
            value = call_loss(name, algorithm, part, finite=False).value
            if not torch.isfinite(value):  # a loss that is not finite cannot be stepped on: the rest is not probed
                out["off_policy_note"] = f"update {u}: non-finite loss, not stepped"
                break
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            optimiser.step()
            grads, log_ratios, clipped = [], [], []
            for g in range(k):  # the first k groups: their gradients, ratios and clip mask at the updated weights
                rows = torch.nonzero(group_ids == g).flatten()
                batch = _step_batch(*args, rows, advantages, rewards, spec.guidance, True)
                loss = call_loss(name, algorithm, batch, finite=False)
                grads.append(_flat(torch.autograd.grad(loss.value, params, allow_unused=True), params))
                log_ratios.append((batch.logp - batch.logp_old).detach().double())
                if loss.clipped is not None:
                    clipped.append(loss.clipped.float().flatten())
            log_ratio = torch.cat(log_ratios)
            out.update(
                {
                    f"update{u}/ess": effective_sample_size(log_ratio),
                    f"update{u}/ess_trajectory": effective_sample_size(log_ratio.sum(1)),
                    f"update{u}/clip_fraction": float(torch.cat(clipped).mean()) if clipped else None,
                    f"update{u}/log_ratio_abs": float(log_ratio.abs().mean()),
                    **_update_row(u, torch.stack(grads), group_size),
                }
            )
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
    return out


def probe_gradients(
    policy: Policy,
    sampler: Sampler,
    algorithm: Algorithm,
    reward: Reward,
    prompts: list[str],
    group_size: int,
    guidance: float,
    seed: int,
    spec: RunSpec | None = None,
    off_policy_minibatches: int = 0,
) -> dict[str, Any]:
    """One checkpoint: returns the gradient statistics (trace and projected), the per-step
    credit shares and statistics, and with `spec` and off_policy_minibatches >= 2 the off-policy
    probe."""
    n_groups = len(prompts)
    traj, group_ids, rewards, advantages = probe_rollout(
        policy, sampler, algorithm, reward, prompts, group_size, guidance, seed
    )
    if algorithm.family != "step":
        generator = torch.Generator().manual_seed(seed + 1)
        family_grads = [
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
        stacked = torch.stack(family_grads)
        return {
            **asdict(gradient_statistics(stacked)),
            **projected_statistics(stacked, group_size),
            "credit_note": NO_STEP_CREDIT[algorithm.family],
            "reward_mean": float(rewards.mean()),
        }
    trained = trainable_steps(sampler, algorithm.recipe.drop_last_step)
    norms = torch.zeros(n_groups, sampler.num_steps, dtype=torch.float64)
    steps: torch.Tensor | None = None  # (K, S, P), filled in place: one copy of the per-step gradients
    for g in range(n_groups):
        rows = torch.nonzero(group_ids == g).flatten()
        per_step = step_gradients(policy, sampler, algorithm, traj, rows, advantages, rewards, guidance)
        if steps is None:
            steps = torch.empty(n_groups, len(per_step), per_step[0].numel(), dtype=per_step[0].dtype)
        for s, grad in enumerate(per_step):
            steps[g, s] = grad
        norms[g, trained] = steps[g].norm(dim=1).double()
        del per_step
    if steps is None:
        raise ValueError("the probe needs at least one prompt group")
    grads = steps.sum(1)
    stats = gradient_statistics(grads)
    if not bool((norms[:, trained] > 0).any()):
        # every probed group tied (all advantages zero): no gradient, so no SNR and no step's credit share
        return {
            **asdict(stats),
            "snr": None,
            "snr_unbiased": None,
            **projected_statistics(grads, group_size),
            "credit_note": ALL_TIED,
            "reward_mean": float(rewards.mean()),
        }
    shares = credit_share(norms[:, trained])
    share_per_step = torch.zeros(sampler.num_steps, dtype=torch.float64)
    share_per_step[trained] = torch.as_tensor(shares, dtype=torch.float64)
    per_step_stats: dict[str, list[float | None]] = {}
    for key, values in step_statistics(steps).items():  # on the sampler's step index; None: not trained
        full: list[float | None] = [None] * sampler.num_steps
        for s, v in zip(trained.tolist(), values):
            full[s] = v
        per_step_stats[key] = full
    row = {
        **asdict(stats),
        **projected_statistics(grads, group_size),
        "credit_share": [round(float(v), 6) for v in share_per_step],
        "credit_max_min": max_min_ratio(shares),
        "credit_gini": gini(shares),
        **per_step_stats,
        "reward_mean": float(rewards.mean()),
    }
    if spec is not None and off_policy_minibatches:
        del steps
        row.update(
            off_policy_probe(
                policy, sampler, algorithm, spec, traj, group_ids, advantages, rewards, grads, off_policy_minibatches
            )
        )
    return row


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
    "reuse_graph_samples",
    "tracking",
)


def base_key(spec: RunSpec, probe: dict[str, Any]) -> dict[str, Any]:
    lora = bool(spec.lora_rank)
    run = {k: v for k, v in spec.to_dict().items() if k not in _NOT_BASE or (lora and k == "seed")}
    return {"run": run, "probe": probe}


def draw_seed(probe: dict[str, Any], run_seed: int, budget: int) -> int:
    """The seed of a probe's prompts and noise. By default `probe.seed` for every run: common
    random numbers across methods and across seeds too, so a mean over seeds does not average
    the probe's own sampling noise away
    (docs/mechanisms.md#one-probe-draw-shared-by-every-seed). With `per_seed_draw` each run seed
    probes its checkpoints on a draw of its own, which the methods of that seed share (pairing
    kept); the base model (budget 0, shared by the seeds) stays on `probe.seed`."""
    if not probe.get("per_seed_draw", False) or budget == 0:
        return int(probe["seed"])
    return int(probe["seed"]) + 7919 * (int(run_seed) + 1)


class Prober:
    """The probe of one run's policy at its checkpoints; starts as the base model with the
    run's trainable parameters (LoRA adapters drawn from the run's seed, as in training)."""

    def __init__(self, spec: RunSpec, probe: dict[str, Any], threads: int = 1):
        torch.set_num_threads(threads)
        self.spec, self.probe = spec, probe
        run = open_run(spec)  # as training opens it: seed, policy (+ LoRA), sampler noise, reference
        self.policy, self.sampler, self.reward = run.policy, run.sampler, run.reward

    def __call__(self, budget: int) -> dict[str, Any]:
        algorithm = open_algorithm(self.spec)  # fresh: no tracker history
        # a sliding SDE window where the round after this checkpoint would have it
        self.sampler = sampler_at_round(self.sampler, budget // self.spec.images_per_round)
        algorithm.setup(self.sampler)
        group = algorithm.recipe.group_size or self.spec.group_size
        seed = draw_seed(self.probe, self.spec.seed, budget)
        prompts = probe_prompts(self.probe["minibatches"], seed, self.probe.get("prompt_draw", "distinct"))
        return {
            "budget": budget,
            **probe_gradients(
                self.policy,
                self.sampler,
                algorithm,
                self.reward,
                prompts,
                group,
                self.spec.guidance,
                seed,
                self.spec,
                # the off-policy probe at the base model and the final budget only (its cost:
                # docs/mechanisms.md#cost-of-the-probe)
                self.probe.get("off_policy_minibatches", 0) if budget in (0, max(self.spec.budgets)) else 0,
            ),
        }


def probe_base(spec: RunSpec, probe: dict[str, Any], out: str | Path, threads: int = 1) -> dict[str, Any]:
    """The base model's probe (budget 0), once for every run that shares its key (the seeds of a
    model x reward x algorithm under full fine-tuning)."""
    result = {"key": base_key(spec, probe), "row": Prober(spec, probe, threads)(0)}
    atomic_write_json(Path(out), result)
    return result


def probed_budgets(spec: RunSpec, probe: dict[str, Any]) -> list[int]:
    """The checkpoints a run's probe measures besides the base model: every budget, or with
    `at: final` the final one only (more minibatches there for the same cost:
    docs/mechanisms.md#the-probe-at-the-final-budget)."""
    budgets = sorted(spec.budgets)
    return budgets[-1:] if probe.get("at", "every") == "final" else budgets


def probe_run(
    run_dir: str | Path, spec: RunSpec, probe: dict[str, Any], threads: int = 1, base: str | Path | None = None
) -> dict[str, Any]:
    """Probe every checkpoint of a run (0 = the base model) and write probe.json. `base`: a file
    from probe_base; its row is used when its key matches this run's, else the base is probed here."""
    run_dir = Path(run_dir)
    prober = Prober(spec, probe, threads)
    shared = read_shared(base, base_key(spec, probe))
    rows = [shared["row"]] if shared is not None else [prober(0)]
    for budget in tqdm(probed_budgets(spec, probe), desc="probe checkpoints", unit="checkpoint"):
        folder = run_dir / "checkpoints" / str(budget)
        if not (folder / "state.json").is_file():
            break  # a diverged run stops at its last good checkpoint (and has no final one)
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
