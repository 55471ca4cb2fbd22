"""The probe builds its step batch as training does (bench.train.steps.step_batch), so it measures
every registered loss, a KL term to the reference included, and its per-step gradients are an
exact decomposition of the loss's gradient."""

import pytest
import torch

from bench.factory import open_algorithm, open_run
from bench.probe import Prober, step_gradients
from bench.rollout import recompute, rollout
from bench.spec import RunSpec
from bench.train.steps import reference_terms, step_batch

PROMPTS = ["a red circle", "two small blue squares on the left"]


def _spec(model, **settings) -> RunSpec:
    return RunSpec(
        model_path=str(model),
        algorithm="dancegrpo",
        reward="jpeg_compressibility",
        seed=5,
        num_steps=3,
        images_per_round=4,
        group_size=2,
        budgets=(4,),
        prompts=tuple(PROMPTS),
        algorithm_settings={"kl_beta": 0.5, **settings},
    )


def _flat(grads, params) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def _probe_and_direct(spec: RunSpec):
    """The probe's per-step gradients of one group, and the gradient of the same loss computed
    directly (every trained step recomputed with autograd, one backward), away from the reference."""
    run = open_run(spec)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the weights off the frozen reference, so the KL term has a gradient
        for p in run.policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    algorithm = open_algorithm(spec)
    algorithm.setup(run.sampler)
    prompts = [PROMPTS[0]] * 4
    group_ids = torch.zeros(4, dtype=torch.long)
    traj = rollout(
        run.policy, run.sampler, prompts, spec.guidance, generator, group_ids, algorithm.recipe.same_noise_per_group
    )
    rewards = torch.tensor([0.3, -0.2, 0.1, -0.4])
    advantages = algorithm.advantages(rewards, group_ids, prompts).float()
    rows = torch.arange(4)
    per_step = step_gradients(run.policy, run.sampler, algorithm, traj, rows, advantages, rewards, spec.guidance)
    k = len(per_step)
    steps = torch.arange(k).expand(4, k)
    reference = reference_terms(run.policy, run.sampler, traj, algorithm, spec.guidance, rows, k)
    current = recompute(run.policy, run.sampler, traj, rows, steps, spec.guidance)
    loss = algorithm.loss(step_batch(traj, run.sampler, rows, steps, current, advantages, rewards, reference))
    params = run.policy.trainable_parameters()
    direct = _flat(torch.autograd.grad(loss.value, params, allow_unused=True), params)
    return per_step, direct, loss


def test_probe_steps_of_a_kl_loss_sum_to_its_gradient(tiny_model):
    per_step, direct, loss = _probe_and_direct(_spec(tiny_model))
    assert len(per_step) == 2  # 3 steps, the last never trained (drop_last_step)
    assert loss.metrics["kl_ref"] > 0
    total = torch.stack(per_step).sum(0)
    assert direct.norm() > 0
    torch.testing.assert_close(total, direct, rtol=1e-4, atol=1e-6 * direct.abs().max().item())
    # the KL term is part of what the probe measures: without it the gradient differs
    plain, _, _ = _probe_and_direct(_spec(tiny_model, kl_beta=0.0))
    assert not torch.allclose(torch.stack(plain).sum(0), total, rtol=1e-3, atol=0)


@pytest.mark.parametrize("algorithm", ["dancegrpo", "prdp"])
def test_the_probe_runs_for_losses_with_reference_terms(tiny_model, algorithm):
    settings = {"kl_beta": 0.1} if algorithm == "dancegrpo" else {}
    spec = _spec(tiny_model).replace(algorithm=algorithm, algorithm_settings=settings)
    row = Prober(spec, {"minibatches": 2, "seed": 3})(0)
    assert row["budget"] == 0 and len(row["credit_share"]) == 3
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("trace_cov", "mean_sq_norm", "credit_gini"))
    assert row["trace_cov"] > 0
