import numpy as np
import pandas as pd

from bench import analysis


def _rows(curves: dict, metric: str, budgets=(0, 10, 20)) -> list[dict]:
    rows = []
    for (algo, seed), values in curves.items():
        for b, v in zip(budgets, values):
            rows.append({"model": "m", "reward": "r", "algorithm": algo, "seed": seed, "budget": b,
                         "metric": metric, "value": v, "status": "finished"})
            rows.append({"model": "m", "reward": "r", "algorithm": algo, "seed": seed, "budget": b,
                         "metric": "device_seconds", "value": 2.0 * b, "status": "finished"})
    return rows


def test_convergence_reads_samples_to_target_and_censors():
    # base 0; best method ends at 1.0 (mean over its seeds) -> reference improvement 1.0
    curves = {("fast", 0): [0.0, 1.0, 1.0], ("fast", 1): [0.0, 0.6, 1.0], ("slow", 0): [0.0, 0.2, 0.4]}
    out = analysis.convergence(pd.DataFrame(_rows(curves, "reward/r")))
    get = lambda algo, seed, m: out[(out.algorithm == algo) & (out.seed == seed) & (out.metric == m)]["value"].item()  # noqa: E731
    assert get("fast", 0, "convergence/samples_to_50") == 5.0  # halfway between 0 and 10
    assert np.isclose(get("fast", 1, "convergence/samples_to_80"), 10 + 10 * (0.2 / 0.4))
    assert get("fast", 0, "convergence/seconds_to_50") == 10.0  # 2 s per sample here
    assert get("slow", 0, "convergence/reached_50") == 0.0
    assert np.isnan(get("slow", 0, "convergence/samples_to_50"))
    assert np.isclose(get("slow", 0, "convergence/normalized_auc"), 0.5 * (0.1 + 0.3))


def test_no_improvement_gives_undefined_convergence():
    curves = {("a", 0): [0.5, 0.4, 0.3]}
    out = analysis.convergence(pd.DataFrame(_rows(curves, "reward/r")))
    assert np.isnan(out["value"]).all()


def test_matched_quality_and_collapse():
    rewards = {("a", 0): [0.0, 0.5, 1.0], ("b", 0): [0.0, 0.8, 0.6]}
    fid = {("a", 0): [10.0, 20.0, 30.0], ("b", 0): [10.0, 50.0, 60.0]}
    vendi = {("a", 0): [4.0, 3.0, 1.0], ("b", 0): [4.0, 3.9, 3.8]}
    df = pd.DataFrame(_rows(rewards, "reward/r") + _rows(fid, "quality/fid") + _rows(vendi, "diversity/vendi"))
    matched = analysis.matched_quality(df, ["quality/fid"])
    level = matched[matched.metric == "matched/reward_level"]["value"].item()
    assert level == 0.8  # the highest reward both runs reach
    fid_a = matched[(matched.algorithm == "a") & (matched.metric == "matched/quality/fid")]["value"].item()
    assert np.isclose(fid_a, 20.0 + 10.0 * (0.3 / 0.5))
    onset = analysis.collapse(df, "diversity/vendi", fraction=0.5)
    a = onset[(onset.algorithm == "a") & (onset.metric == "collapse/onset")]["value"].item()
    assert a == 20.0
    b = onset[(onset.algorithm == "b") & (onset.metric == "collapse/collapsed")]["value"].item()
    assert b == 0.0
