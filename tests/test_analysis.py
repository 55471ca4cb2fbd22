import numpy as np
import pandas as pd
import pytest

from t2i_rl_bench import analysis

RULES = analysis.Rules(
    reference="ref", target_fraction=0.8, matched_fraction=0.5, collapse_drop=0.5, gold_tolerance=0.1
)


def _rows(
    curves: dict, metric: str, budgets=(0, 10, 20), seconds_per_sample: dict | None = None, status: dict | None = None
) -> list[dict]:
    rows = []
    for (algo, seed), values in curves.items():
        st = (status or {}).get((algo, seed), "finished")
        for b, v in zip(budgets, values):
            rows.append(
                {
                    "model": "m",
                    "reward": "r",
                    "algorithm": algo,
                    "seed": seed,
                    "budget": b,
                    "metric": metric,
                    "value": v,
                    "status": st,
                }
            )
            if metric.startswith("reward/"):
                rate = (seconds_per_sample or {}).get(algo, 2.0)
                rows.append(
                    {
                        "model": "m",
                        "reward": "r",
                        "algorithm": algo,
                        "seed": seed,
                        "budget": b,
                        "metric": "device_seconds",
                        "value": rate * b,
                        "status": st,
                    }
                )
    return rows


def _get(out: pd.DataFrame, algo: str, seed: int, metric: str) -> float:
    return out[(out.algorithm == algo) & (out.seed == seed) & (out.metric == metric)]["value"].item()


def test_convergence_takes_its_target_from_runs_that_pass_the_gold_checks_and_keeps_censored_runs():
    rewards = {
        ("ref", 0): [0.0, 0.6, 1.0],
        ("ref", 1): [0.0, 0.5, 1.0],
        ("hack", 0): [0.0, 3.0, 5.0],  # the best proxy reward, by destroying the images
        ("slow", 0): [0.0, 0.2, 0.4],
    }
    accuracy = {k: [0.9, 0.9, 0.9] for k in rewards} | {("hack", 0): [0.9, 0.5, 0.2]}
    df = pd.DataFrame(_rows(rewards, "reward/r") + _rows(accuracy, "attribute/mean"))
    gold = analysis.gold_checks(df, RULES)
    assert _get(gold, "hack", 0, "gold/pass") == 0.0 and _get(gold, "ref", 0, "gold/pass") == 1.0
    out, levels = analysis.convergence(df, gold, RULES)
    level = levels.iloc[0]
    assert level.improvement == pytest.approx(1.0) and "ref" in level.source  # not the hacked 5.0
    assert level.target == pytest.approx(0.8) and level.tau_samples == 20
    assert _get(out, "ref", 0, "convergence/rmst_samples_80") == pytest.approx(10 + 10 * 0.2 / 0.4)
    assert _get(out, "ref", 0, "convergence/rmst_seconds_80") == pytest.approx(2 * (10 + 10 * 0.2 / 0.4))
    # never reached: censored at the horizon, kept in the mean (the restricted mean), not dropped
    assert _get(out, "slow", 0, "convergence/reached_80") == 0.0
    assert _get(out, "slow", 0, "convergence/rmst_samples_80") == 20.0
    assert np.isclose(_get(out, "slow", 0, "convergence/normalized_auc"), 0.5 * (0.1 + 0.3))


def test_no_improvement_without_hacking_gives_undefined_convergence():
    df = pd.DataFrame(_rows({("ref", 0): [0.5, 0.4, 0.3]}, "reward/r"))
    out, levels = analysis.convergence(df, analysis.gold_checks(df, RULES), RULES)
    assert np.isnan(out["value"]).all() and np.isnan(levels.iloc[0].improvement)


def test_reward_at_a_common_device_seconds_level():
    # ref: 2 s per sample (40 s at budget 20); costly: 8 s per sample (160 s): common level 40 s
    rewards = {("ref", 0): [0.0, 0.5, 1.0], ("costly", 0): [0.0, 1.0, 2.0]}
    out, levels = analysis.at_seconds(pd.DataFrame(_rows(rewards, "reward/r", seconds_per_sample={"costly": 8.0})))
    assert levels.iloc[0].seconds_level == 40.0
    assert _get(out, "ref", 0, "seconds/reward/r") == 1.0
    assert _get(out, "costly", 0, "seconds/reward/r") == pytest.approx(0.5)  # 40 s = 5 samples of 10


def test_matched_quality_reads_above_the_base_or_says_not_comparable():
    rewards = {("a", 0): [0.0, 0.5, 1.0], ("b", 0): [0.0, 0.8, 0.6], ("flat", 0): [0.0, -0.1, -0.2]}
    fid = {("a", 0): [10.0, 20.0, 30.0], ("b", 0): [10.0, 50.0, 60.0], ("flat", 0): [10.0, 10.0, 10.0]}
    df = pd.DataFrame(_rows(rewards, "reward/r") + _rows(fid, "quality/fid"))
    level, why = analysis.matched_level(df, "m", "r", ["a", "b"], 0.5)
    assert level == pytest.approx(0.3) and level > 0.0  # above the base: half of b's gain 0.6
    matched = analysis.matched_quality(df, RULES, ["a", "b"])
    assert _get(matched, "a", 0, "matched/quality/fid") == pytest.approx(10.0 + 10.0 * 0.3 / 0.5)
    assert _get(matched, "b", 0, "matched/quality/fid") == pytest.approx(10.0 + 40.0 * 0.3 / 0.8)
    level, why = analysis.matched_level(df, "m", "r", ["a", "flat"], 0.5)
    assert np.isnan(level) and "not comparable" in why and "flat" in why


def test_the_collapse_rule_fires_on_a_collapsed_run_and_not_on_a_healthy_one():
    # Vendi >= 1: the old rule (below 0.5 x base) could never fire for a base of 1.8
    vendi = {("collapsed", 0): [1.8, 1.5, 1.2], ("healthy", 0): [1.8, 1.7, 1.75]}
    out = analysis.collapse(pd.DataFrame(_rows(vendi, "diversity/vendi")), RULES)
    assert _get(out, "collapsed", 0, "collapse/collapsed/diversity/vendi") == 1.0
    assert _get(out, "collapsed", 0, "collapse/onset/diversity/vendi") == 20.0  # 0.2 < 0.5 x 0.8
    assert _get(out, "healthy", 0, "collapse/collapsed/diversity/vendi") == 0.0
    assert 1.0 < 1.0 + 0.5 * (1.8 - 1.0) < 1.8  # the threshold lies inside the measure's range


def test_a_method_whose_proxy_rises_while_a_gold_metric_falls_is_flagged():
    rewards = {(a, s): [0.0, 0.5, 1.0 + 0.1 * s] for a in ("hack", "good") for s in range(4)}
    accuracy = {("hack", s): [0.9, 0.7, 0.5 - 0.02 * s] for s in range(4)}
    accuracy |= {("good", s): [0.9, 0.9, 0.9 + 0.01 * (s - 1.5)] for s in range(4)}
    df = pd.DataFrame(_rows(rewards, "reward/r") + _rows(accuracy, "attribute/mean"))
    flags = analysis.hacking(analysis.gold_checks(df, RULES), RULES)
    by = flags.set_index("algorithm")
    assert bool(by.loc["hack", "flagged"]) and not bool(by.loc["good", "flagged"])
    assert by.loc["hack", "runs_failing_gold_check"] == "0 1 2 3"


def test_family_power_states_the_mdd_of_the_family_after_holm():
    from t2i_rl_bench.metrics.statistics import minimum_detectable_difference, paired_difference

    d = paired_difference([1.1, 1.3, 1.2, 1.4], [1.0, 1.0, 1.0, 1.0])
    cols = analysis.pair_columns(d, 0.5, 0.05)
    assert cols["test"] == "paired t" and cols["p_tost"] == pytest.approx(0.015233, abs=2e-6) and cols["equivalent"]
    assert np.isnan(analysis.pair_columns(d, float("nan"), 0.05)["p_tost"])  # no margin declared: no TOST
    family = [
        {"method": a, "over": b, "p_value": 0.1, "sd": sd, "n_seeds": 4, "test": "paired t"}
        for (a, b), sd in {("x", "y"): 0.1, ("x", "z"): 0.2, ("y", "z"): 0.3}.items()
    ]
    family += [{**f, "method": f["over"], "over": f["method"]} for f in family]  # both orders: one pair each
    power = analysis.family_power(family, 0.05, 0.8)
    assert power["mdd_tests"] == 3 and power["mdd_sd"] == pytest.approx(0.2)
    assert power["mdd"] == pytest.approx(minimum_detectable_difference(0.2, 4, 0.05, 0.8, 3))
