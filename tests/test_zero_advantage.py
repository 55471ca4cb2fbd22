"""Flow-GRPO's zero-advantage filter (yifan123/flow_grpo scripts/train_sd3.py: `mask =
advantages.abs().sum(dim=1) != 0; samples = samples[mask]`): samples whose advantage is exactly 0
(a prompt group whose rewards are all equal) are left out of the round's updates. The recipe's
`drop_zero_advantage`, on for flowgrpo (and GRPO-Guard, its recipe), off elsewhere."""

from __future__ import annotations

import pytest
import torch

from t2i_rl_bench import advantages as adv
from t2i_rl_bench import factory
from t2i_rl_bench import train as train_mod
from t2i_rl_bench.algorithms.flowgrpo import FlowGRPO
from t2i_rl_bench.algorithms.grpo_guard import GRPOGuard
from t2i_rl_bench.registry import ALGORITHMS
from tests import test_learning as toy
from tests.test_flowgrpo import FlowPointPolicy

torch.set_num_threads(1)


def tied_reward(images, prompts, metadata):
    """The toy's reward, except that every image of the prompt 'tie' scores 0: a tied group."""
    r, info = toy.point_reward(images, prompts, metadata)
    return torch.where(torch.tensor([p == "tie" for p in prompts]), torch.zeros_like(r), r), info


@pytest.fixture
def flow_toy(monkeypatch):
    monkeypatch.setattr(factory, "Policy", FlowPointPolicy)
    toy.REWARDS.register("test_tied_target")(tied_reward)


def _trainer(prompts, **settings):
    cfg = toy.toy_spec(
        "flowgrpo", 1, reward="test_tied_target", prompts=prompts, num_steps=6, eta=0.7, algorithm_settings=settings
    )
    return train_mod.Trainer(cfg, out="unused")


def test_the_recipe_is_flowgrpos_alone():
    assert FlowGRPO.recipe.drop_zero_advantage and GRPOGuard.recipe.drop_zero_advantage
    for name in ("reinforce", "ddpo_is", "dancegrpo", "pcpo", "prdp", "loop"):
        assert not ALGORITHMS.get(name).recipe.drop_zero_advantage, name
    assert not FlowGRPO(drop_zero_advantage=False).recipe.drop_zero_advantage


def test_a_tied_groups_advantage_is_exactly_zero():
    r = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.1, 0.5, 0.2, 0.9])
    a = adv.flowgrpo_group(r, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert (a[:4] == 0).all() and (a[4:] != 0).all()


def _record_parts(trainer):
    parts: list[torch.Tensor] = []
    update = trainer.update

    def record(traj, scored, reference, part, steps, stats):
        parts.append(part.clone())
        return update(traj, scored, reference, part, steps, stats)

    trainer.update = record
    return parts


@pytest.mark.parametrize("drop", [True, False])
def test_the_tied_groups_samples_are_left_out_of_the_updates(flow_toy, drop):
    trainer = _trainer(["tie", "a", "b", "c"], drop_zero_advantage=drop)
    parts = _record_parts(trainer)
    scored_box = {}
    score = trainer.score

    def record_score(traj):
        scored_box["scored"] = score(traj)
        return scored_box["scored"]

    trainer.score = record_score
    line = trainer.round()
    scored = scored_box["scored"]
    zero = torch.nonzero(scored.advantages_all == 0).flatten()
    trained = torch.cat(parts)
    if drop:
        assert len(zero) >= 4 and line["zero_advantage_dropped"] == len(zero)
        assert not set(trained.tolist()) & set(zero.tolist())
        assert sorted(trained.tolist()) == sorted(set(range(16)) - set(zero.tolist()))
    else:
        assert sorted(trained.tolist()) == list(range(16)) and "zero_advantage_dropped" not in line


def test_the_filter_draws_the_same_random_numbers(flow_toy):
    """With and without the filter, the kept samples' order and the next round are the same draws:
    the parts of the filtered round are the unfiltered ones without the tied samples."""
    runs = {}
    for drop in (True, False):
        trainer = _trainer(["tie", "a", "b", "c"], drop_zero_advantage=drop, beta=0.0)
        parts = _record_parts(trainer)
        trainer.round()
        runs[drop] = (parts, trainer.generator.get_state())
    (kept, state_kept), (full, state_full) = runs[True], runs[False]
    order_full = torch.cat(full)
    zero_free = [i for i in order_full.tolist() if i in set(torch.cat(kept).tolist())]
    assert torch.cat(kept).tolist() == zero_free
    assert torch.equal(state_kept, state_full)


def test_a_round_of_ties_takes_no_optimiser_step(flow_toy):
    trainer = _trainer(["tie"])
    before = [p.detach().clone() for p in trainer.params]
    line = trainer.round()
    assert line["optimiser_steps"] == 0 and line["zero_advantage_dropped"] == 16
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.params))
