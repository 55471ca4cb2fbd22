"""The reused sampling graph bounded to k samples of the round (RunSpec.reuse_graph_samples,
docs/performance.md#the-reused-graph-bounded): the graph holds the first k samples only, the
others are recomputed in micro-batches of at most k, and the round's gradient equals the
recomputing round's on the same trajectory to float rounding, for k = 0, a middle value and all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2i_rl_bench.models.latent import LatentPolicy
from t2i_rl_bench.rollout import recompute
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer
from t2i_rl_bench.train import loop as train_loop
from tests.benchmarks.tiny_sd import TinySDSpec, build_tiny_sd

PROMPTS = ["a red cat", "a blue dog", "a green tree", "an old clock"]
N = 8  # images per round


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny") / "sd", TinySDSpec(latent_size=8))


def _spec(model, algorithm: str, reuse: bool, bound: int | None, **settings) -> RunSpec:
    return RunSpec(
        model_path=str(model),
        algorithm=algorithm,
        reward="jpeg_compressibility",
        seed=1,
        algorithm_settings=settings,
        prompts=PROMPTS,
        num_steps=3,
        guidance=4.0,
        images_per_round=N if algorithm != "prdp" else 6,
        group_size=2 if algorithm != "prdp" else 3,
        budgets=[N if algorithm != "prdp" else 6],
        reuse_sampling_graph=reuse,
        reuse_graph_samples=bound,
    )


def _relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.pow(2).sum()) for y in b) ** 0.5


def _round(spec: RunSpec, out, monkeypatch, traj_from: dict | None = None) -> dict:
    """One round; what it sampled (its graph's size), the sample counts of its recomputed
    micro-batches and its gradient. traj_from: train on that round's trajectory (without its
    graph) instead of the one sampled, the same random numbers drawn."""
    trainer = Trainer(spec, out)
    seen: dict = {"recomputed": []}
    sample_round, step = trainer.sample_round, trainer.optimiser.step

    def keep_traj():
        traj = sample_round()
        if traj_from is not None:
            traj = traj_from["copy"]
        seen["traj"], seen["held"] = traj, (None if traj.graph is None else traj.graph.samples)
        graph, traj.graph = traj.graph, None
        seen["copy"] = type(traj)(**vars(traj))  # the same tensors, no graph
        traj.graph = graph
        return traj

    def counting_recompute(policy, sampler, traj, samples, steps, *a, **k):
        seen["recomputed"].append(len(samples))
        return recompute(policy, sampler, traj, samples, steps, *a, **k)

    def keep_grad(*a, **k):
        seen["grad"] = [p.grad.detach().clone() for p in trainer.params]
        return step(*a, **k)

    monkeypatch.setattr(train_loop, "recompute", counting_recompute)
    trainer.sample_round, trainer.optimiser.step = keep_traj, keep_grad
    seen["line"] = trainer.round()
    seen["trainer"] = trainer
    return seen


@pytest.mark.parametrize("bound", [0, 3, N])
def test_bounded_graph_gradient_equals_recompute_sd(tiny_sd, tmp_path, monkeypatch, bound):
    """Stable Diffusion (the family whose default is bounded), REINFORCE's one update per round."""
    bounded = _round(_spec(tiny_sd, "reinforce", True, bound), tmp_path / "bounded", monkeypatch)
    plain = _round(_spec(tiny_sd, "reinforce", False, None), tmp_path / "plain", monkeypatch, traj_from=bounded)
    assert bounded["trainer"].reuse_graph is (bound > 0) and not plain["trainer"].reuse_graph
    held = bounded["held"]
    if bound == 0:
        assert held is None and bounded["recomputed"] == [N]  # no graph: recomputed as before, one micro-batch
    else:
        assert held == min(bound, N)
        # the graph holds k samples; every recomputed micro-batch has at most k
        assert sum(bounded["recomputed"]) == N - held and all(n <= held for n in bounded["recomputed"])
        assert bounded["traj"].graph is None  # handed to the update, then let go
    assert plain["recomputed"] == [N]
    # 2e-5: fp32 rounding of differently batched forwards and of the gradient's sums (measured
    # ~1e-6); a different update (another guidance scale) is ~1e-1 away
    assert sum(float(g.abs().sum()) for g in plain["grad"]) > 0
    assert _relative(bounded["grad"], plain["grad"]) < 2e-5
    if bound in (0, N):  # one forward over the round, with or without autograd: the same samples
        fresh = _round(_spec(tiny_sd, "reinforce", False, None), tmp_path / "fresh", monkeypatch)
        assert torch.equal(bounded["traj"].latents, fresh["traj"].latents)
    else:  # the held samples' forward apart from the rest's: the same samples to float rounding
        fresh = _round(_spec(tiny_sd, "reinforce", False, None), tmp_path / "fresh", monkeypatch)
        torch.testing.assert_close(bounded["traj"].latents, fresh["traj"].latents, rtol=1e-4, atol=1e-4)


def test_bounded_graph_keeps_whole_groups_for_a_paired_loss(tiny_flow_model, tmp_path, monkeypatch):
    """PRDP pairs a group's members: the graph keeps whole groups (a bound of 4 holds the first
    group of 3), the recomputed micro-batches are whole groups too, and the gradient is the
    recomputing round's to float rounding (the embedded model, the last step dropped)."""
    settings = {"inner_epochs": 1, "drop_last_step": True}
    bounded = _round(_spec(tiny_flow_model, "prdp", True, 4, **settings), tmp_path / "b", monkeypatch)
    plain = _round(_spec(tiny_flow_model, "prdp", False, None, **settings), tmp_path / "p", monkeypatch, bounded)
    assert bounded["trainer"].reuse_graph and bounded["held"] == 3
    assert bounded["recomputed"] == [3]
    assert _relative(bounded["grad"], plain["grad"]) < 1e-5


def test_graph_bound_defaults_and_validation(tiny_sd, tiny_model, tmp_path):
    sd = Trainer(_spec(tiny_sd, "reinforce", None, None), tmp_path / "sd")
    assert isinstance(sd.policy, LatentPolicy) and sd.reuse_graph
    assert sd.graph_bound == train_loop.LATENT_GRAPH_SAMPLES
    embedded = Trainer(_spec(tiny_model, "reinforce", None, None), tmp_path / "embedded")
    assert not embedded.reuse_graph and embedded.graph_bound is None  # as before: no reuse, no bound
    asked = Trainer(_spec(tiny_model, "reinforce", True, None), tmp_path / "asked")
    assert asked.reuse_graph and asked.graph_bound is None  # asked for on the embedded model: the whole round
    assert "reuse_graph_samples" not in sd.spec.to_dict()  # unset: the run specs of earlier studies unchanged
    for bad in (-1, True, 2.5, "8"):
        with pytest.raises(ValueError, match="reuse_graph_samples"):
            train_loop.graph_sample_bound(_spec(tiny_sd, "reinforce", None, bad), sd.policy)  # type: ignore[arg-type]
    traj = Trainer(_spec(tiny_sd, "reinforce", True, 3), tmp_path / "three").sample_round()
    assert traj.graph is not None and traj.graph.samples == 3 and traj.graph.means.shape[0] == 3
    with pytest.raises(ValueError, match="holds samples"):
        traj.graph.select(torch.tensor([3]), torch.tensor([[0]]))


def test_the_bound_is_a_config_key_checked_before_any_job():
    import yaml

    from t2i_rl_bench import study

    root = Path(__file__).resolve().parent.parent
    cfg = yaml.safe_load((root / "config" / "quick.yaml").read_text())
    cfg["train"] = {**cfg.get("train", {}), "reuse_graph_samples": 4}
    valid = study.validate(cfg)
    assert study.run_spec(valid, study.runs(valid)[0]).reuse_graph_samples == 4
    for bad in (-1, 2.5, True):
        cfg["train"]["reuse_graph_samples"] = bad
        with pytest.raises(study.ConfigError, match=r"train\.reuse_graph_samples"):
            study.validate(cfg)
