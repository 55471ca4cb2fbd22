"""Collapse along training: when diversity falls away from the base model's, and quality compared
at matched reward (the PCPO protocol: a method that reaches a reward by collapsing should not look
better than one that reaches it while keeping quality and diversity).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from t2i_rl_bench.metrics.convergence import first_crossing


def collapse_onset(checkpoints, diversity, base_diversity: float, fraction: float = 0.5) -> float | None:
    """The first checkpoint (e.g. samples seen) whose diversity is below fraction * base_diversity,
    or None when the run never collapses that far. No interpolation: onset is a checkpoint."""
    x, d = np.asarray(checkpoints, dtype=float), np.asarray(diversity, dtype=float)
    if x.shape != d.shape:
        raise ValueError(f"checkpoints {x.shape} and diversity {d.shape} differ in shape")
    below = np.flatnonzero(d < fraction * base_diversity)
    return float(x[below[0]]) if below.size else None


def matched_reward_level(rewards_per_run: Iterable) -> float:
    """The highest reward every run reaches: min over runs of each run's max reward."""
    return float(min(np.max(np.asarray(r, dtype=float)) for r in rewards_per_run))


def metric_at_reward(rewards, metric, level: float) -> float:
    """A metric (FID, Vendi score, ...) read along a run's checkpoints at the moment its reward
    first reaches `level`, interpolated linearly between the two checkpoints around that crossing
    (the same rule as `convergence.samples_to_reach`); NaN when the run never reaches it."""
    r, m = np.asarray(rewards, dtype=float), np.asarray(metric, dtype=float)
    if r.shape != m.shape or r.ndim != 1:
        raise ValueError(f"rewards {r.shape} and metric {m.shape} must be 1-D of the same length")
    pos = first_crossing(r, level)
    return float("nan") if np.isnan(pos) else float(np.interp(pos, np.arange(r.size), m))


def metric_at_matched_reward(runs: dict[str, tuple]) -> tuple[float, dict[str, float]]:
    """`runs` maps a run (or method) name to its (rewards, metric) checkpoint series. Returns the
    matched reward level and each run's metric at that level."""
    level = matched_reward_level(rewards for rewards, _ in runs.values())
    return level, {name: metric_at_reward(r, m, level) for name, (r, m) in runs.items()}


def decay_rate(generations, values) -> float:
    """The rate at which a measure changes along the self-consuming loop: the ordinary
    least-squares slope of `values` on `generations` (units per generation; Shumailov et al. 2024
    and Alemohammad et al. 2024 plot each measure against the generation). One number per run;
    its interval comes from the spread over seeds (the slopes of independent seeds are
    independent). NaN values (an undefined measure) are left out; NaN with fewer than 2 points."""
    x, y = np.asarray(generations, dtype=float).ravel(), np.asarray(values, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"generations {x.shape} and values {y.shape} differ in shape")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if np.unique(x).size < 2:
        return float("nan")
    xc = x - x.mean()
    return float(np.sum(xc * (y - y.mean())) / np.sum(xc**2))


# The collapse rule of the self-consuming loop (docs/mechanisms.md#collapse-rule), calibrated on the
# fully synthetic loop, where collapse is known to happen (Shumailov et al. 2024; Alemohammad et al.
# 2024): in config/recursive.yaml's reduced run (2 methods, 2 seeds) the fully synthetic loop's FID
# rose by +9.5 and +15 per generation, the loop with half real data by +0.06 to +0.12. The
# threshold is half the smallest fully synthetic slope: 40 times the real-data loop's largest.
COLLAPSE_FID_SLOPE = 5.0  # FID units per generation


def loop_collapsed(fid_slope: float, threshold: float = COLLAPSE_FID_SLOPE) -> float:
    """The collapse rule for one loop (one run and variant): 1.0 when its FID rises faster than
    `threshold` per generation (least-squares slope over generations 0..G), 0.0 when not, NaN when
    the slope is undefined. Averaged over seeds it is the rate at which a method's loop collapses."""
    return float("nan") if not np.isfinite(fid_slope) else float(fid_slope > threshold)


def calibrated_threshold(synthetic_slopes, control_slopes) -> tuple[float, bool]:
    """The rule's threshold from a study's own loops: half the smallest method-mean FID slope of
    the fully synthetic loop (`synthetic_slopes`: one mean per method), and whether it lies above
    every method-mean slope of a loop with real data (`control_slopes`), i.e. whether the rule
    separates the loop that collapses from the one that should not. (NaN, False) without data."""
    syn = np.asarray([s for s in synthetic_slopes if np.isfinite(s)], dtype=float)
    ctl = np.asarray([s for s in control_slopes if np.isfinite(s)], dtype=float)
    if syn.size == 0:
        return float("nan"), False
    threshold = float(syn.min() / 2)
    return threshold, bool(threshold > 0 and (ctl.size == 0 or threshold > ctl.max()))
