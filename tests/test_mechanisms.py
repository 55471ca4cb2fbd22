"""The mechanism table reads what each run had on and shows what acted (docs/study.md#the-mechanism-table)."""

import pandas as pd
import pytest

from t2i_rl_bench import mechanisms
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import train


def _run(model, tmp_path, algorithm: str, **settings):
    spec = RunSpec(
        model_path=str(model),
        algorithm=algorithm,
        reward="jpeg_compressibility",
        seed=3,
        num_steps=4,
        images_per_round=8,
        group_size=2,
        budgets=[16],
        lr=1e-3,
        prompts=["a red circle", "a blue square"],
        algorithm_settings=settings,
    )
    out = tmp_path / algorithm
    train(spec, out)
    return {"model": "m", "reward": "r", "algorithm": algorithm, "seed": 3, **mechanisms.run_row(out)}


def test_mechanisms_on_and_active_from_settings_and_logs(tiny_model, tmp_path):
    runs = pd.DataFrame(
        [
            _run(tiny_model, tmp_path, "reinforce"),
            _run(tiny_model, tmp_path, "ddpo_is", clip_range=1e-6),
            _run(tiny_model, tmp_path, "pcpo"),
            _run(tiny_model, tmp_path, "prdp", inner_epochs=2, beta=1.0),
        ]
    ).set_index("algorithm")
    # REINFORCE: one on-policy step per round, nothing clipped, no reference
    r = runs.loc["reinforce"]
    assert r.updates_per_round == 1 and not r.importance_sampling and r.kl_reference == 0
    assert r.optimiser_steps == 2 and r.lr_x_steps == pytest.approx(2e-3) and r.cpu_seconds > 0
    # DDPO-IS: 4 steps per round; its later steps see ratios away from 1, and a tiny clip range bites
    d = runs.loc["ddpo_is"]
    assert d.updates_per_round == 4 and d.importance_sampling and d.is_active == 1.0
    assert d.logratio_abs_later > 0 and d.clip_active == 1.0 and d.optimiser_steps == 8
    # PCPO: its per-step weights differ between steps (the loss's design)
    p = runs.loc["pcpo"]
    assert p.step_weighting == "reweight" and p.step_weight_active and p.step_weight_cv > 0.01
    assert runs.loc["ddpo_is"].step_weight_cv == 0
    # PRDP: a reference term that moves once the weights do
    q = runs.loc["prdp"]
    assert q.kl_reference == 1.0 and q.kl_active == 1.0 and q.ref_logratio_abs > 0
    shown = mechanisms.table(runs.reset_index()).set_index("method")
    assert shown.loc["ddpo_is", "clip"].endswith("active 1/1")
    assert shown.loc["reinforce", "IS (ratios != 1 on later updates)"] == "off"
    assert shown.loc["pcpo", "step weights vary"] == "reweight; active 1/1"
    head = mechanisms.headline_columns(runs.reset_index())
    assert set(head["method"]) == {"reinforce", "ddpo_is", "pcpo", "prdp"}


def test_a_mechanism_active_in_one_arm_only_is_a_named_confound():
    clip = "clip"
    mech = pd.DataFrame(
        [
            {"reward": "r", "method": "a", clip: "0.0001; active 4/4", "SDE": "flowgrpo eta 0.7; active 4/4"},
            {"reward": "r", "method": "b", clip: "0.0001; active 0/4", "SDE": "flowgrpo eta 0.7; active 4/4"},
            {"reward": "r", "method": "c", clip: "off", "SDE": "flowgrpo eta 0.7; active 4/4"},
            {"reward": "s", "method": "a", clip: "0.0001; active 0/4", "SDE": "off"},
        ]
    )
    named = mechanisms.confounds(mech, "r")
    assert named == {("a", "b"): "clip active in a only"}  # c has no clip: a design difference, not a confound
    assert mechanisms.confounds(mech, "s") == {}


def test_a_learning_rate_difference_is_a_named_confound_unless_the_rates_are_declared_calibrated():
    mech = pd.DataFrame(
        [
            {"reward": "r", "method": "a", "lr": 3e-4, "clip": "0.0001; active 4/4"},
            {"reward": "r", "method": "b", "lr": 1e-4, "clip": "0.0001; active 0/4"},
            {"reward": "r", "method": "c", "lr": 1e-4, "clip": "0.0001; active 4/4"},
        ]
    )
    named = mechanisms.confounds(mech, "r")
    assert set(named) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert (
        named[("a", "b")].startswith("learning rate (a 0.0003, b 0.0001")
        and "clip active in a only" in named[("a", "b")]
    )
    assert named[("b", "c")] == "clip active in c only"  # equal rates: only the clip
    calibrated = mechanisms.confounds(mech, "r", rates_calibrated=True)
    assert calibrated == {("a", "b"): "clip active in a only", ("b", "c"): "clip active in c only"}
    # a method whose calibrated rate sits at the grid's edge keeps its rate differences named
    edge = mechanisms.confounds(mech, "r", rates_calibrated=True, unbracketed=["a"])
    assert edge[("a", "c")] == "learning rate (a 0.0003, c 0.0001; a's rate not bracketed by the calibration)"
    assert edge[("a", "b")].startswith("learning rate (a 0.0003") and edge[("b", "c")] == "clip active in c only"
