"""The gradient-variance probe: at the start and at every budget, on fixed probe prompts and
seeds (the same for every method), K independent minibatch gradients of the algorithm's own loss
and the share of the gradient each denoising step contributes (DESIGN.md, "Measurements").

Minibatch k is one prompt group of G images. Its gradient is decomposed exactly by step: with
c = dL/dlogp (B, S) from the loss on detached log-probs, g_k = sum_s grad(sum_b c[b, s] logp[b, s]),
and g_{k,s} is the s-th term, so any loss over log-probs (pairwise PRDP included) gets a
per-step credit without assuming it is a mean of per-step terms.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bench.algorithm import StepBatch
from bench.io import atomic_write_json, read_shared
from bench.metrics.gradient_variance import credit_share, gini, gradient_statistics, max_min_ratio
from bench.models.policy import Policy
from bench.registry import ALGORITHMS
from bench.reward import build_reward
from bench.rollout import make_sampler, recompute, rollout
from bench.world.captions import prompt_sets


def probe_prompts(k: int, seed: int) -> list[str]:
    prompts = prompt_sets()["train"]
    return [prompts[i] for i in np.random.default_rng(seed).choice(len(prompts), size=k, replace=False)]


def _flat(grads, params) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def probe_gradients(policy: Policy, sampler, algorithm, reward, prompts: list[str], group_size: int,
                    guidance: float, seed: int) -> dict:
    """One checkpoint: returns the gradient statistics and the per-step credit shares."""
    n_groups = len(prompts)
    all_prompts = [p for p in prompts for _ in range(group_size)]
    group_ids = torch.arange(n_groups).repeat_interleave(group_size)
    traj = rollout(policy, sampler, all_prompts, guidance, torch.Generator().manual_seed(seed), group_ids,
                   algorithm.settings.same_noise_per_group)
    rewards, _ = reward(policy.decode(traj.x0), all_prompts, {"group_ids": group_ids})
    rewards = rewards.float()
    advantages = algorithm.advantages(rewards, group_ids, all_prompts).float()
    k_steps = sampler.num_steps - int(algorithm.settings.drop_last_step)
    params = policy.trainable_parameters()
    grads, norms = [], torch.zeros(n_groups, sampler.num_steps, dtype=torch.float64)
    for g in range(n_groups):
        rows = torch.nonzero(group_ids == g).flatten()
        steps = torch.arange(k_steps).expand(len(rows), k_steps)
        # the probe rolls out with the checkpoint itself, so the current log-probs are the recorded ones
        logp_old = torch.gather(traj.logp[rows], 1, steps)
        logp_ref = None
        if algorithm.settings.needs_reference:
            with torch.no_grad():
                logp_ref, _, _ = recompute(policy, sampler, traj, rows, steps, guidance, reference=True)
        leaf = logp_old.clone().requires_grad_(True)
        batch = StepBatch(logp=leaf, logp_old=logp_old, advantages=advantages[rows],
                          rewards=rewards[rows], group_ids=group_ids[rows], timesteps=sampler.timesteps[steps],
                          step_index=steps, logp_ref=logp_ref)
        (coef,) = torch.autograd.grad(algorithm.loss(batch).value, leaf, allow_unused=True)
        coef = torch.zeros_like(leaf) if coef is None else coef
        total = None
        for s in range(k_steps):
            logp_s, _, _ = recompute(policy, sampler, traj, rows, steps[:, s : s + 1], guidance)
            g_s = _flat(torch.autograd.grad((coef[:, s : s + 1] * logp_s).sum(), params, allow_unused=True), params)
            norms[g, s] = g_s.norm().double()
            total = g_s if total is None else total + g_s
        grads.append(total)
    stats = gradient_statistics(torch.stack(grads))
    shares = credit_share(norms[:, :k_steps])
    return {
        **asdict(stats),
        "credit_share": [round(float(v), 6) for v in shares] + [0.0] * (sampler.num_steps - k_steps),
        "credit_max_min": max_min_ratio(shares),
        "credit_gini": gini(shares),
        "reward_mean": float(rewards.mean()),
    }


# run-config fields that cannot change the probe of the base model (training-only or bookkeeping);
# runs that agree on every other field share it. With LoRA the seed draws the initial adapters.
_NOT_BASE = ("seed", "budgets", "threads", "state_every", "prompts", "micro_batch", "step_chunk", "lr", "betas",
             "weight_decay", "adam_eps", "max_grad_norm", "images_per_round")


def base_key(run_cfg: dict, probe: dict) -> dict:
    lora = bool(run_cfg.get("lora_rank"))
    run = {k: v for k, v in run_cfg.items() if k not in _NOT_BASE or (lora and k == "seed")}
    return {"run": run, "probe": probe}


class Prober:
    """The probe of one run's policy at its checkpoints; starts as the base model with the
    run's trainable parameters (LoRA adapters drawn from the run's seed, as in training)."""

    def __init__(self, run_cfg: dict, probe: dict, threads: int = 1):
        torch.set_num_threads(threads)
        self.run_cfg, self.probe = run_cfg, probe
        torch.manual_seed(run_cfg["seed"])  # the order of the trainer's set-up: seed, load, LoRA
        self.policy = Policy.load(run_cfg["model_path"], **run_cfg.get("model_options", {}))
        if run_cfg.get("lora_rank"):
            self.policy.enable_lora(run_cfg["lora_rank"], run_cfg.get("lora_alpha"))
        self.sampler = make_sampler(self.policy, run_cfg["num_steps"], run_cfg["eta"],
                                    run_cfg.get("logp_reduce", "mean"), run_cfg.get("flow_variant") or "flowgrpo")
        self.algo_cls = ALGORITHMS.get(run_cfg["algorithm"])
        self.reward = build_reward(run_cfg["reward"], run_cfg.get("reward_settings"))
        self.prompts = probe_prompts(probe["minibatches"], probe["seed"])
        if self.algo_cls(**run_cfg.get("algorithm_settings", {})).settings.needs_reference:
            self.policy.freeze_reference()  # the base weights, before any checkpoint is loaded

    def __call__(self, budget: int) -> dict:
        algorithm = self.algo_cls(**self.run_cfg.get("algorithm_settings", {}))  # fresh: no tracker history
        algorithm.setup(self.sampler)
        group = algorithm.settings.group_size or self.run_cfg["group_size"]
        return {"budget": budget, **probe_gradients(self.policy, self.sampler, algorithm, self.reward, self.prompts,
                                                    group, self.run_cfg["guidance"], self.probe["seed"])}


def probe_base(run_cfg: dict, probe: dict, out: str | Path, threads: int = 1) -> dict:
    """The base model's probe (budget 0), once for every run that shares its key (the seeds of a
    model x reward x algorithm under full fine-tuning)."""
    result = {"key": base_key(run_cfg, probe), "row": Prober(run_cfg, probe, threads)(0)}
    atomic_write_json(Path(out), result)
    return result


def probe_run(run_dir: str | Path, run_cfg: dict, probe: dict, threads: int = 1,
              base: str | Path | None = None) -> dict:
    """Probe every checkpoint of a run (0 = the base model) and write probe.json. `base`: a file
    from probe_base; its row is used when its key matches this run's, else the base is probed here."""
    run_dir = Path(run_dir)
    prober = Prober(run_cfg, probe, threads)
    shared = read_shared(base, base_key(run_cfg, probe))
    rows = [shared["row"]] if shared is not None else [prober(0)]
    for budget in sorted(run_cfg["budgets"]):
        folder = run_dir / "checkpoints" / str(budget)
        if not (folder / "state.json").is_file():
            break  # a diverged run stops at its last good checkpoint
        prober.policy.load_denoiser_state(folder)
        rows.append(prober(budget))
    out = {"minibatches": probe["minibatches"], "seed": probe["seed"], "base_shared": shared is not None, "rows": rows}
    atomic_write_json(run_dir / "probe.json", out)
    return out
