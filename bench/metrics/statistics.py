"""Statistics across seeds: a point estimate with a 95% bootstrap confidence interval, the
interquartile mean, and the probability of improvement (Agarwal et al. 2021, "Deep Reinforcement
Learning at the Edge of the Statistical Precipice", the rliable library).

Every interval is a seeded percentile bootstrap through `scipy.stats.bootstrap`, so a table
rebuilt from the same numbers shows the same intervals. Measured coverage of the plain 95%
percentile interval for the mean of normal data (2,000 simulated studies, 2,000 resamples): 0.50
with 2 seeds, 0.75 with 3, 0.84 with 5, 0.91 with 10; the bootstrap cannot see the spread of a
tiny sample. With `expanded=True` the interval uses Hesterberg's small-sample correction: 0.92
with 5 seeds, 0.95 with 10, and no help below 4 seeds (a percentile interval never leaves the
range of the resampled statistic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval; `low`/`high` are NaN when n < 2."""

    point: float
    low: float
    high: float
    n: int
    statistic: str  # "mean", "iqm" or "poi"


def iqm(values, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% of the values, i.e. a 25%-trimmed mean
    (Agarwal et al. 2021, Sec. 4; rliable `metrics.aggregate_iqm`). Robust to one outlying seed,
    and less noisy than the median; the study uses it from 5 seeds up."""
    return stats.trim_mean(np.asarray(values, dtype=float), proportiontocut=0.25, axis=axis)


def _expanded_level(confidence_level: float, n: int) -> float:
    """Hesterberg's expanded percentile interval (2015, "What teachers should know about the
    bootstrap", The American Statistician 69(4)): the percentile interval is too narrow by about
    sqrt((n-1)/n) and by using z instead of t; widen it by taking the percentiles at alpha' with
    z_{alpha'/2} = sqrt(n/(n-1)) t_{alpha/2, n-1}."""
    alpha = 1.0 - confidence_level
    z = np.sqrt(n / (n - 1)) * stats.t.ppf(1 - alpha / 2, n - 1)
    return 1.0 - 2.0 * stats.norm.sf(z)


def bootstrap_ci(
    values,
    statistic: Callable = np.mean,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    expanded: bool = False,
) -> tuple[float, float, float]:
    """(point, low, high): a seeded percentile bootstrap over seeds (Efron & Tibshirani 1993,
    Ch. 13; `scipy.stats.bootstrap(method="percentile")`, rliable's default method).

    n = 1: the point with a NaN interval (one seed says nothing about the spread).
    n = 2: the interval is the range of the two values (resampled means only take 3 values).
    `statistic` must accept `axis` (numpy reductions and `iqm` do)."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    point = float(statistic(x, axis=-1))
    if x.size == 1:
        return point, float("nan"), float("nan")
    level = _expanded_level(confidence_level, x.size) if expanded else confidence_level
    res = stats.bootstrap(
        (x,),
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        method="percentile",
        confidence_level=level,
        rng=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(values, **kwargs) -> Interval:
    """Mean over seeds with a 95% percentile-bootstrap interval (see `bootstrap_ci`)."""
    point, low, high = bootstrap_ci(values, np.mean, **kwargs)
    return Interval(point, low, high, int(np.size(values)), "mean")


def iqm_ci(values, **kwargs) -> Interval:
    """Interquartile mean over seeds with a 95% percentile-bootstrap interval (rliable)."""
    point, low, high = bootstrap_ci(values, iqm, **kwargs)
    return Interval(point, low, high, int(np.size(values)), "iqm")


def seed_summary(values, iqm_from: int = 5, **kwargs) -> Interval:
    """A table cell: the IQM with its interval from `iqm_from` seeds up, else the mean (with
    fewer than 5 seeds the 25% trim removes nothing or too much)."""
    return iqm_ci(values, **kwargs) if np.size(values) >= iqm_from else mean_ci(values, **kwargs)


def probability_of_improvement(x, y, axis: int = -1) -> np.ndarray | float:
    """P(X > Y) + 0.5 P(X = Y) over all pairs of a run of method X and a run of method Y: the
    Mann-Whitney U statistic divided by m*n (Agarwal et al. 2021, Sec. 4, "probability of
    improvement"; rliable `metrics.probability_of_improvement` for one task). Higher = X better."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)[..., :, None]
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)[..., None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def probability_of_improvement_ci(
    x, y, confidence_level: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> Interval:
    """Probability of improvement of X over Y with a percentile-bootstrap interval that resamples
    the seeds of each method independently (rliable's stratified bootstrap, one task).
    NaN interval when either method has a single seed."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    point = float(probability_of_improvement(x, y))
    n = min(x.size, y.size)
    if n < 2:
        return Interval(point, float("nan"), float("nan"), n, "poi")
    res = stats.bootstrap(
        (x, y),
        probability_of_improvement,
        n_resamples=n_resamples,
        vectorized=True,
        paired=False,
        method="percentile",
        confidence_level=confidence_level,
        rng=np.random.default_rng(seed),
    )
    return Interval(point, float(res.confidence_interval.low), float(res.confidence_interval.high), n, "poi")
