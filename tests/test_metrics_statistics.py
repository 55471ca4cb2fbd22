import numpy as np
import pytest

from bench.metrics import statistics as st


def _coverage(n_seeds: int, studies: int = 300, **kwargs) -> float:
    rng = np.random.default_rng(123)
    hits = 0
    for s in range(studies):
        x = rng.normal(2.0, 3.0, n_seeds)
        _, low, high = st.bootstrap_ci(x, n_resamples=2000, seed=s, **kwargs)
        hits += low <= 2.0 <= high
    return hits / studies


def test_mean_ci_covers_true_mean_at_about_nominal_rate():
    coverage = _coverage(10)
    assert 0.88 <= coverage <= 0.99, coverage


def test_expanded_interval_is_closer_to_nominal():
    plain, expanded = _coverage(10), _coverage(10, expanded=True)
    assert expanded >= plain
    assert 0.92 <= expanded <= 0.98, expanded


def test_intervals_are_seeded_and_contain_the_point():
    x = [0.1, 0.5, 0.3, 0.9, 0.4]
    a, b = st.mean_ci(x, seed=3), st.mean_ci(x, seed=3)
    assert a == b
    assert a.low <= a.point <= a.high
    assert a.point == pytest.approx(np.mean(x))


def test_small_n():
    one = st.mean_ci([0.7])
    assert one.point == 0.7 and np.isnan(one.low) and np.isnan(one.high) and one.n == 1
    two = st.mean_ci([1.0, 3.0])
    assert two.point == 2.0 and (two.low, two.high) == (1.0, 3.0)
    flat = st.mean_ci([0.5, 0.5, 0.5])
    assert (flat.low, flat.high) == (0.5, 0.5)


def test_iqm_trims_a_quarter_each_side_and_seed_summary_switches():
    x = [100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -100.0]
    assert st.iqm(x) == pytest.approx(3.5)  # the middle four: 2, 3, 4, 5
    assert st.seed_summary(x).statistic == "iqm"
    assert st.seed_summary(x[:4]).statistic == "mean"


def test_probability_of_improvement():
    rng = np.random.default_rng(0)
    same = st.probability_of_improvement_ci(rng.normal(size=200), rng.normal(size=200), n_resamples=500)
    assert same.point == pytest.approx(0.5, abs=0.06)
    assert same.low < 0.5 < same.high
    apart = st.probability_of_improvement_ci([10.0, 11, 12], [0.0, 1, 2])
    assert (apart.point, apart.low, apart.high) == (1.0, 1.0, 1.0)
    assert st.probability_of_improvement([0.0, 1, 2], [10.0, 11, 12]) == 0.0
    assert st.probability_of_improvement([1.0, 1.0], [1.0, 1.0]) == 0.5  # ties count a half
    assert st.probability_of_improvement([1.0, 3.0], [2.0]) == 0.5
    assert np.isnan(st.probability_of_improvement_ci([1.0], [0.0, 2.0]).low)
