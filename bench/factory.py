"""Opening a run: the policy, sampler, algorithm and reward a RunSpec describes, the same way
for every command (train, evaluate, evaluate-base, probe, probe-base, recursive)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i_rl_bench.algorithm import Algorithm
from t2i_rl_bench.interfaces import Sampler
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.registry import ALGORITHMS
from t2i_rl_bench.reward import ComposedReward, build_reward
from t2i_rl_bench.rollout import make_sampler
from t2i_rl_bench.sampling import FLOW_VARIANTS
from t2i_rl_bench.spec import RunSpec


def open_algorithm(spec: RunSpec) -> Algorithm:
    """A fresh instance (no cross-round history) with the spec's overrides."""
    algorithm: Algorithm = ALGORITHMS.get(spec.algorithm)(**spec.algorithm_settings)
    return algorithm


def open_policy(spec: RunSpec, trainable: bool = True) -> Policy:
    """The base model. `trainable`: with the run's trainable parameters, drawn as training draws
    them (torch seeded first, then the LoRA adapters); else the plain model whose weights a
    checkpoint replaces (evaluation, the recursive loop), drawing nothing."""
    if not trainable:
        return Policy.load(spec.model_path, **spec.model_options)
    torch.manual_seed(spec.seed)
    policy = Policy.load(spec.model_path, **spec.model_options)
    if spec.lora_rank:
        policy.enable_lora(spec.lora_rank, spec.lora_alpha)
    return policy


def open_sampler(spec: RunSpec, policy: Policy, algorithm: Algorithm | None = None) -> Sampler:
    """The study's sampler for the policy's objective; with `algorithm`, carrying the per-step noise
    the algorithm declares (`Algorithm.sampler_noise`). The flow SDE is the spec's, else the
    algorithm's own."""
    variant = spec.flow_variant
    if variant is None and policy.objective == "flow":
        variant = ALGORITHMS.get(spec.algorithm).flow_variant
    sampler = make_sampler(
        policy,
        spec.num_steps,
        spec.eta,
        spec.logp_reduce,
        flow_variant=variant or FLOW_VARIANTS[0],
        sde_window=spec.sde_window,
        window_shift=spec.sde_window_shift,
        window_range=spec.sde_window_range,
        window_seed=spec.seed,
    )
    noise = None if algorithm is None else algorithm.sampler_noise(sampler)
    return sampler if noise is None else sampler.with_std(noise)


def open_reward(spec: RunSpec) -> ComposedReward:
    return build_reward(spec.reward, spec.reward_settings)


@dataclass
class OpenRun:
    policy: Policy
    algorithm: Algorithm
    reward: ComposedReward
    sampler: Sampler


def open_run(spec: RunSpec) -> OpenRun:
    """Everything training and the probe need, in the order that fixes the random state: seed,
    policy (+ LoRA), algorithm, reward, sampler (+ the algorithm's noise), the algorithm's set-up,
    and the frozen reference when the loss declares one."""
    policy = open_policy(spec)
    algorithm = open_algorithm(spec)
    reward = open_reward(spec)
    sampler = open_sampler(spec, policy, algorithm)
    algorithm.setup(sampler)
    if algorithm.needs_reference:
        policy.freeze_reference()  # the base weights, before any checkpoint is loaded
    return OpenRun(policy, algorithm, reward, sampler)
