"""Windowed SDE sampling (Flow-GRPO-Fast, MixGRPO's fixed window): `sampling.sde_window` =
[start, length] makes only those flow-SDE steps stochastic (and trained); the others are ODE steps.
For any algorithm: the sampler, the trained steps, the probe's credit and the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from t2i_rl_bench import study
from t2i_rl_bench import train as train_mod
from t2i_rl_bench.algorithms.flowgrpo import FlowGRPO
from t2i_rl_bench.probe import probe_gradients
from t2i_rl_bench.rollout import make_sampler, recompute
from t2i_rl_bench.sampling import FlowSDESampler
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train.steps import trainable_steps, trained_steps
from tests import test_learning as toy
from tests.test_flowgrpo import FlowPointPolicy, sd3_sigmas

torch.set_num_threads(1)
ROOT = Path(__file__).parents[1]


def test_steps_outside_the_window_are_ode_steps_and_inside_the_sde_is_unchanged():
    sigmas = sd3_sigmas(10)
    full = FlowSDESampler(sigmas, 0.7, "flowgrpo")
    window = FlowSDESampler(sigmas, 0.7, "flowgrpo", sde_window=(3, 4))
    assert window.sde_steps.tolist() == [3, 4, 5, 6]
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for k in range(10):
        idx = torch.full((3,), k)
        t = window.timesteps[idx]
        a = window.step(v, x, t, idx, generator=torch.Generator().manual_seed(1))
        if k in (3, 4, 5, 6):
            b = full.step(v, x, t, idx, generator=torch.Generator().manual_seed(1))
            for got, want in ((a.x_next, b.x_next), (a.logp, b.logp), (a.mean, b.mean), (a.std, b.std)):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            again = window.step(v, x, t, idx, prev=a.x_next)  # the log-prob recompute of a recorded step
            torch.testing.assert_close(again.logp, a.logp, rtol=0, atol=1e-5)
            assert (a.std > 0).all()
        else:
            b = window.step(v, x, t, idx, generator=torch.Generator().manual_seed(2))
            torch.testing.assert_close(a.x_next, b.x_next, rtol=0, atol=0)  # no noise
            torch.testing.assert_close(a.x_next, x + (sigmas[k + 1] - sigmas[k]) * v)  # the Euler ODE step
            assert (a.std == 0).all() and (a.logp == 0).all()


def test_the_window_must_lie_inside_the_schedule():
    with pytest.raises(ValueError, match="inside"):
        FlowSDESampler(sd3_sigmas(6), sde_window=(4, 3))


def test_only_the_windows_steps_are_trained():
    sampler = FlowSDESampler(sd3_sigmas(6), sde_window=(3, 3))
    assert trainable_steps(sampler, drop_last=False).tolist() == [3, 4, 5]
    assert trainable_steps(sampler, drop_last=True).tolist() == [3, 4]
    allowed = trainable_steps(sampler, drop_last=True)
    steps = trained_steps(50, 6, 1.0, True, True, torch.Generator().manual_seed(0), allowed)
    assert set(steps.flatten().tolist()) == {3, 4} and steps.shape == (50, 2)
    assert trained_steps(2, 6, 0.5, True, False, torch.Generator(), allowed).tolist() == [[3]] * 2
    plain = FlowSDESampler(sd3_sigmas(6))
    assert trainable_steps(plain, drop_last=True).tolist() == list(range(5))


@pytest.mark.parametrize("algorithm", ["ddpo_is", "flowgrpo"])
def test_training_with_a_window_records_ode_steps_and_raises_the_reward(flow_toy, algorithm):
    cfg = toy.toy_spec(algorithm, eta=0.7, sde_window=[1, 5])
    trainer = train_mod.Trainer(cfg, out="unused")
    assert trainer.spec.sde_window == (1, 5) and trainer.sampler.sde_steps.tolist() == [1, 2, 3, 4, 5]
    traj = trainer.sample_round()
    outside = [0, 6, 7]
    assert (traj.logp[:, outside] == 0).all() and (traj.stds[:, outside] == 0).all()
    assert (traj.stds[:, 1:6] > 0).all()
    logp, _, _ = recompute(
        trainer.policy, trainer.sampler, traj, torch.arange(16), torch.arange(1, 6).expand(16, 5), 1.0
    )
    torch.testing.assert_close(logp, traj.logp[:, 1:6], rtol=0, atol=1e-5)
    before = toy.expected_reward(trainer)
    line = {}
    for _ in range(30):
        line = trainer.round()
    after = toy.expected_reward(trainer)
    assert line["trained_steps_per_sample"] == 5  # the window (the last step is outside it)
    optimum = -(FlowPointPolicy.data_std**2)
    assert after > before + (optimum - before) / 3, (algorithm, before, after)


def test_the_probe_credits_only_the_windows_steps(flow_toy):
    policy = FlowPointPolicy()
    policy.freeze_reference()
    sampler = make_sampler(policy, 8, 0.7, sde_window=(2, 3))
    algorithm = FlowGRPO()
    algorithm.setup(sampler)
    from t2i_rl_bench.reward import build_reward

    out = probe_gradients(policy, sampler, algorithm, build_reward("test_point_target"), ["a", "b"], 4, 1.0, 5)
    share = torch.tensor(out["credit_share"])
    assert share.shape == (8,) and (share[[0, 1, 5, 6, 7]] == 0).all() and (share[2:5] > 0).all()
    assert float(share.sum()) == pytest.approx(1.0, abs=1e-5)


def test_the_config_checks_the_window():
    cfg = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    cfg["sampling"]["sde_window"] = [2, 4]
    valid = study.validate(cfg, check_paths=False)
    assert study.run_spec(valid, study.runs(valid)[0]).sde_window == (2, 4)
    cfg["sampling"]["sde_window"] = [8, 4]
    with pytest.raises(study.ConfigError, match="sampling.sde_window"):
        study.validate(cfg, check_paths=False)
    quick = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    quick["sampling"]["sde_window"] = [0, 2]
    with pytest.raises(study.ConfigError, match="sampling.sde_window.*DDIM"):
        study.validate(quick, check_paths=False)


def test_an_unset_window_leaves_existing_run_specs_unchanged():
    """Runs of earlier studies keep their spec JSON (workflow parameters, shared base keys)."""
    spec = RunSpec(model_path="m", algorithm="ddpo_is", reward="r")
    assert "sde_window" not in spec.to_dict()
    windowed = spec.replace(sde_window=[1, 2])
    assert windowed.to_dict()["sde_window"] == [1, 2] and RunSpec.from_json(windowed.to_json()) == windowed


def test_an_algorithm_may_have_its_own_window():
    """Flow-GRPO-Fast as a label: algorithms.<label>.sde_window over the study's sampler."""
    cfg = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    cfg["algorithms"]["flowgrpo_fast"] = {"plugin": "flowgrpo", "sde_window": [1, 2]}
    valid = study.validate(cfg, check_paths=False)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid)}
    assert specs["flowgrpo_fast"].sde_window == (1, 2) and specs["flowgrpo_fast"].algorithm == "flowgrpo"
    assert specs["flowgrpo"].sde_window is None and "sde_window" not in specs["flowgrpo_fast"].algorithm_settings
    cfg["algorithms"]["flowgrpo_fast"]["sde_window"] = [9, 2]
    with pytest.raises(study.ConfigError, match=r"algorithms\.flowgrpo_fast\.sde_window"):
        study.validate(cfg, check_paths=False)
    cfg["algorithms"]["flowgrpo_fast"]["sde_window"] = "early"
    with pytest.raises(study.ConfigError, match=r"algorithms\.flowgrpo_fast\.sde_window"):
        study.validate(cfg, check_paths=False)


def test_the_evaluation_samples_without_the_window():
    from t2i_rl_bench.evaluate import BASE_FIELDS, evaluation_spec

    spec = RunSpec(model_path="m", algorithm="flowgrpo", reward="r", sde_window=(1, 2))
    assert evaluation_spec(spec, {}).sde_window is None and "sde_window" not in BASE_FIELDS
    assert evaluation_spec(spec, {"eta": 0.0}).eta == 0.0


# ---- the sliding window (MixGRPO) ---------------------------------------------------------------
def test_the_sliding_window_moves_by_its_setting_and_starts_over():
    """K = 8, window [1, 2]: positions 1..5 (it ends before the final step); every 2 rounds by 1,
    back to 1 after 5; by stride 2: 1, 3, 5."""
    slow = FlowSDESampler(sd3_sigmas(8), sde_window=(1, 2), window_shift=(2, 1))
    assert [slow.window_start(r) for r in range(12)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 1, 1]
    wide = FlowSDESampler(sd3_sigmas(8), sde_window=(1, 2), window_shift=(1, 2))
    assert [wide.window_start(r) for r in range(5)] == [1, 3, 5, 1, 3]
    fixed = FlowSDESampler(sd3_sigmas(8), sde_window=(1, 2))
    assert fixed.at_round(7) is fixed and slow.at_round(1) is slow
    moved = slow.at_round(4)
    assert moved.sde_window == (3, 2) and moved.sde_steps.tolist() == [3, 4] and slow.sde_window == (1, 2)
    assert moved.at_round(0).sde_window == (1, 2)  # from the configured start, whatever the current one
    with pytest.raises(ValueError, match="final step"):
        FlowSDESampler(sd3_sigmas(8), sde_window=(5, 3), window_shift=(1, 1))
    with pytest.raises(ValueError, match="sde_window"):
        FlowSDESampler(sd3_sigmas(8), window_shift=(1, 1))


def test_training_follows_the_sliding_window_and_trains_only_inside_it(flow_toy):
    """Each round samples with the window the setting gives for that round: SDE inside (std > 0),
    the deterministic ODE outside (std 0, log-prob 0), and trains only steps inside; a trainer
    resumed at round r starts at round r's window; the probe at a budget uses the next round's."""
    cfg = toy.toy_spec("flowgrpo", 6, eta=0.7, sde_window=[0, 3], sde_window_shift=[1, 2])
    trainer = train_mod.Trainer(cfg, out="unused")
    seen: dict[str, list] = {"traj": [], "steps": []}
    sample, update = trainer.sample_round, trainer.update

    def record_sample():
        traj = sample()
        seen["traj"].append(traj)
        return traj

    def record_update(traj, scored, reference, part, steps, stats):
        seen["steps"].append(steps[part])
        return update(traj, scored, reference, part, steps, stats)

    trainer.sample_round, trainer.update = record_sample, record_update
    expected = [0, 2, 4, 0, 2, 4]  # positions 0, 2, 4 (p + 3 <= 7)
    for r, start in enumerate(expected):
        seen["steps"].clear()
        line = trainer.round()
        inside = list(range(start, start + 3))
        outside = [k for k in range(8) if k not in inside]
        traj = seen["traj"][-1]
        assert line["sde_window"] == [start, 3] and trainer.sampler.sde_window == (start, 3), r
        assert (traj.stds[:, inside] > 0).all() and (traj.stds[:, outside] == 0).all()
        assert (traj.logp[:, outside] == 0).all()
        trained = set(torch.cat(seen["steps"]).flatten().tolist())
        assert trained and trained <= set(inside), (r, trained)
        for k in outside:  # the ODE step, no noise drawn into it
            torch.testing.assert_close(
                traj.latents[:, k + 1],
                traj.means[:, k],
                rtol=0,
                atol=0,
            )
    resumed = train_mod.Trainer(cfg, out="unused")
    resumed.images_seen = 16 * 4
    resumed.follow_window()
    assert resumed.sampler.sde_window == (2, 3) and resumed.algorithm.step_dt is not None

    from t2i_rl_bench.probe import Prober

    prober = Prober(cfg, {"minibatches": 2, "seed": 5})
    share = torch.tensor(prober(16 * 2)["credit_share"])  # after round 1: round 2's window, steps 4-6
    assert (share[[4, 5, 6]] > 0).all() and (share[[0, 1, 2, 3, 7]] == 0).all()


def test_the_config_checks_the_sliding_window():
    cfg = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    cfg["algorithms"]["mixgrpo"] = {"plugin": "flowgrpo", "sde_window": [0, 2], "sde_window_shift": [25, 1]}
    valid = study.validate(cfg, check_paths=False)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid)}
    assert (specs["mixgrpo"].sde_window, specs["mixgrpo"].sde_window_shift) == ((0, 2), (25, 1))
    assert specs["flowgrpo"].sde_window_shift is None and "sde_window_shift" not in specs["flowgrpo"].to_dict()
    assert "sde_window_shift" not in specs["mixgrpo"].algorithm_settings
    for bad in ([0, 1], "often", [1]):
        cfg["algorithms"]["mixgrpo"]["sde_window_shift"] = bad
        with pytest.raises(study.ConfigError, match=r"algorithms\.mixgrpo\.sde_window_shift"):
            study.validate(cfg, check_paths=False)
    steps = cfg["sampling"]["num_steps"]
    cfg["algorithms"]["mixgrpo"].update(sde_window=[steps - 2, 2], sde_window_shift=[1, 1])  # reaches the final step
    with pytest.raises(study.ConfigError, match=r"algorithms\.mixgrpo\.sde_window_shift.*final"):
        study.validate(cfg, check_paths=False)
    del cfg["algorithms"]["mixgrpo"]
    cfg["sampling"]["sde_window_shift"] = [2, 1]  # the study's, and no window anywhere
    with pytest.raises(study.ConfigError, match=r"sampling\.sde_window_shift.*sde_window"):
        study.validate(cfg, check_paths=False)
    cfg["sampling"]["sde_window"] = [0, 2]
    valid = study.validate(cfg, check_paths=False)
    assert {study.run_spec(valid, k).sde_window_shift for k in study.runs(valid)} == {(2, 1)}
    quick = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    quick["sampling"].update(sde_window=[0, 2], sde_window_shift=[1, 1])
    with pytest.raises(study.ConfigError, match="DDIM"):
        study.validate(quick, check_paths=False)


def test_the_evaluation_samples_without_the_sliding_window():
    from t2i_rl_bench.evaluate import evaluation_spec

    spec = RunSpec(model_path="m", algorithm="flowgrpo", reward="r", sde_window=(1, 2), sde_window_shift=(3, 1))
    plain = evaluation_spec(spec, {})
    assert plain.sde_window is None and plain.sde_window_shift is None
    assert RunSpec.from_json(spec.to_json()) == spec


# ---- the drawn window (Flow-GRPO-Fast) ----------------------------------------------------------
def test_the_drawn_window_lies_in_its_range_and_repeats_for_a_seed():
    """K = 10, window [0, 3], range [0, 7]: each round's start is one of 0..4 (all of them turn up),
    a function of (seed, round) only (in any order of asking, from any copy), another seed draws
    other starts; the round's sampler is stochastic exactly on its window."""
    drawn = FlowSDESampler(sd3_sigmas(10), sde_window=(0, 3), window_range=(0, 7), window_seed=3)
    starts = [drawn.window_start(r) for r in range(200)]
    assert set(starts) == {0, 1, 2, 3, 4}
    again = FlowSDESampler(sd3_sigmas(10), sde_window=(0, 3), window_range=(0, 7), window_seed=3)
    assert [again.window_start(r) for r in reversed(range(200))] == starts[::-1]
    other = FlowSDESampler(sd3_sigmas(10), sde_window=(0, 3), window_range=(0, 7), window_seed=4)
    assert [other.window_start(r) for r in range(200)] != starts
    for r in range(20):
        at = drawn.at_round(r)
        assert at.sde_window == (starts[r], 3) and at.sde_steps.tolist() == list(range(starts[r], starts[r] + 3))
        assert at.at_round(r + 1).sde_window == (starts[r + 1], 3)  # from any round's sampler
    assert drawn.sde_window == (0, 3)  # the configured window is left as it was
    for bad in (
        dict(sde_window=(0, 3), window_range=(1, 7)),  # the range does not hold the window
        dict(sde_window=(0, 3), window_range=(0, 10)),  # it reaches the final step
        dict(sde_window=(0, 3), window_range=(0, 7), window_shift=(1, 1)),  # both drawn and sliding
        dict(window_range=(0, 7)),  # no window
    ):
        with pytest.raises(ValueError, match="window"):
            FlowSDESampler(sd3_sigmas(10), **bad)


def test_training_and_the_probe_use_the_drawn_window_of_each_round(flow_toy):
    """Each round samples with its drawn window (SDE inside, the ODE outside: std 0, log-prob 0, no
    noise) and trains only inside it; a second run with the seed draws the same windows, a resumed
    run continues with them, and the probe at a budget uses the next round's."""
    cfg = toy.toy_spec("flowgrpo", 8, eta=0.7, seed=2, sde_window=[0, 2], sde_window_range=[0, 7])
    reference = FlowSDESampler(sd3_sigmas(8), sde_window=(0, 2), window_range=(0, 7), window_seed=2)
    expected = [reference.window_start(r) for r in range(8)]
    assert len(set(expected)) > 2 and all(0 <= s <= 5 for s in expected)
    trainer = train_mod.Trainer(cfg, out="unused")
    seen: dict[str, list] = {"traj": [], "steps": []}
    sample, update = trainer.sample_round, trainer.update

    def record_sample():
        traj = sample()
        seen["traj"].append(traj)
        return traj

    def record_update(traj, scored, reference, part, steps, stats):
        seen["steps"].append(steps[part])
        return update(traj, scored, reference, part, steps, stats)

    trainer.sample_round, trainer.update = record_sample, record_update
    for r, start in enumerate(expected):
        seen["steps"].clear()
        line = trainer.round()
        inside = [start, start + 1]
        outside = [k for k in range(8) if k not in inside]
        traj = seen["traj"][-1]
        assert line["sde_window"] == [start, 2] and trainer.sampler.sde_window == (start, 2), r
        assert (traj.stds[:, inside] > 0).all() and (traj.stds[:, outside] == 0).all()
        assert (traj.logp[:, outside] == 0).all()
        for k in outside:
            torch.testing.assert_close(traj.latents[:, k + 1], traj.means[:, k], rtol=0, atol=0)
        trained = set(torch.cat(seen["steps"]).flatten().tolist())
        assert trained and trained <= set(inside), (r, trained)
    twin = train_mod.Trainer(cfg, out="unused")
    assert [twin.round()["sde_window"][0] for _ in range(3)] == expected[:3]
    resumed = train_mod.Trainer(cfg, out="unused")
    resumed.images_seen = 16 * 5
    resumed.follow_window()
    assert resumed.sampler.sde_window == (expected[5], 2)

    from t2i_rl_bench.probe import Prober

    prober = Prober(cfg, {"minibatches": 2, "seed": 5})
    share = torch.tensor(prober(16 * 3)["credit_share"])  # after round 2: round 3's window
    inside = [expected[3], expected[3] + 1]
    assert (share[inside] > 0).all() and (share[[k for k in range(8) if k not in inside]] == 0).all()


def test_the_config_checks_the_drawn_window():
    cfg = yaml.safe_load((ROOT / "config" / "flow.yaml").read_text())
    steps = cfg["sampling"]["num_steps"]
    cfg["algorithms"]["fast"] = {"plugin": "flowgrpo", "sde_window": [0, 2], "sde_window_range": [0, steps // 2]}
    valid = study.validate(cfg, check_paths=False)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid)}
    assert (specs["fast"].sde_window, specs["fast"].sde_window_range) == ((0, 2), (0, steps // 2))
    assert "sde_window_range" not in specs["fast"].algorithm_settings
    assert "sde_window_range" not in specs["flowgrpo"].to_dict()
    assert RunSpec.from_json(specs["fast"].to_json()) == specs["fast"]
    for bad in ([0], "wide", [0, -1], [True, 3]):
        cfg["algorithms"]["fast"]["sde_window_range"] = bad
        with pytest.raises(study.ConfigError, match=r"algorithms\.fast\.sde_window_range"):
            study.validate(cfg, check_paths=False)
    for bad in ([1, 4], [0, steps]):  # does not hold [0, 2]; reaches the final step
        cfg["algorithms"]["fast"]["sde_window_range"] = bad
        with pytest.raises(study.ConfigError, match=r"algorithms\.fast\.sde_window_range.*hold"):
            study.validate(cfg, check_paths=False)
    cfg["algorithms"]["fast"].update(sde_window_range=[0, 4], sde_window_shift=[1, 1])
    with pytest.raises(study.ConfigError, match=r"algorithms\.fast\.sde_window_range.*sliding"):
        study.validate(cfg, check_paths=False)
    del cfg["algorithms"]["fast"]
    cfg["sampling"]["sde_window_range"] = [0, 4]  # the study's, and no window anywhere
    with pytest.raises(study.ConfigError, match=r"sampling\.sde_window_range.*sde_window"):
        study.validate(cfg, check_paths=False)
    cfg["sampling"]["sde_window"] = [1, 2]
    valid = study.validate(cfg, check_paths=False)
    assert {study.run_spec(valid, k).sde_window_range for k in study.runs(valid)} == {(0, 4)}
    quick = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    quick["sampling"].update(sde_window=[0, 2], sde_window_range=[0, 3])
    with pytest.raises(study.ConfigError, match="DDIM"):
        study.validate(quick, check_paths=False)


def test_the_evaluation_samples_without_the_drawn_window():
    from t2i_rl_bench.evaluate import evaluation_spec

    spec = RunSpec(model_path="m", algorithm="flowgrpo", reward="r", sde_window=(1, 2), sde_window_range=(0, 5))
    plain = evaluation_spec(spec, {})
    assert plain.sde_window is None and plain.sde_window_range is None
