"""DiffusionNFT (algorithms/diffusionnft.py) and the forward-process family's batch
(bench/train/forward.py): conformance to the official training step on random inputs, the
old policy's schedule, and learning on the flow toy of test_flowgrpo.py."""

from __future__ import annotations

import pytest
import torch

from t2i_rl_bench import factory
from t2i_rl_bench import train as train_mod
from t2i_rl_bench.algorithm import ForwardBatch
from t2i_rl_bench.algorithms.diffusionnft import DiffusionNFT
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train.forward import OldPolicy, forward_batch
from tests import test_flowgrpo as flow_toy
from tests import test_learning as toy

torch.set_num_threads(1)


def official_step_loss(x0, xt, t, forward_prediction, old_prediction, ref_forward_prediction, advantages, cfg):
    """NVlabs/DiffusionNFT scripts/train_nft_sd3.py, lines 910-970 (one trained timestep j of a
    micro-batch), re-written with its names; cfg holds config.beta, config.train.beta,
    config.train.adv_clip_max and config.train.adv_mode."""
    t_expanded = t.view(-1, *([1] * (len(x0.shape) - 1)))
    advantages_clip = torch.clamp(advantages, -cfg["adv_clip_max"], cfg["adv_clip_max"])
    if cfg["adv_mode"] == "positive_only":
        advantages_clip = torch.clamp(advantages_clip, 0, cfg["adv_clip_max"])
    elif cfg["adv_mode"] == "negative_only":
        advantages_clip = torch.clamp(advantages_clip, -cfg["adv_clip_max"], 0)
    elif cfg["adv_mode"] == "one_only":
        advantages_clip = torch.where(
            advantages_clip > 0, torch.ones_like(advantages_clip), torch.zeros_like(advantages_clip)
        )
    elif cfg["adv_mode"] == "binary":
        advantages_clip = torch.sign(advantages_clip)
    normalized_advantages_clip = (advantages_clip / cfg["adv_clip_max"]) / 2.0 + 0.5
    r = torch.clamp(normalized_advantages_clip, 0, 1)
    positive_prediction = cfg["beta"] * forward_prediction + (1 - cfg["beta"]) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + cfg["beta"]) * old_prediction.detach() - cfg["beta"] * forward_prediction
    x0_prediction = xt - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = (
            torch.abs(x0_prediction.double() - x0.double())
            .mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
            .clip(min=0.00001)
        )
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = xt - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = (
            torch.abs(negative_x0_prediction.double() - x0.double())
            .mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
            .clip(min=0.00001)
        )
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    ori_policy_loss = r * positive_loss / cfg["beta"] + (1.0 - r) * negative_loss / cfg["beta"]
    policy_loss = (ori_policy_loss * cfg["adv_clip_max"]).mean()
    loss = policy_loss
    kl_div_loss = ((forward_prediction - ref_forward_prediction) ** 2).mean(dim=tuple(range(1, x0.ndim)))
    loss += cfg["train_beta"] * torch.mean(kl_div_loss)
    return loss


@pytest.mark.parametrize(
    "seed, beta, adv_mode",
    [(0, 1.0, "all"), (1, 0.1, "all"), (2, 0.5, "positive_only"), (3, 1.0, "binary"), (4, 0.1, "one_only")],
)
def test_diffusionnft_loss_matches_the_official_training_step(seed, beta, adv_mode):
    """The mean over trained timesteps of the official per-timestep loss (its gradient accumulation
    divides by num_train_timesteps) = DiffusionNFT.loss over the flattened (B, S) batch: value and
    gradient in the current velocity, to 1e-5."""
    g = torch.Generator().manual_seed(seed)
    b, s, shape = 5, 3, (4, 6, 6)
    x0 = torch.randn(b, *shape, generator=g)
    adv = 4 * torch.randn(b, generator=g)  # some beyond the clip
    cfg = {"beta": beta, "train_beta": 1e-4, "adv_clip_max": 5.0, "adv_mode": adv_mode}
    t = torch.rand(s, b, generator=g).clamp(0.05, 1.0)
    noise = torch.randn(s, b, *shape, generator=g)
    xt = (1 - t.view(s, b, 1, 1, 1)) * x0 + t.view(s, b, 1, 1, 1) * noise
    pred = torch.randn(s, b, *shape, generator=g, requires_grad=True)
    old = pred.detach() + 0.3 * torch.randn(s, b, *shape, generator=g)
    ref = pred.detach() + 0.5 * torch.randn(s, b, *shape, generator=g)
    want = torch.stack(
        [official_step_loss(x0, xt[j], t[j], pred[j], old[j], ref[j], adv, cfg) for j in range(s)]
    ).mean()
    (want_grad,) = torch.autograd.grad(want, pred)

    algo = DiffusionNFT(beta=beta, adv_mode=adv_mode)
    rows = torch.arange(b).repeat(s)  # (s, b) flattened timestep-major: row j * b + i
    batch = ForwardBatch(
        x0=x0[rows],
        noise=noise.reshape(s * b, *shape),
        t=t.reshape(-1),
        x_t=xt.reshape(s * b, *shape),
        pred=pred.reshape(s * b, *shape),
        pred_old=old.reshape(s * b, *shape),
        advantages=adv.clamp(-5, 5)[rows],  # Algorithm.advantages clamps to adv_clip
        rewards=torch.zeros(s * b),
        group_ids=torch.zeros(s * b, dtype=torch.long),
        sample_index=rows,
        step_index=torch.zeros(s * b, dtype=torch.long),
        prompts=["p"] * (s * b),
        pred_ref=ref.reshape(s * b, *shape),
    )
    got = algo.loss(batch).value
    (got_grad,) = torch.autograd.grad(got, pred)
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad.float(), rtol=1e-5, atol=1e-7)


def test_official_old_policy_decay_and_advantages():
    """return_decay of train_nft_sd3.py (decay_type 1: min(0.001 step, 0.5); 2: flat 75 steps then
    0.0075 per step up to 0.999), and the round's per-prompt tracker: group mean, population std + 1e-4."""
    one, two = DiffusionNFT(), DiffusionNFT(decay_type=2)
    assert [one.old_policy_decay(s) for s in (0, 10, 499, 500, 4000)] == pytest.approx([0, 0.01, 0.499, 0.5, 0.5])
    assert [two.old_policy_decay(s) for s in (0, 74, 75, 100, 400)] == pytest.approx([0, 0, 0, 0.1875, 0.999])
    r = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0])
    gid = torch.tensor([0, 0, 0, 1, 1, 1])
    got = one.advantages(r, gid, ["a"] * 3 + ["b"] * 3)
    want = []
    for g in (r[:3], r[3:]):  # PerPromptStatTracker.update, global_std False
        want += list((g.numpy() - g.numpy().mean()) / (g.numpy().std() + 1e-4))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_old_policy_swaps_in_and_moves_toward_the_weights():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    old = OldPolicy([p])
    with torch.no_grad():
        p.add_(torch.tensor([1.0, 1.0]))
    with old.applied():
        torch.testing.assert_close(p.detach(), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(p.detach(), torch.tensor([2.0, 3.0]))
    old.update(0.25)  # old <- 0.25 old + 0.75 current
    torch.testing.assert_close(old.weights[0], torch.tensor([1.75, 2.75]))


@pytest.fixture
def flow_world(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(factory, "Policy", flow_toy.FlowPointPolicy)
    toy.REWARDS.register("test_point_target")(toy.point_reward)


def flow_spec(algorithm: str, rounds: int, **settings) -> RunSpec:
    return toy.toy_spec(algorithm, rounds, eta=0.7, algorithm_settings=settings)


def test_forward_batch_renoises_the_clean_samples_at_sampler_times(flow_world):
    """x_t = (1 - t) x0 + t eps at t = the sampler's sigma of each trained step, and on the toy the
    velocities at the sampling weights are the exact ones (pred = pred_old)."""
    trainer = train_mod.Trainer(flow_spec("diffusionnft", 1), out="unused")
    traj = trainer.sample_round()
    samples, cols = torch.tensor([0, 3]), torch.tensor([[0, 5], [7, 2]])
    batch = forward_batch(
        trainer.policy,
        trainer.sampler,
        traj,
        samples,
        cols,
        torch.ones(16),
        torch.ones(16),
        trainer.old,
        torch.Generator().manual_seed(0),
        reference=True,
    )
    torch.testing.assert_close(batch.t, trainer.sampler.sigmas[cols.reshape(-1)])
    t = batch.t.view(-1, 1, 1, 1)
    torch.testing.assert_close(batch.x_t, (1 - t) * traj.x0[[0, 0, 3, 3]] + t * batch.noise)
    torch.testing.assert_close(batch.pred.detach(), batch.pred_old)
    torch.testing.assert_close(batch.pred_ref, batch.pred_old)  # nothing trained yet
    assert batch.pred.requires_grad and not batch.pred_old.requires_grad
    assert batch.prompts == [traj.prompts[i] for i in (0, 0, 3, 3)]


def test_diffusionnft_raises_the_reward(flow_world):
    """On the flow toy (optimum -0.25) a third of the gap in 30 rounds, the log carries no log-prob KL."""
    trainer = train_mod.Trainer(flow_spec("diffusionnft", 30), out="unused")
    before = toy.expected_reward(trainer)
    for _ in range(30):
        line = trainer.round()
    after = toy.expected_reward(trainer)
    optimum = -(flow_toy.FlowPointPolicy.data_std**2)
    assert after > before + (optimum - before) / 3, (before, after)
    assert line["approx_kl"] is None and line["trained_steps_per_sample"] == 7  # int(8 * 0.99)
    assert trainer.old.optimiser_steps == 30


def test_diffusionnft_is_refused_on_ddim_models(flow_world):
    """Its re-noising is the rectified flow's: a DDIM model is refused by the study, naming the key."""
    from pathlib import Path

    import yaml

    from t2i_rl_bench import study

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "quick.yaml").read_text())
    cfg["algorithms"] = {"nft": {"plugin": "diffusionnft"}}
    with pytest.raises(study.ConfigError, match=r"algorithms\.nft.*flow"):
        study.validate(cfg, check_paths=False)


def test_pyproject_registers_the_new_methods():
    from pathlib import Path

    import tomllib

    from t2i_rl_bench.algorithms.draft import DRaFT, ReFL
    from t2i_rl_bench.registry import _load_reference

    eps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["entry-points"]
    algos = eps["t2i_rl_bench.algorithms"]
    assert _load_reference(algos["diffusionnft"], "algorithm") is DiffusionNFT
    assert _load_reference(algos["draft"], "algorithm") is DRaFT
    assert _load_reference(algos["refl"], "algorithm") is ReFL


def test_probe_measures_gradients_and_says_why_there_is_no_step_credit(flow_world):
    """The probe's minibatch gradients are the training loss's (nonzero, one per group); instead
    of a per-step credit share it writes why the family has none."""
    from t2i_rl_bench.probe import probe_gradients

    trainer = train_mod.Trainer(flow_spec("diffusionnft", 1), out="unused")
    row = probe_gradients(
        trainer.policy, trainer.sampler, trainer.algorithm, trainer.reward, ["a", "b", "c"], 4, 1.0, seed=5
    )
    assert "credit_share" not in row and "likelihood-free" in row["credit_note"]
    assert row["mean_sq_norm"] > 0 and row["trace_cov"] > 0
