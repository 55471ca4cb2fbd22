"""The harness's DDPO-IS update on a tiny Stable Diffusion pipeline equals a straightforward,
independently written one (tests/benchmarks/plain_ddpo.py): the same sampling-time log-probs,
advantages, clipped gradient and weights after the optimiser step, with the sampling graph reused
for the backward (the speed path) and with the log-probs recomputed (the fallback)."""

from __future__ import annotations

import pytest
import torch

from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer
from tests.benchmarks.plain_ddpo import PlainDDPO, PlainSettings
from tests.benchmarks.tiny_sd import TinySDSpec, build_tiny_sd

STEPS, GUIDANCE = 4, 5.0


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny") / "sd", TinySDSpec(latent_size=8))


def _relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.pow(2).sum()) for y in b) ** 0.5


def _harness_round(folder, tmp_path, reuse: bool):
    cfg = RunSpec(
        model_path=str(folder),
        algorithm="ddpo_is",
        reward="jpeg_compressibility",
        seed=0,
        algorithm_settings={"updates_per_round": 1},
        prompts=["a red cat", "a blue dog"],
        num_steps=STEPS,
        guidance=GUIDANCE,
        images_per_round=4,
        group_size=2,
        budgets=[4],
        reuse_sampling_graph=reuse,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    seen: dict = {"before": [p.detach().clone() for p in trainer.params]}
    sample_round, advantages, step = trainer.sample_round, trainer.algorithm.advantages, trainer.optimiser.step

    def keep_traj():
        seen["traj"] = sample_round()
        return seen["traj"]

    def keep_adv(*a):
        seen["adv"] = advantages(*a)
        return seen["adv"]

    def keep_grad(*a, **k):
        seen["grad"] = [p.grad.detach().clone() for p in trainer.params]
        return step(*a, **k)

    trainer.sample_round, trainer.algorithm.advantages, trainer.optimiser.step = keep_traj, keep_adv, keep_grad
    trainer.round()
    seen["after"] = [p.detach().clone() for p in trainer.params]
    return trainer, seen


@pytest.mark.parametrize("reuse", [True, False])
def test_harness_update_equals_plain_loop(tiny_sd, tmp_path, reuse):
    torch.manual_seed(0)
    trainer, seen = _harness_round(tiny_sd, tmp_path, reuse)
    assert trainer.reuse_graph is reuse
    traj = seen["traj"]

    plain = PlainDDPO(tiny_sd, PlainSettings(num_steps=STEPS, guidance=GUIDANCE))
    assert torch.equal(plain.timesteps, trainer.sampler.timesteps)
    params = list(plain.unet.parameters())
    assert all(torch.equal(p, q) for p, q in zip(params, seen["before"]))

    adv = plain.advantages(plain.reward(traj.x0), traj.prompts)
    torch.testing.assert_close(seen["adv"], adv, rtol=1e-5, atol=1e-5)

    plain.optimiser.zero_grad(set_to_none=True)
    deviations = plain.accumulate_gradient(traj.prompts, traj.latents, traj.logp, adv)
    assert max(deviations) < 1e-5, "the harness's sampling-time log-probs differ from DDIM's eq. (12)/(16)"
    torch.nn.utils.clip_grad_norm_(params, plain.s.max_grad_norm)
    plain_grad = [p.grad.detach().clone() for p in params]
    assert sum(float(g.abs().sum()) for g in plain_grad) > 0
    # fp32 rounding of differently batched forwards: about 1e-6 (reuse) to 1.3e-5 (recompute) here
    assert _relative(seen["grad"], plain_grad) < 3e-5

    plain.optimiser.step()
    # Adam's first step is lr g / (|g| + eps): where |g| is near eps it amplifies rounding noise of
    # gradients that are zero in exact arithmetic, so the weights are compared where |g| >> eps
    kept = [g.abs() > 1e-6 for g in plain_grad]
    assert (
        _relative(
            [(a - b)[m] for a, b, m in zip(seen["after"], seen["before"], kept)],
            [(p.detach() - b)[m] for p, b, m in zip(params, seen["before"], kept)],
        )
        < 3e-5
    )

    # the tolerance tells a different update apart: the gradient at another guidance scale
    other = PlainDDPO(tiny_sd, PlainSettings(num_steps=STEPS, guidance=GUIDANCE - 1))
    other.accumulate_gradient(traj.prompts, traj.latents, traj.logp, adv)
    torch.nn.utils.clip_grad_norm_(other.unet.parameters(), 1.0)
    assert _relative([p.grad for p in other.unet.parameters()], plain_grad) > 1e-3


def test_graph_reuse_falls_back_when_weights_change(tiny_sd, tmp_path):
    """Several updates per round: after the first the weights differ from sampling, so no reuse."""
    cfg = RunSpec(
        model_path=str(tiny_sd),
        algorithm="ddpo_is",
        reward="jpeg_compressibility",
        seed=0,
        algorithm_settings={"updates_per_round": 2},
        prompts=["a red cat"],
        num_steps=2,
        images_per_round=4,
        group_size=2,
        budgets=[4],
        reuse_sampling_graph=True,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    assert not trainer.reuse_graph
    assert trainer.round()["optimiser_steps"] == 2
