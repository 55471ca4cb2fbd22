"""Micro-batches of a loss that couples a prompt group's samples (`Algorithm.whole_groups`): they
hold whole groups, at most `micro_batch` samples but at least one group, and each is weighted by
its share of the optimiser step's loss terms (`Algorithm.loss_terms`: PRDP's reward pairs), so the
accumulated gradient equals the one of the whole step in one forward and backward."""

import pytest
import torch

from t2i_rl_bench.algorithm import Algorithm, Loss, StepBatch
from t2i_rl_bench.algorithms.prdp import PRDP
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer
from t2i_rl_bench.train.loop import Scored, whole_group_batches
from t2i_rl_bench.train.stats import RoundStats

PROMPTS = ["a red circle on the left", "a blue square", "two green triangles", "a small red square on the top"]
GROUP = 4
# four groups of four with ties, so their pair counts differ (6, 3, 0, 5): weights by samples
# would be wrong for PRDP
REWARDS = torch.tensor([1.0, 2, 3, 4, 1, 1, 1, 2, 5, 5, 5, 5, 0, 1, 1, 3])


def test_whole_group_batches_never_split_a_group():
    group_ids = torch.tensor([2, 2, 2, 0, 0, 0, 5, 5, 5, 1, 1, 1])
    for size in (1, 2, 3, 5, 6, 7, 12, 100):
        batches = whole_group_batches(group_ids, size)
        assert torch.equal(torch.cat(batches), torch.arange(len(group_ids)))  # every position once, in order
        for b in batches:
            ids = group_ids[b]
            assert len(b) <= max(size, 3)  # at most `size` samples, at least one whole group
            for g in ids.unique():
                assert int((ids == g).sum()) == 3  # the group's every member
        assert len(batches) == 4 // max(1, size // 3) + bool(4 % max(1, size // 3))
    # groups that are not contiguous are gathered in order of first appearance
    mixed = whole_group_batches(torch.tensor([0, 1, 0, 1, 2, 2]), 4)
    assert [b.tolist() for b in mixed] == [[0, 2, 1, 3], [4, 5]]


def _spec(model: str, algorithm: str, micro_batch: int) -> RunSpec:
    return RunSpec(
        model_path=model,
        algorithm=algorithm,
        reward="jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=3,
        images_per_round=16,
        group_size=GROUP,
        micro_batch=micro_batch,
        budgets=[16],
        max_grad_norm=1e9,  # the raw accumulated gradient is compared, unclipped
        reuse_sampling_graph=False,
        algorithm_settings={"inner_epochs": 1} if algorithm == "prdp" else {},
    )


def _step_gradient(model: str, algorithm: str, micro_batch: int, swap: Algorithm | None = None):
    """The gradient of a round's one optimiser step on fixed rewards (REWARDS), the group ids of
    each micro-batch and their weights."""
    trainer = Trainer(_spec(model, algorithm, micro_batch), "unused-run-folder")  # nothing is written
    if swap is not None:
        trainer.algorithm = swap
    traj = trainer.sample_round()
    assert torch.equal(traj.group_ids, torch.arange(4).repeat_interleave(GROUP))
    advantages = (REWARDS - REWARDS.mean()) / REWARDS.std()
    scored = Scored(REWARDS, traj.group_ids, advantages, slice(0, 16), {})
    seen: list[tuple[torch.Tensor, float]] = []
    grads: list[torch.Tensor] = []
    step = trainer.optimiser_step

    def spy(batches, stats):
        items = list(batches)
        seen.extend((b.group_ids.clone(), w) for b, w in items)
        return step(iter(items), stats)

    trainer.optimiser_step = spy  # type: ignore[method-assign]
    trainer.optimiser.step = lambda: grads.append(torch.cat([p.grad.flatten() for p in trainer.params]))  # type: ignore[method-assign]
    trainer.policy.denoiser.train()
    trainer.train_steps(traj, scored, RoundStats(trainer.sampler.num_steps))
    assert len(grads) == 1
    return grads[0], seen


def _check_whole_groups(seen, micro_batch: int):
    groups_seen = [g for ids, _ in seen for g in ids.unique().tolist()]
    assert sorted(groups_seen) == [0, 1, 2, 3]  # every group in exactly one micro-batch
    for ids, _ in seen:
        assert len(ids) <= max(micro_batch, GROUP)
        assert all(int((ids == g).sum()) == GROUP for g in ids.unique())


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("micro_batch", [1, 4, 6, 8, 12])
def test_prdp_micro_batches_accumulate_the_whole_step_gradient(tiny_model, micro_batch):
    full, seen_full = _step_gradient(str(tiny_model), "prdp", 16)
    assert len(seen_full) == 1 and seen_full[0][1] == 1.0  # the round in one pass, as before
    parts, seen = _step_gradient(str(tiny_model), "prdp", micro_batch)
    assert len(seen) == len(whole_group_batches(torch.arange(4).repeat_interleave(GROUP), micro_batch)) > 1
    _check_whole_groups(seen, micro_batch)
    pairs = {0: 6, 1: 3, 2: 0, 3: 5}
    for ids, weight in seen:  # each micro-batch's share of the 14 pairs
        assert weight == pytest.approx(sum(pairs[g] for g in ids.unique().tolist()) / 14)
    assert full.norm() > 0
    assert _relative(parts, full) < 5e-6  # float32 rounding: ~8e-7 measured; weights by samples: 0.3


def test_prdp_weighted_by_samples_would_be_wrong(tiny_model, monkeypatch):
    """The test above can fail: weighting PRDP's micro-batches by their samples (the default
    terms) instead of their pairs moves the gradient well beyond rounding."""
    full, _ = _step_gradient(str(tiny_model), "prdp", 16)
    monkeypatch.setattr(PRDP, "loss_terms", Algorithm.loss_terms)
    parts, _ = _step_gradient(str(tiny_model), "prdp", 4)
    assert _relative(parts, full) > 1e-2


class GroupBaseline(Algorithm):
    """A toy whole-groups loss: REINFORCE with the group's mean reward as baseline, computed in
    the loss from `batch.rewards`, a mean over the batch's (sample, step) elements (the default
    `loss_terms`)."""

    whole_groups = True

    def loss(self, batch: StepBatch) -> Loss:
        same = (batch.group_ids[:, None] == batch.group_ids[None, :]).float()
        baseline = same @ batch.rewards / same.sum(1)
        return Loss((-(batch.rewards - baseline)[:, None] * batch.logp).mean())


@pytest.mark.parametrize("micro_batch", [4, 8, 12])
def test_a_group_baseline_loss_accumulates_the_whole_step_gradient(tiny_model, micro_batch):
    full, _ = _step_gradient(str(tiny_model), "reinforce", 16, GroupBaseline())
    parts, seen = _step_gradient(str(tiny_model), "reinforce", micro_batch, GroupBaseline())
    _check_whole_groups(seen, micro_batch)
    assert [w for _, w in seen] == pytest.approx([len(ids) / 16 for ids, _ in seen])
    assert full.norm() > 0
    assert _relative(parts, full) < 5e-6  # float32 rounding: ~8e-7 measured
