"""The sampling graph reused for training on the embedded model (docs/performance.md#the-sampling-graph-reused):
with the last step dropped (the default study's protocol) the graph holds the trained steps only,
its log-probs and means are the recomputed ones bit for bit, and a round's gradient and weights
equal the recomputing round's to float rounding (only the order of the gradient's sums differs)."""

from __future__ import annotations

import pytest
import torch

from t2i_rl_bench.rollout import recompute
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer

PROMPTS = ["a red circle on the left", "two small blue squares", "a green triangle"]


def _spec(model, algorithm: str, reuse: bool, **settings) -> RunSpec:
    return RunSpec(
        model_path=str(model),
        algorithm=algorithm,
        reward="jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=4,
        eta=0.7,
        guidance=3.0,
        images_per_round=6,
        group_size=3,
        budgets=[6],
        lr=1e-3,
        seed=3,
        algorithm_settings={"drop_last_step": True, **settings},
        reuse_sampling_graph=reuse,
    )


def _round(model, tmp_path, algorithm: str, reuse: bool, **settings):
    trainer = Trainer(_spec(model, algorithm, reuse, **settings), tmp_path / f"{algorithm}-{reuse}")
    seen: dict = {"before": [p.detach().clone() for p in trainer.params]}
    sample_round, step = trainer.sample_round, trainer.optimiser.step

    def keep_traj():
        seen["traj"] = sample_round()
        if reuse:  # the graph's terms against a recompute at the sampling weights, before training
            traj, graph = seen["traj"], seen["traj"].graph
            samples = torch.arange(len(traj))
            cols = graph.steps.expand(len(traj), -1)
            with torch.no_grad():
                seen["recomputed"] = recompute(trainer.policy, trainer.sampler, traj, samples, cols, 3.0)
            seen["graph"] = [t.detach() for t in graph.select(samples, cols)]
        return seen["traj"]

    def keep_grad(*a, **k):
        seen["grad"] = [p.grad.detach().clone() for p in trainer.params]
        return step(*a, **k)

    trainer.sample_round, trainer.optimiser.step = keep_traj, keep_grad
    line = trainer.round()
    seen["after"] = [p.detach().clone() for p in trainer.params]
    return trainer, line, seen


def _relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.pow(2).sum()) for y in b) ** 0.5


@pytest.mark.parametrize("algorithm", ["reinforce", "prdp"])
def test_reused_graph_round_equals_recomputed_round(tiny_flow_model, tmp_path, algorithm):
    settings = {"inner_epochs": 1} if algorithm == "prdp" else {}
    on, line_on, a = _round(tiny_flow_model, tmp_path, algorithm, True, **settings)
    off, line_off, b = _round(tiny_flow_model, tmp_path, algorithm, False, **settings)
    assert on.reuse_graph and not off.reuse_graph
    # the graph holds the trained steps (the last one dropped), nothing else
    assert a["traj"].graph is None  # handed to the round's update, then let go
    assert torch.equal(a["recomputed"][0], a["graph"][0]) and torch.equal(a["recomputed"][1], a["graph"][1])
    # sampling with autograd on changes no sample
    for name in ("latents", "logp", "means"):
        assert torch.equal(getattr(a["traj"], name), getattr(b["traj"], name)), name
    assert line_on["reward_mean"] == line_off["reward_mean"] and line_on["loss"] == pytest.approx(
        line_off["loss"], rel=1e-5
    )
    assert sum(float(g.abs().sum()) for g in b["grad"]) > 0
    assert _relative(a["grad"], b["grad"]) < 1e-5  # fp32 rounding of the gradient's sums
    # Adam's first step is lr g / (|g| + eps): compared where |g| >> eps (elsewhere it amplifies rounding)
    kept = [g.abs() > 1e-6 for g in b["grad"]]
    updates = [[(x - w)[m] for x, w, m in zip(s["after"], s["before"], kept)] for s in (a, b)]
    assert _relative(*updates) < 1e-4


def test_graph_select_refuses_a_step_it_does_not_hold(tiny_flow_model, tmp_path):
    trainer = Trainer(_spec(tiny_flow_model, "reinforce", True), tmp_path / "run")
    traj = trainer.sample_round()
    assert traj.graph is not None and traj.graph.steps.tolist() == [0, 1, 2]  # 4 steps, the last dropped
    with pytest.raises(ValueError, match="holds steps"):
        traj.graph.select(torch.tensor([0]), torch.tensor([[3]]))
