"""The per-step credit rests on one identity: the probe's per-denoising-step gradients sum to the
gradient of the algorithm's whole loss. Checked on a real rollout of a tiny model: the probe's
gradient statistics equal those of the full gradients computed in one backward pass."""

import pytest
import torch

from bench.algorithm import StepBatch
from bench.metrics.gradient_variance import gradient_statistics
from bench.models.policy import Policy
from bench.probe import probe_gradients, probe_prompts
from bench.registry import ALGORITHMS
from bench.reward import build_reward
from bench.rollout import make_sampler, recompute, rollout

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["ddpo_is", "pcpo"])
def test_the_probes_per_step_gradients_sum_to_the_full_gradient(tiny_model, name):
    k, group, guidance, seed = 2, 2, 3.0, 99
    policy = Policy.load(tiny_model)
    sampler = make_sampler(policy, 4, 1.0)
    algorithm = ALGORITHMS.get(name)()
    algorithm.setup(sampler)
    reward = build_reward("jpeg_compressibility")
    prompts = probe_prompts(k, seed)
    probed = probe_gradients(policy, sampler, algorithm, reward, prompts, group, guidance, seed)

    # the same rollout, then each group's loss differentiated in one backward pass
    all_prompts = [p for p in prompts for _ in range(group)]
    group_ids = torch.arange(k).repeat_interleave(group)
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
    advantages = algorithm.advantages(rewards.float(), group_ids, all_prompts).float()
    k_steps = sampler.num_steps - int(algorithm.recipe.drop_last_step)
    params = policy.trainable_parameters()
    full = []
    for g in range(k):
        rows = torch.nonzero(group_ids == g).flatten()
        steps = torch.arange(k_steps).expand(len(rows), k_steps)
        logp, _, _ = recompute(policy, sampler, traj, rows, steps, guidance)
        batch = StepBatch(
            logp=logp,
            logp_old=logp.detach(),
            advantages=advantages[rows],
            rewards=rewards[rows].float(),
            group_ids=group_ids[rows],
            timesteps=sampler.timesteps[steps],
            step_index=steps,
        )
        grads = torch.autograd.grad(algorithm.loss(batch).value, params, allow_unused=True)
        full.append(torch.cat([(torch.zeros_like(p) if d is None else d).reshape(-1) for p, d in zip(params, grads)]))
    expected = gradient_statistics(torch.stack(full))
    assert probed["mean_sq_norm"] == pytest.approx(expected.mean_sq_norm, rel=1e-4)
    assert probed["trace_cov"] == pytest.approx(expected.trace_cov, rel=1e-4)
    assert expected.mean_sq_norm > 0


@pytest.fixture(scope="module")
def tiny_flow_model(tmp_path_factory):
    from bench.models.embedded import EmbeddedSpec
    from bench.world.pretrain import pretrain

    spec = EmbeddedSpec(layers=1, heads=2, head_dim=8, text_width=16, text_layers=1, objective="flow")
    return pretrain(tmp_path_factory.mktemp("models") / "tiny-flow", steps=2, batch_size=4, spec=spec, progress=False)


@pytest.mark.parametrize("module, cls", [("algorithms.flowgrpo", "FlowGRPO"), ("algorithms.grpo_guard", "GRPOGuard")])
def test_the_probe_decomposes_losses_that_read_the_means(tiny_flow_model, module, cls):
    """Flow-GRPO's KL to the reference and GRPO-Guard's RatioNorm read the current transition means
    (and the recorded ones): the probe's per-step terms still sum to the full gradient."""
    import importlib

    from bench.train.steps import reference_terms, step_batch

    k, group, guidance, seed = 2, 2, 3.0, 99
    policy = Policy.load(tiny_flow_model)
    policy.freeze_reference()
    with torch.no_grad():  # move off the reference, so the KL has a gradient
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    sampler = make_sampler(policy, 4, 0.7, flow_variant="flowgrpo")
    algorithm = getattr(importlib.import_module(module), cls)(clip_range=0.2)
    algorithm.setup(sampler)
    reward = build_reward("jpeg_compressibility")
    prompts = probe_prompts(k, seed)
    probed = probe_gradients(policy, sampler, algorithm, reward, prompts, group, guidance, seed)

    all_prompts = [p for p in prompts for _ in range(group)]
    group_ids = torch.arange(k).repeat_interleave(group)
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
    advantages = algorithm.advantages(rewards, group_ids, all_prompts).float()
    k_steps = sampler.num_steps - int(algorithm.recipe.drop_last_step)
    params = policy.trainable_parameters()
    full, kls = [], []
    for g in range(k):
        rows = torch.nonzero(group_ids == g).flatten()
        steps = torch.arange(k_steps).expand(len(rows), k_steps)
        reference = reference_terms(policy, sampler, traj, algorithm, guidance, rows, k_steps)
        current = recompute(policy, sampler, traj, rows, steps, guidance)
        loss = algorithm.loss(step_batch(traj, sampler, rows, steps, current, advantages, rewards, reference))
        kls.append(float(loss.metrics["kl_ref"]))
        grads = torch.autograd.grad(loss.value, params, allow_unused=True)
        full.append(torch.cat([(torch.zeros_like(p) if d is None else d).reshape(-1) for p, d in zip(params, grads)]))
    expected = gradient_statistics(torch.stack(full))
    assert min(kls) > 0
    assert probed["mean_sq_norm"] == pytest.approx(expected.mean_sq_norm, rel=1e-4)
    assert probed["trace_cov"] == pytest.approx(expected.trace_cov, rel=1e-4)
