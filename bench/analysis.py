"""Derived, per-seed results read off the evaluation curves: convergence (samples and seconds to
reach 50/80/90% of the reference improvement, normalised AUC), quality at matched reward (the
PCPO protocol) and collapse onset. They are summarised over seeds like every other metric."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.metrics.collapse import collapse_onset, matched_reward_level, metric_at_reward
from bench.metrics.convergence import normalized_auc, samples_to_reach

FRACTIONS = (0.5, 0.8, 0.9)
RUN = ["model", "reward", "algorithm", "seed"]


def _curves(seed_rows: pd.DataFrame, metric: str) -> dict[tuple, pd.Series]:
    part = seed_rows[seed_rows["metric"] == metric]
    return {key: g.set_index("budget")["value"].sort_index() for key, g in part.groupby(RUN)}


def _row(key: tuple, budget: int, metric: str, value: float, status: str = "finished") -> dict:
    return {**dict(zip(RUN, key)), "budget": budget, "metric": metric, "value": value, "status": status}


def convergence(seed_rows: pd.DataFrame) -> pd.DataFrame:
    """For each training reward: base = the base model's eval reward, reference = the best final
    eval reward over methods (mean over seeds); per run, the samples and device-seconds at which
    the curve first reaches base + f (reference - base), censored (NaN, reached = 0) if never."""
    out = []
    for (_, reward), part in seed_rows.groupby(["model", "reward"]):
        metric = f"reward/{reward}"
        curves = _curves(part, metric)
        seconds = _curves(part, "device_seconds")
        if not curves:
            continue  # a composite training reward has no single eval curve
        base = float(np.mean([c.iloc[0] for c in curves.values()]))
        finals = pd.Series({k: c.iloc[-1] for k, c in curves.items()})
        reference = float(finals.groupby(level=2).mean().max())  # best method, mean over seeds
        for key, curve in curves.items():
            x = curve.index.to_numpy(dtype=float)
            horizon = int(x[-1])
            if not reference > base:  # no method improved on the base model: nothing to reach
                out.append(_row(key, horizon, "convergence/normalized_auc", float("nan")))
                continue
            out.append(_row(key, horizon, "convergence/normalized_auc",
                            normalized_auc(x, curve.to_numpy(), base, reference, (0.0, x[-1]))))
            secs = seconds[key].reindex(curve.index).to_numpy(dtype=float)
            for f in FRACTIONS:
                hit = samples_to_reach(x, curve.to_numpy(), base, reference, f)
                tag = int(round(100 * f))
                out.append(_row(key, horizon, f"convergence/reached_{tag}", float(not hit.censored)))
                out.append(_row(key, horizon, f"convergence/samples_to_{tag}", hit.samples))
                sec = float(np.interp(hit.samples, x, secs)) if not hit.censored else float("nan")
                out.append(_row(key, horizon, f"convergence/seconds_to_{tag}", sec))
    return pd.DataFrame(out)


def matched_quality(seed_rows: pd.DataFrame, quality_metrics: list[str]) -> pd.DataFrame:
    """Quality metrics read at the highest eval reward every run of a (model, reward) reaches."""
    out = []
    for (model, reward), part in seed_rows.groupby(["model", "reward"]):
        rewards = _curves(part, f"reward/{reward}")
        if not rewards:
            continue
        level = matched_reward_level(c.to_numpy() for c in rewards.values())
        for metric in quality_metrics:
            values = _curves(part, metric)
            for key, r in rewards.items():
                if key in values:
                    m = values[key].reindex(r.index).to_numpy(dtype=float)
                    out.append(_row(key, int(r.index[-1]), f"matched/{metric}",
                                    metric_at_reward(r.to_numpy(), m, level)))
        out.append(_row((model, reward, "(all)", -1), int(max(r.index[-1] for r in rewards.values())),
                        "matched/reward_level", level))
    return pd.DataFrame(out)


def collapse(seed_rows: pd.DataFrame, diversity_metric: str, fraction: float = 0.5) -> pd.DataFrame:
    """First checkpoint whose diversity falls below `fraction` of the base model's (NaN: never)."""
    out = []
    for key, curve in _curves(seed_rows, diversity_metric).items():
        onset = collapse_onset(curve.index.to_numpy(), curve.to_numpy(), float(curve.iloc[0]), fraction)
        out.append(_row(key, int(curve.index[-1]), "collapse/onset", float("nan") if onset is None else onset))
        out.append(_row(key, int(curve.index[-1]), "collapse/collapsed", float(onset is not None)))
    return pd.DataFrame(out)
