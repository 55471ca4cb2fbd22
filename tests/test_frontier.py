"""The reward-quality frontier reads each run's curve at declared levels (docs/study.md#the-reward-quality-frontier)."""

import re

import numpy as np
import pandas as pd
import pytest

from t2i_rl_bench import frontier, report

STATS = {"confidence": 0.95, "interval": "t"}


def test_readings_on_a_known_curve():
    # checkpoints (drift, gain): base (0, 0), (2, 0.02), (6, 0.03), (4, 0.01)
    drift, gain = [0, 2, 6, 4], [0, 0.02, 0.03, 0.01]
    # within drift 4 the best point lies on the segment (2, .02)-(6, .03) at drift 4: gain .025
    assert frontier.gain_at_drift(drift, gain, 4.0) == pytest.approx(0.025, abs=1e-3)
    assert frontier.gain_at_drift(drift, gain, 10.0) == pytest.approx(0.03)
    assert frontier.gain_at_drift([0, 5], [0, 0.01], 1.0) == pytest.approx(0.002, abs=2e-4)
    # gain 0.01 is first reached at drift 1 (on the first segment)
    assert frontier.drift_at_gain(drift, gain, 0.01) == pytest.approx(1.0, abs=0.05)
    assert np.isnan(frontier.drift_at_gain(drift, gain, 0.05))  # never reached


def _rows(slopes: dict[str, float], seeds=range(6)) -> pd.DataFrame:
    """FID drifts `slope` per unit of gain for each method; CLIP score falls alike; seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for a, slope in slopes.items():
        for s in seeds:
            shift = rng.normal(0, 0.1)
            for b, g in ((0, 0.0), (64, 0.01), (128, 0.02), (256, 0.03)):
                gain = g * (1 + 0.05 * shift) if b else 0.0
                values = {"reward/r": 0.8 + gain, "quality/fid": 14 + slope * g + (shift if b else 0)}
                values["quality/clip_score"] = 65 - 100 * g
                for m, v in values.items():
                    rows.append(
                        {"model": "m", "reward": "r", "algorithm": a, "seed": s, "budget": b, "metric": m, "value": v}
                    )
    return pd.DataFrame(rows)


def test_a_method_that_drifts_less_wins_at_matched_gain_and_drift(tmp_path):
    cfg = {
        "analysis": {
            "frontier": {
                "drift_levels": {"quality/fid": [2.0]},
                "gain_levels": {"r": [0.015, 0.5]},
            },  # 0.5: a level no run reaches
        }
    }
    rows = _rows({"calm": 50.0, "wild": 500.0})
    summ = frontier.write(cfg, rows, STATS, tmp_path, lambda notes: "".join(f"# {n}\n" for n in notes))
    s = summ[summ["level"] != 0.5].set_index(["reading", "metric", "method"])
    # calm: FID +0.5 per 0.01 gain; at drift <= 2 it keeps its whole 0.03; wild reaches drift 2 at gain 0.004
    assert s.loc[("gain_at_drift", "quality/fid", "calm"), "mean"] == pytest.approx(0.03, abs=2e-3)
    assert s.loc[("gain_at_drift", "quality/fid", "wild"), "mean"] < 0.01
    assert (
        s.loc[("drift_at_gain", "quality/fid", "calm"), "mean"]
        < s.loc[("drift_at_gain", "quality/fid", "wild"), "mean"]
    )
    pairs = pd.read_csv(tmp_path / "frontier_pairs.csv", comment="#")
    fid = pairs[(pairs["metric"] == "quality/fid") & (pairs["level"] != 0.5)]
    assert fid["significant"].all() and (fid["test"] == "paired t").all()
    html = frontier.section(tmp_path)
    assert "Reward-quality frontier" in html and "data:image/png;base64" in html and "Holm-significant" in html
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert cells and not [c for c in cells if "nan" in c.lower()]  # a level never reached shows the missing mark
    assert summ["mean"].isna().any() and report.MISSING in cells


def test_no_curve_no_frontier(tmp_path):
    rows = _rows({"a": 1.0})
    one = rows[rows["budget"].isin([0])]
    assert frontier.write({}, one, STATS, tmp_path, lambda n: "").empty
    assert frontier.section(tmp_path) == ""


def test_frontier_readings_feed_the_derived_table_and_a_verdict():
    from t2i_rl_bench import verdicts

    cfg = {
        "statistics": {**STATS, "bootstrap_resamples": 200, "seed": 0},
        "analysis": {"frontier": {"drift_levels": {"quality/fid": [2.0]}, "gain_levels": {"r": [0.015]}}},
        "verdicts": {
            "claims": [
                {
                    "id": "f",
                    "claim": "calm keeps more gain within FID drift 2",
                    "method": "calm",
                    "over": "wild",
                    "measure": "derived:frontier/gain_at_drift/quality/fid/2",
                },
                {
                    "id": "g",
                    "claim": "calm drifts less at gain 0.015",
                    "method": "calm",
                    "over": "wild",
                    "measure": "derived:frontier/drift_at_gain/quality/fid/0.015",
                },
            ]
        },
    }
    rows = _rows({"calm": 50.0, "wild": 500.0}).assign(status="finished")
    derived = frontier.derived_rows(cfg, rows)
    assert set(derived["metric"]) >= {
        "frontier/gain_at_drift/quality/fid/2",
        "frontier/drift_at_gain/quality/fid/0.015",
    }
    empty = pd.DataFrame(columns=rows.columns)
    out = verdicts.evaluate(cfg, verdicts.Tables(rows, empty, derived, empty)).set_index("id")
    assert out.loc["f", "verdict"] == "supported" and out.loc["f", "better"] == "higher"
    assert out.loc["g", "verdict"] == "supported" and out.loc["g", "better"] == "lower"
