"""The probe builds its step batch as training does (t2i_rl_bench.train.steps.step_batch), so it measures
every registered loss, a KL term to the reference included. Its per-step credit rests on one
identity: the per-denoising-step gradients sum to the gradient of the algorithm's whole loss.
Checked on real rollouts of tiny models, per step (the vector) and through the gradient statistics
(the probe's equal those of full gradients computed in one backward pass)."""

import pytest
import torch

from t2i_rl_bench.factory import open_algorithm, open_run
from t2i_rl_bench.metrics.gradient_variance import gradient_statistics
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.probe import (
    ALL_TIED,
    Prober,
    _off_policy_parts,
    probe_gradients,
    probe_prompts,
    probe_rollout,
    step_gradients,
)
from t2i_rl_bench.registry import ALGORITHMS
from t2i_rl_bench.reward import build_reward
from t2i_rl_bench.rollout import make_sampler, recompute, rollout
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train.steps import reference_terms, step_batch

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


def _move_off_reference(policy: Policy, generator: torch.Generator) -> None:
    """Perturb the trainable weights, so a KL term to the frozen reference has a gradient."""
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def _direct_loss(policy, sampler, algorithm, traj, rows, advantages, rewards, guidance, k_steps):
    """The loss of samples `rows` over their first k_steps steps, every step recomputed with
    autograd (one backward gives the full gradient, no per-step split)."""
    steps = torch.arange(k_steps).expand(len(rows), k_steps)
    reference = reference_terms(policy, sampler, traj, algorithm, guidance, rows, k_steps)
    current = recompute(policy, sampler, traj, rows, steps, guidance)
    return algorithm.loss(step_batch(traj, sampler, rows, steps, current, advantages, rewards, reference))


def _probe_and_direct(spec: RunSpec):
    """The probe's per-step gradients of one group, and the gradient of the same loss computed
    directly, away from the reference."""
    run = open_run(spec)
    generator = torch.Generator().manual_seed(0)
    _move_off_reference(run.policy, generator)
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
    policy, sampler, guidance = run.policy, run.sampler, spec.guidance
    per_step = step_gradients(policy, sampler, algorithm, traj, rows, advantages, rewards, guidance)
    loss = _direct_loss(policy, sampler, algorithm, traj, rows, advantages, rewards, guidance, len(per_step))
    params = policy.trainable_parameters()
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


# (model fixture, algorithm, its settings, sampler eta and flow variant, has a KL to the reference):
# plain losses on the epsilon model; on the flow model, Flow-GRPO's KL to the reference and
# GRPO-Guard's RatioNorm, which read the current transition means (and the recorded ones)
CASES = [
    ("tiny_model", "ddpo_is", {}, 1.0, {}, False),
    ("tiny_model", "pcpo", {}, 1.0, {}, False),
    ("tiny_flow_model", "flowgrpo", {"clip_range": 0.2}, 0.7, {"flow_variant": "flowgrpo"}, True),
    ("tiny_flow_model", "grpo_guard", {"clip_range": 0.2, "beta": 0.04}, 0.7, {"flow_variant": "flowgrpo"}, True),
]


@pytest.mark.parametrize("model, name, settings, eta, variant, kl", CASES, ids=[c[1] for c in CASES])
def test_the_probes_statistics_equal_those_of_the_full_gradients(request, model, name, settings, eta, variant, kl):
    k, group, guidance, seed = 2, 2, 3.0, 99
    policy = Policy.load(request.getfixturevalue(model))
    if kl:
        policy.freeze_reference()
        _move_off_reference(policy, torch.Generator().manual_seed(1))
    sampler = make_sampler(policy, 4, eta, **variant)
    algorithm = ALGORITHMS.get(name)(**settings)
    algorithm.setup(sampler)
    reward = build_reward("jpeg_compressibility")
    prompts = probe_prompts(k, seed)
    probed = probe_gradients(policy, sampler, algorithm, reward, prompts, group, guidance, seed)

    # the same rollout, then each group's loss differentiated in one backward pass (not per step)
    traj, group_ids, rewards, advantages = probe_rollout(
        policy, sampler, algorithm, reward, prompts, group, guidance, seed
    )
    k_steps = sampler.num_steps - int(algorithm.recipe.drop_last_step)
    params = policy.trainable_parameters()
    full, kls = [], []
    for g in range(k):
        rows = torch.nonzero(group_ids == g).flatten()
        loss = _direct_loss(policy, sampler, algorithm, traj, rows, advantages, rewards, guidance, k_steps)
        if kl:
            kls.append(float(loss.metrics["kl_ref"]))
        full.append(_flat(torch.autograd.grad(loss.value, params, allow_unused=True), params))
    expected = gradient_statistics(torch.stack(full))
    if kl:
        assert min(kls) > 0
    assert probed["mean_sq_norm"] == pytest.approx(expected.mean_sq_norm, rel=1e-4)
    assert probed["trace_cov"] == pytest.approx(expected.trace_cov, rel=1e-4)
    assert expected.mean_sq_norm > 0


@pytest.mark.parametrize("algorithm", ["dancegrpo", "prdp"])
def test_the_probe_runs_for_losses_with_reference_terms(tiny_model, algorithm):
    settings = {"kl_beta": 0.1} if algorithm == "dancegrpo" else {}
    spec = _spec(tiny_model).replace(algorithm=algorithm, algorithm_settings=settings)
    row = Prober(spec, {"minibatches": 2, "seed": 3})(0)
    assert row["budget"] == 0 and len(row["credit_share"]) == 3
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("trace_cov", "mean_sq_norm", "credit_gini"))
    assert row["trace_cov"] > 0


def test_the_probe_reports_projected_per_step_and_off_policy_statistics(tiny_model):
    """K = 6 groups (three per half): the cross-fitted projected SNR with an interval around it,
    the per-step lists on the sampler's step index (None where no step is trained), and for a
    method with 4 updates per round the off-policy probe after updates 1-3: ratios move off 1
    (ESS <= 1, |log r| > 0), the loss's clip mask is counted, and the weights are restored."""
    spec = _spec(tiny_model).replace(
        algorithm="ddpo_is",
        algorithm_settings={"clip_range": 1e-4, "drop_last_step": True},
        lr=1e-3,
        images_per_round=12,  # a training round of 6 groups: the probe's 6 groups are one round
        budgets=(12,),
    )
    prober = Prober(spec, {"minibatches": 6, "seed": 3, "off_policy_minibatches": 6})
    before = [p.detach().clone() for p in prober.policy.trainable_parameters()]
    row = prober(0)
    after = prober.policy.trainable_parameters()
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert row["proj_snr_low"] <= row["proj_snr"] <= row["proj_snr_high"]
    assert row["noise_scale"] is None or row["noise_scale"] > 0
    assert len(row["step_proj_snr"]) == 3 and row["step_proj_snr"][2] is None  # the last step: never trained
    assert sum(v for v in row["step_var_share"] if v is not None) == pytest.approx(1.0)
    assert row["updates_per_round"] == 4
    for u in (1, 2, 3):
        assert 0 < row[f"update{u}/ess"] <= 1 and row[f"update{u}/log_ratio_abs"] > 0
        assert 0 <= row[f"update{u}/clip_fraction"] <= 1
        assert row[f"update{u}/proj_snr_low"] <= row[f"update{u}/proj_snr_high"]
    assert row["update3/clip_fraction"] > 0  # at clip range 1e-4, lr 1e-3 moves ratios past the clip
    assert "update4/ess" not in row and "update0/ess" not in row


def test_the_off_policy_round_is_a_training_rounds_groups():
    """A probe of 6 groups of 2 with training rounds of 8 images (4 groups) and 2 updates per round
    over 2 epochs: the updates take the first 4 groups, halved, as training splits its round; a
    probe smaller than a round updates on all of its groups."""
    group_ids = torch.arange(6).repeat_interleave(2)
    parts = _off_policy_parts(group_ids, 2, 2, 8 // 2)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    small = _off_policy_parts(torch.arange(3).repeat_interleave(2), 2, 1, 4)
    assert [p.tolist() for p in small] == [[0, 1, 2, 3], [4, 5]]


def test_each_run_seed_probes_its_own_draw_only_when_asked(tiny_model):
    """On the same weights (full fine-tuning: the seed does not change the base model), two run
    seeds give the same probe row at a budget when the draw is shared (probe.seed, the default),
    and different rows with per_seed_draw; the base model's row (budget 0) stays on
    probe.seed either way, and the methods of one seed share their draw."""
    from t2i_rl_bench.probe import draw_seed

    shared = {"minibatches": 6, "seed": 3}
    own = {**shared, "per_seed_draw": True}
    assert draw_seed(shared, 0, 4) == draw_seed(shared, 1, 4) == 3
    assert draw_seed(own, 0, 0) == draw_seed(own, 1, 0) == 3
    assert len({draw_seed(own, s, 4) for s in range(8)}) == 8 and 3 not in {draw_seed(own, s, 4) for s in range(8)}
    spec = _spec(tiny_model).replace(algorithm="ddpo_is", algorithm_settings={"drop_last_step": True})
    rows = {
        (name, seed): Prober(spec.replace(seed=seed), probe)(4)
        for name, probe in (("shared", shared), ("own", own))
        for seed in (0, 1)
    }
    assert rows[("shared", 0)]["snr_unbiased"] == rows[("shared", 1)]["snr_unbiased"]
    assert rows[("own", 0)]["snr_unbiased"] != rows[("own", 1)]["snr_unbiased"]
    assert Prober(spec.replace(seed=0), own)(0)["snr_unbiased"] == Prober(spec.replace(seed=1), own)(0)["snr_unbiased"]


def _constant_reward(images, prompts, metadata=None):
    return torch.full((images.shape[0],), 0.5), {}


@pytest.mark.parametrize("name", ["dancegrpo", "pcpo"])
def test_a_checkpoint_whose_groups_all_tie_gets_a_row_that_says_so(tiny_flow_model, name):
    """Every probed group tied (the reward is constant): every advantage and probe gradient is zero. The probe
    returns the zero norms and no SNR or credit share, with the note, instead of failing the assess job (as a
    DanceGRPO run at eta 0.3 on the discrete attribute_match did on one replication seed)."""
    policy = Policy.load(tiny_flow_model)
    sampler = make_sampler(policy, 4, 0.3, flow_variant="dancegrpo" if name == "dancegrpo" else "flowgrpo")
    algorithm = ALGORITHMS.get(name)()
    algorithm.setup(sampler)
    row = probe_gradients(policy, sampler, algorithm, _constant_reward, probe_prompts(3, 7), 2, 1.0, 7)
    assert row["credit_note"] == ALL_TIED and "credit_share" not in row and "credit_gini" not in row
    assert row["mean_sq_norm"] == 0.0 and row["trace_cov"] == 0.0
    assert row["snr"] is None and row["snr_unbiased"] is None and row["proj_snr"] is None
    assert row["reward_mean"] == pytest.approx(0.5)
