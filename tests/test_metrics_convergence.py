import math

import numpy as np
import pytest

from t2i_rl_bench.metrics import convergence as cv

X = [0, 100, 200, 300, 400]
Y = [0.2, 0.4, 0.6, 0.8, 0.8]  # linear from 0.2 to 0.8 over 300 samples, then flat


def test_samples_to_reach_interpolates_between_checkpoints():
    out = cv.samples_to_fractions(X, Y, base=0.2, reference=1.0, fractions=(0.5, 0.8, 0.9))
    half = out[0.5]
    assert half.target == pytest.approx(0.6) and half.samples == pytest.approx(200.0) and not half.censored
    assert out[0.8].target == pytest.approx(0.84) and out[0.8].censored and math.isnan(out[0.8].samples)
    q = cv.samples_to_reach(X, Y, base=0.2, reference=0.8, fraction=0.25)  # target 0.35
    assert q.samples == pytest.approx(75.0)
    assert cv.samples_to_reach(X, Y, base=0.0, reference=1.0, fraction=0.1).samples == 0.0  # reached at start


def test_first_reaching_counts_not_the_last():
    y = [0.0, 1.0, 0.0, 1.0]
    assert cv.samples_to_reach([0, 10, 20, 30], y, 0.0, 1.0, 0.5).samples == pytest.approx(5.0)
    assert math.isnan(cv.first_crossing(y, 2.0))


def test_normalized_auc_known_curves():
    assert cv.normalized_auc([0, 1], [0.0, 1.0], base=0.0, reference=1.0) == pytest.approx(0.5)
    assert cv.normalized_auc([0, 50, 100], [1.0, 1.0, 1.0], base=0.0, reference=1.0) == pytest.approx(1.0)
    assert cv.normalized_auc([0, 50, 100], [0.5, 0.5, 0.5], base=0.5, reference=1.0) == pytest.approx(0.0)
    # curve of Y over [0, 400]: normalised reward 0, .25, .5, .75, .75 at u = 0, .25, ..., 1
    assert cv.normalized_auc(X, Y, base=0.2, reference=1.0) == pytest.approx(0.25 * (0.125 + 0.375 + 0.625 + 0.75))
    # a sub-range with an interpolated end: over [0, 150], y goes 0.2 -> 0.5 linearly
    assert cv.normalized_auc(X, Y, 0.2, 1.0, x_range=(0, 150)) == pytest.approx(0.5 * 0.3 / 0.8)


def test_bad_inputs_fail():
    with pytest.raises(ValueError):
        cv.samples_to_reach([0, 0, 1], [0, 1, 2], 0.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        cv.normalized_auc(X, Y, base=1.0, reference=1.0)
    with pytest.raises(ValueError):
        cv.normalized_auc(X, Y, 0.2, 1.0, x_range=(0, 500))
    assert np.isfinite(cv.normalized_auc(X, Y, 0.2, 1.0, x_range=(100, 400)))
