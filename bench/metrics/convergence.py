"""Convergence of a run: held-out eval reward y at checkpoints x (samples seen, or device-seconds).

Rewards are "higher is better" (negate a cost first). The reference improvement is
`reference - base`: `base` is the base model's reward, `reference` the best reward of the study
(e.g. the best final reward over methods). Sample efficiency is reported as samples to reach a
fraction of that improvement (Agarwal et al. 2021 and the DDPO/Flow-GRPO curves read the same
way), censored when the run never gets there, and as a normalised area under the curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def first_crossing(y, level: float) -> float:
    """Fractional checkpoint index at which the sequence y first reaches `level` (y >= level),
    linearly interpolated between the checkpoint before and the first one at or above it; NaN if
    it never does. `np.interp(pos, np.arange(len(y)), z)` then reads any other series z (samples
    seen, FID, ...) at that moment."""
    y = np.asarray(y, dtype=float)
    above = np.flatnonzero(y >= level)
    if above.size == 0:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return 0.0
    return (i - 1) + (level - y[i - 1]) / (y[i] - y[i - 1])


@dataclass(frozen=True)
class Crossing:
    fraction: float  # of the reference improvement
    target: float  # reward level: base + fraction * (reference - base)
    samples: float  # x at which the curve first reaches target; NaN when censored
    censored: bool  # never reached within the run (a right-censored observation)


def _check_curve(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"x and y must be 1-D of the same non-zero length, got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError("x (samples seen) must be strictly increasing")
    return x, y


def samples_to_reach(x, y, base: float, reference: float, fraction: float) -> Crossing:
    """Samples seen when the eval reward first reaches base + fraction * (reference - base),
    interpolated linearly between checkpoints; censored (NaN, censored=True) when never reached."""
    x, y = _check_curve(x, y)
    if not reference > base:
        raise ValueError(f"reference reward {reference} must exceed base reward {base}")
    target = base + fraction * (reference - base)
    pos = first_crossing(y, target)
    if np.isnan(pos):
        return Crossing(fraction, target, float("nan"), True)
    return Crossing(fraction, target, float(np.interp(pos, np.arange(x.size), x)), False)


def samples_to_fractions(x, y, base: float, reference: float, fractions=(0.5, 0.8, 0.9)) -> dict[float, Crossing]:
    """`samples_to_reach` at each fraction of the reference improvement (50/80/90% by default)."""
    return {f: samples_to_reach(x, y, base, reference, f) for f in fractions}


def normalized_auc(x, y, base: float, reference: float, x_range: tuple[float, float] | None = None) -> float:
    """Area under the reward curve with x rescaled to [0, 1] over `x_range` (default: the curve's
    own first and last checkpoint) and the reward rescaled to (y - base) / (reference - base), by
    the trapezoid rule between checkpoints: 0 = never left the base model, 1 = at the reference
    from the start. Compare methods over the same `x_range` (the study's budget)."""
    x, y = _check_curve(x, y)
    if not reference > base:
        raise ValueError(f"reference reward {reference} must exceed base reward {base}")
    lo, hi = (x[0], x[-1]) if x_range is None else map(float, x_range)
    if not (x[0] <= lo < hi <= x[-1]):
        raise ValueError(f"x_range ({lo}, {hi}) must lie inside the curve's checkpoints [{x[0]}, {x[-1]}]")
    inside = (x > lo) & (x < hi)
    xs = np.concatenate([[lo], x[inside], [hi]])
    ys = np.interp(xs, x, y)
    return float(np.trapezoid((ys - base) / (reference - base), (xs - lo) / (hi - lo)))
