"""Statistics across seeds: a point estimate with its confidence interval, the interquartile
mean, the probability of improvement, performance profiles (Agarwal et al. 2021, "Deep
Reinforcement Learning at the Edge of the Statistical Precipice", the rliable library), Holm's
correction for many comparisons and censoring-aware summaries of time-to-target.

Which interval a table shows is a setting (`statistics.interval`): `t` (default), `bootstrap`
or `bca`. Measured coverage of the nominal 95% interval for the mean (simulated studies; normal
data / right-skewed gamma(4) data, skewness 1):

    seeds                          3            5            10
    t (default, 2,000 studies)     0.952/0.931  0.950/0.932  0.951/0.938
    bootstrap (expanded, 1,000)    0.753/0.726  0.916/0.901  0.936/0.928
    bca (1,000)                    0.721/0.694  0.829/0.822  0.885/0.886

More skew costs the t interval too (gamma(2), skewness 1.4: 0.92; exponential: 0.89). The plain
percentile bootstrap covers 0.50 with 2 seeds, 0.75 with 3, 0.84 with 5, 0.91 with 10: it cannot
see the spread of a tiny sample; Hesterberg's expansion helps from 5 seeds up, and BCa is no
better than the percentile interval at 3-10 seeds. Every bootstrap is seeded, so a table rebuilt
from the same numbers shows the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from t2i_rl_bench.models.imports import LazyModule

# scipy imported where first used, not by every job importing this (docs/performance.md#start-up-the-assess-job)
optimize = LazyModule("scipy.optimize")
stats = LazyModule("scipy.stats")


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


# ---- the study's interval, by setting -------------------------------------------------------

INTERVALS = ("t", "bootstrap", "bca")
INTERVAL_NAMES = {
    "t": "Student-t interval over seeds",
    "bootstrap": "expanded percentile bootstrap over seeds (Hesterberg 2015)",
    "bca": "BCa bootstrap over seeds (Efron 1987)",
}


def describe_interval(method: str, confidence_level: float) -> str:
    """The words a table header and the report use for the interval, e.g. '95% Student-t ...'."""
    return f"{100 * confidence_level:g}% {INTERVAL_NAMES[method]}"


def t_interval(values, confidence_level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): mean +- t_{1-alpha/2, n-1} s / sqrt(n) (Student 1908). Exact for normal
    data at any n >= 2; NaN interval for n = 1."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    point = float(x.mean())
    if x.size == 1:
        return point, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence_level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return point, float(point - half), float(point + half)


def interval(
    values, method: str = "t", confidence_level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """The mean over seeds with the interval named by `method` (see `INTERVALS`)."""
    x = np.asarray(values, dtype=float).ravel()
    if method == "t":
        point, low, high = t_interval(x, confidence_level)
    elif method == "bootstrap":
        point, low, high = bootstrap_ci(x, np.mean, confidence_level, n_resamples, seed, expanded=x.size >= 2)
    elif method == "bca":
        point = float(x.mean())
        if x.size < 2 or np.ptp(x) == 0:
            low = high = float("nan") if x.size < 2 else point
        else:
            res = stats.bootstrap(
                (x,),
                np.mean,
                n_resamples=n_resamples,
                vectorized=True,
                method="BCa",
                confidence_level=confidence_level,
                rng=np.random.default_rng(seed),
            )
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    else:
        raise ValueError(f"interval method must be one of {INTERVALS}, got {method!r}")
    return Interval(point, low, high, int(x.size), "mean")


@dataclass(frozen=True)
class Difference:
    """mean(x) - mean(y) with its interval and a two-sided p-value: Welch's t-test for two
    independent groups, the paired t-test on per-seed differences when `paired` (n_x = n_y = the
    number of pairs). `sd`: the standard deviation the test's standard error is made of (of the
    per-seed differences when paired; Welch: sqrt((s_x^2 + s_y^2) / 2)), what the minimum
    detectable difference is computed from."""

    effect: float
    low: float
    high: float
    p_value: float
    n_x: int
    n_y: int
    paired: bool = False
    sd: float = float("nan")

    @property
    def test(self) -> str:
        return "paired t" if self.paired else "Welch t"


def difference(
    x, y, method: str = "t", confidence_level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Difference:
    """Difference of means of two independent groups of seeds. `t`: Welch's interval
    (Welch-Satterthwaite degrees of freedom); `bootstrap`/`bca`: seeds of each group resampled
    independently. The p-value is always Welch's, so Holm's correction sees one kind of test.
    NaN interval and p when a group has fewer than 2 values."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    nan = float("nan")
    if x.size == 0 or y.size == 0:
        return Difference(nan, nan, nan, nan, int(x.size), int(y.size))
    effect = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Difference(effect, nan, nan, nan, int(x.size), int(y.size))
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = np.sqrt(vx + vy)
    sd = float(np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2))
    if se == 0:
        return Difference(effect, effect, effect, 1.0 if effect == 0 else 0.0, int(x.size), int(y.size), sd=sd)
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    p = float(2 * stats.t.sf(abs(effect) / se, df))
    if method == "t":
        half = stats.t.ppf(0.5 + confidence_level / 2, df) * se
        low, high = effect - half, effect + half
    elif method in ("bootstrap", "bca"):
        res = stats.bootstrap(
            (x, y),
            lambda a, b, axis=-1: a.mean(axis) - b.mean(axis),
            n_resamples=n_resamples,
            vectorized=True,
            paired=False,
            confidence_level=confidence_level,
            method="percentile" if method == "bootstrap" else "BCa",
            rng=np.random.default_rng(seed),
        )
        low, high = res.confidence_interval.low, res.confidence_interval.high
    else:
        raise ValueError(f"interval method must be one of {INTERVALS}, got {method!r}")
    return Difference(effect, float(low), float(high), p, int(x.size), int(y.size), sd=sd)


def paired_difference(
    x, y, method: str = "t", confidence_level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Difference:
    """mean(x - y) over pairs (x[i], y[i]): two methods run on the same seeds, so with the same
    training prompts, initial noise and evaluation noise. The p-value is the paired t-test's
    (Student 1908: t = mean(d) / (sd(d) / sqrt(n)), n - 1 degrees of freedom); the interval is
    the t interval of the differences (`t`) or a bootstrap that resamples whole pairs (seeds:
    `bootstrap`, Hesterberg's expanded percentile, or `bca`). Pairs with a non-finite member are
    left out. Where the seeds' results are positively correlated the paired test has the smaller
    standard error (sd(d)^2 = s_x^2 + s_y^2 - 2 cov); uncorrelated, it loses only degrees of freedom."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired_difference needs pairs: {x.size} values against {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    n, nan = int(d.size), float("nan")
    if n == 0:
        return Difference(nan, nan, nan, nan, 0, 0, paired=True)
    effect = float(d.mean())
    if n < 2:
        return Difference(effect, nan, nan, nan, n, n, paired=True)
    sd = float(d.std(ddof=1))
    if sd == 0:
        return Difference(effect, effect, effect, 1.0 if effect == 0 else 0.0, n, n, paired=True, sd=0.0)
    se = sd / np.sqrt(n)
    p = float(2 * stats.t.sf(abs(effect) / se, n - 1))
    if method == "t":
        half = stats.t.ppf(0.5 + confidence_level / 2, n - 1) * se
        low, high = effect - half, effect + half
    elif method == "bootstrap":
        _, low, high = bootstrap_ci(d, np.mean, confidence_level, n_resamples, seed, expanded=True)
    elif method == "bca":
        low, high = interval(d, "bca", confidence_level, n_resamples, seed)[1:3]
    else:
        raise ValueError(f"interval method must be one of {INTERVALS}, got {method!r}")
    return Difference(effect, float(low), float(high), p, n, n, paired=True, sd=sd)


def compare(
    x: dict,
    y: dict,
    method: str = "t",
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    pairing: str = "auto",
) -> Difference:
    """mean(x) - mean(y) of two methods' per-seed values ({seed: value}). `pairing`: `auto`
    pairs by seed when the two share every seed that has a value (the methods of one study do:
    same seeds, same prompts and noise), else Welch's test on the two groups; `paired` always
    pairs (on the shared seeds only); `unpaired` never does."""
    if pairing not in ("auto", "paired", "unpaired"):
        raise ValueError(f"pairing must be auto, paired or unpaired, got {pairing!r}")
    fx = {k: float(v) for k, v in x.items() if np.isfinite(v)}
    fy = {k: float(v) for k, v in y.items() if np.isfinite(v)}
    shared = sorted(set(fx) & set(fy))
    pair = pairing == "paired" or (pairing == "auto" and len(shared) >= 2 and set(fx) == set(fy))
    if pair:
        return paired_difference(
            [fx[k] for k in shared], [fy[k] for k in shared], method, confidence_level, n_resamples, seed
        )
    return difference(list(fx.values()), list(fy.values()), method, confidence_level, n_resamples, seed)


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (Schuirmann 1987) of |mean(x) - mean(y)| < margin: p = the larger of
    the two one-sided p-values; equivalent at level alpha when p < alpha, which is the same as
    the (1 - 2 alpha) interval of the difference lying inside (-margin, margin)."""

    effect: float
    margin: float
    p_value: float
    low: float  # the (1 - 2 alpha) interval, e.g. 90% for alpha 0.05
    high: float
    n: int
    paired: bool


def tost(diff: Difference, margin: float, alpha: float = 0.05) -> Equivalence:
    """TOST from a `Difference` (paired or Welch): t_lower = (effect + margin) / se, t_upper =
    (effect - margin) / se with the difference's own standard error and degrees of freedom.
    NaN p when the difference has no standard error (fewer than 2 seeds); a zero standard error
    gives p 0 inside the margin, 1 outside."""
    nan = float("nan")
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin!r}")
    n = min(diff.n_x, diff.n_y)
    if not (np.isfinite(diff.effect) and np.isfinite(diff.sd)) or n < 2:
        return Equivalence(diff.effect, margin, nan, nan, nan, n, diff.paired)
    if diff.paired:
        se, df = diff.sd / np.sqrt(n), n - 1
    else:  # Welch, from the pooled-as-average sd: se = sqrt((s_x^2 + s_y^2)/n) at equal n
        se = diff.sd * np.sqrt(1 / diff.n_x + 1 / diff.n_y) if diff.n_x == diff.n_y else nan
        df = diff.n_x + diff.n_y - 2
        if not np.isfinite(se):  # unequal groups: the conservative df and the larger variance share
            se = diff.sd * np.sqrt(2 / min(diff.n_x, diff.n_y))
            df = min(diff.n_x, diff.n_y) - 1
    if se == 0:
        inside = abs(diff.effect) < margin
        return Equivalence(diff.effect, margin, 0.0 if inside else 1.0, diff.effect, diff.effect, n, diff.paired)
    p_low = stats.t.sf((diff.effect + margin) / se, df)  # H0: effect <= -margin
    p_high = stats.t.cdf((diff.effect - margin) / se, df)  # H0: effect >= +margin
    half = stats.t.ppf(1 - alpha, df) * se
    return Equivalence(
        diff.effect, margin, float(max(p_low, p_high)), diff.effect - half, diff.effect + half, n, diff.paired
    )


def minimum_detectable_difference(
    sd: float, n: int, alpha: float = 0.05, power: float = 0.8, tests: int = 1, paired: bool = True
) -> float:
    """The smallest true difference a two-sided t-test at level alpha / `tests` (Bonferroni, the
    first and strictest step of Holm's procedure over `tests` comparisons) detects with
    probability `power`, given the seeds' standard deviation `sd` (of the per-seed differences
    when paired; of one method's seeds otherwise, two groups of n) and n seeds. Solved exactly on
    the noncentral t distribution (not the normal approximation), so it is honest at 5-10 seeds.
    NaN when n < 2 or sd is not finite."""
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    a = alpha / max(int(tests), 1)
    df = n - 1 if paired else 2 * n - 2
    scale = sd / np.sqrt(n) if paired else sd * np.sqrt(2 / n)
    crit = stats.t.ppf(1 - a / 2, df)

    def achieved(ncp: float) -> float:
        value = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
        return (1.0 if not np.isfinite(value) else value) - power  # far tails: scipy may give NaN

    hi = crit + 4.0
    while achieved(hi) < 0:
        hi += 4.0
    ncp = optimize.brentq(achieved, 0.0, hi, xtol=1e-10)
    return float(ncp * scale)


def power_of_test(delta: float, sd: float, n: int, alpha: float = 0.05, tests: int = 1, paired: bool = True) -> float:
    """The probability that the two-sided t-test of `minimum_detectable_difference` rejects when
    the true difference is `delta` (noncentral t)."""
    a = alpha / max(int(tests), 1)
    df = n - 1 if paired else 2 * n - 2
    scale = sd / np.sqrt(n) if paired else sd * np.sqrt(2 / n)
    crit = stats.t.ppf(1 - a / 2, df)
    ncp = delta / scale
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


# ---- proportions ----------------------------------------------------------------------------

PROPORTIONS = ("gold/pass", "convergence/reached_", "collapse/collapsed/", "collapse/loop_collapsed")


def is_proportion(metric: str) -> bool:
    """A per-run 0/1 outcome (a gold check passed, a target reached, a collapse): its mean over
    seeds is a proportion, whose interval must stay in [0, 1] (`wilson`)."""
    return any(str(metric).startswith(p) for p in PROPORTIONS)


def wilson(k: int, n: int, confidence_level: float = 0.95) -> tuple[float, float, float]:
    """(k/n, low, high): Wilson's score interval (1927) for a binomial proportion, inside [0, 1]
    by construction and close to nominal coverage at small n (Brown, Cai & DasGupta 2001), where
    the normal (Wald) interval p +- z sqrt(p(1-p)/n) leaves [0, 1] and has length 0 at k = n.
    NaN for n = 0."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    z = stats.norm.ppf(0.5 + confidence_level / 2)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return float(p), float(max(0.0, centre - half)), float(min(1.0, centre + half))


def clopper_pearson(k: int, n: int, confidence_level: float = 0.95) -> tuple[float, float, float]:
    """(k/n, low, high): the exact (Clopper & Pearson 1934) interval from the beta quantiles,
    coverage >= nominal for every p; 0 and 1 at k = 0 and k = n. NaN for n = 0."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    alpha = 1 - confidence_level
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return k / n, low, high


def proportion_interval(values, confidence_level: float = 0.95) -> Interval:
    """The mean of per-seed 0/1 outcomes with Wilson's interval; values other than 0 and 1 are a
    clear error (a proportion of something else is not a binomial count)."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError(f"proportion_interval needs 0/1 outcomes, got {sorted(set(x.tolist()))[:5]}")
    point, low, high = wilson(int(x.sum()), int(x.size), confidence_level)
    return Interval(point, low, high, int(x.size), "proportion")


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979): sort ascending, multiply the i-th smallest
    by (m - i), take the running maximum, cap at 1. Rejecting where adjusted p < alpha controls
    the family-wise error rate at alpha for any dependence between the tests. NaN stays NaN and
    does not count towards m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


# ---- aggregates across tasks (rliable) -------------------------------------------------------


def stratified_bootstrap(
    scores: list[np.ndarray],
    aggregate: Callable[[list[np.ndarray]], float],
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile interval of `aggregate(scores)` where `scores` holds one array of run scores per
    task (a method's seeds on each training reward); each resample draws runs with replacement
    within each task independently (rliable's `StratifiedBootstrap`), so every task keeps its
    weight. Tasks may have different numbers of runs."""
    arrays = [np.asarray(s, dtype=float).ravel() for s in scores]
    point = float(aggregate(arrays))
    n = sum(a.size for a in arrays)
    if min(a.size for a in arrays) < 2:
        return Interval(point, float("nan"), float("nan"), n, "aggregate")
    rng = np.random.default_rng(seed)
    draws = np.empty(n_resamples)
    for b in range(n_resamples):
        draws[b] = aggregate([a[rng.integers(0, a.size, a.size)] for a in arrays])
    alpha = 1 - confidence_level
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(low), float(high), n, "aggregate")


def aggregate_iqm(scores: list[np.ndarray]) -> float:
    """IQM over all runs of all tasks pooled (rliable `metrics.aggregate_iqm`: a 25%-trimmed mean
    of the runs x tasks score matrix, flattened)."""
    return float(iqm(np.concatenate([np.asarray(s, dtype=float).ravel() for s in scores])))


def performance_profile(scores: list[np.ndarray], taus) -> np.ndarray:
    """Run-score distribution (rliable `create_performance_profile`, Agarwal et al. Sec. 4): for
    each threshold tau, the fraction of all runs (pooled over tasks) whose score exceeds tau."""
    pooled = np.concatenate([np.asarray(s, dtype=float).ravel() for s in scores])
    return np.array([(pooled > tau).mean() for tau in np.asarray(taus, dtype=float)])


def probability_of_improvement_tasks(x: list[np.ndarray], y: list[np.ndarray]) -> float:
    """P(X > Y) averaged over tasks, each task's the U-statistic probability with ties counting
    a half (rliable `metrics.probability_of_improvement`)."""
    return float(np.mean([probability_of_improvement(np.ravel(a), np.ravel(b)) for a, b in zip(x, y)]))


def probability_of_improvement_tasks_ci(
    x: list[np.ndarray], y: list[np.ndarray], confidence_level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """`probability_of_improvement_tasks` with a stratified percentile bootstrap: the runs of X
    and of Y are resampled independently within each task (rliable)."""
    k = len(x)
    inter = stratified_bootstrap(
        [*x, *y], lambda s: probability_of_improvement_tasks(s[:k], s[k:]), confidence_level, n_resamples, seed
    )
    return Interval(inter.point, inter.low, inter.high, min(np.size(a) for a in [*x, *y]), "poi")


# ---- time to target with censoring ----------------------------------------------------------


@dataclass(frozen=True)
class Survival:
    """Kaplan-Meier summary of times to a target, some right-censored."""

    n: int
    reached: int  # runs that hit the target (events)
    median: float  # KM median time; NaN when fewer than half are known to have reached it
    restricted_mean: float  # integral of S(t) over [0, tau]: the mean of min(T, tau)
    tau: float


def kaplan_meier(times, reached, tau: float) -> Survival:
    """Kaplan-Meier estimate (1958) of S(t) = P(time to target > t) from `times` (the event time
    when `reached`, else the time at which the run stopped being watched), summarised by its
    median and its restricted mean up to `tau` (Royston & Parmar 2013): a censored run counts
    with the time it was watched, never dropped, so a slow method is not judged by its
    survivors. Without censoring the restricted mean is mean(min(T, tau))."""
    t = np.asarray(times, dtype=float).ravel()
    e = np.asarray(reached, dtype=bool).ravel()
    if t.shape != e.shape or t.size == 0:
        raise ValueError("times and reached must be non-empty and of the same length")
    order = np.lexsort((~e, t))  # at equal times, events before censorings (the usual convention)
    t, e = t[order], e[order]
    at_risk, s, surv_t, surv_s = t.size, 1.0, [0.0], [1.0]
    for ti, ei in zip(t, e):
        if ei:
            s *= 1 - 1 / at_risk
            surv_t.append(ti)
            surv_s.append(s)
        at_risk -= 1
    surv_t, surv_s = np.array(surv_t), np.array(surv_s)
    below = np.flatnonzero(surv_s <= 0.5)
    median = float(surv_t[below[0]]) if below.size else float("nan")
    edges = np.append(np.clip(surv_t, 0, tau), tau)  # S is a step function, right-continuous
    rmst = float(np.sum(surv_s * np.diff(edges)))
    return Survival(int(t.size), int(e.sum()), median, rmst, float(tau))
