import numpy as np
import pytest

from t2i_rl_bench.metrics import statistics as st


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


# ---- the study's interval: coverage at the study's number of seeds ---------------------------

DRAWS = 2000


def _t_coverage(draw, truth: float, n: int, method: str = "t") -> float:
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(DRAWS):
        ci = st.interval(draw(rng, n), method, 0.95, n_resamples=400, seed=i)
        hits += ci.low <= truth <= ci.high
    return hits / DRAWS


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("shape", ["normal", "skewed"])
def test_the_default_interval_covers_at_least_93_percent(n, shape):
    # per-seed results of a study: roughly normal, or right-skewed (gamma(4): skewness 1)
    draw, truth = {
        "normal": (lambda r, k: r.normal(0.6, 0.05, k), 0.6),
        "skewed": (lambda r, k: r.gamma(4.0, 0.01, k), 0.04),
    }[shape]
    assert _t_coverage(draw, truth, n) >= 0.93


def test_the_percentile_bootstrap_would_not_cover_with_few_seeds():
    # the reason the default is t: the plain 95% percentile interval over 3 seeds covers ~75%
    rng = np.random.default_rng(3)
    hits = sum(
        low <= 0.0 <= high
        for low, high in (st.bootstrap_ci(rng.normal(size=3), n_resamples=300, seed=i)[1:] for i in range(300))
    )
    assert hits / 300 < 0.85


def test_interval_methods_agree_on_the_point_and_are_named():
    x = [0.61, 0.64, 0.58, 0.66, 0.60]
    for method in st.INTERVALS:
        ci = st.interval(x, method, 0.9, n_resamples=500)
        assert ci.point == pytest.approx(np.mean(x)) and ci.low < ci.point < ci.high and ci.n == 5
    assert st.describe_interval("t", 0.9) == "90% Student-t interval over seeds"
    assert np.isnan(st.interval([0.5], "t").low)
    with pytest.raises(ValueError):
        st.interval(x, "jackknife")


def test_welch_difference_equals_scipy():
    from scipy import stats

    x, y = [1.0, 1.4, 1.1, 1.6, 1.2], [0.5, 0.9, 0.4, 1.3]
    d = st.difference(x, y, "t", 0.95)
    ref = stats.ttest_ind(x, y, equal_var=False)
    assert d.p_value == pytest.approx(ref.pvalue)
    low, high = ref.confidence_interval(0.95)
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert d.effect == pytest.approx(np.mean(x) - np.mean(y)) and (d.n_x, d.n_y) == (5, 4)
    assert np.isnan(st.difference([1.0], y).low)


def test_holm_known_answer():
    adjusted = st.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])


def test_kaplan_meier_counts_censored_runs():
    km = st.kaplan_meier([1.0, 2.0, 3.0, 4.0], [True, False, True, True], tau=5.0)
    # S = 1 on [0,1), 3/4 on [1,3), 3/8 on [3,4), 0 after: area 1 + 1.5 + 0.375
    assert km.restricted_mean == pytest.approx(2.875) and km.median == 3.0 and km.reached == 3
    full = st.kaplan_meier([2.0, 6.0, 3.0], [True, True, True], tau=5.0)
    assert full.restricted_mean == pytest.approx(np.mean([2.0, 5.0, 3.0]))
    none = st.kaplan_meier([8.0, 8.0], [False, False], tau=8.0)
    assert np.isnan(none.median) and none.restricted_mean == pytest.approx(8.0)
    # survivors only (1, 3, 4) would say 2.67: faster than the censored-aware 2.875
    assert np.mean([1.0, 3.0, 4.0]) < km.restricted_mean


# ---- aggregates across tasks: rliable's definitions ------------------------------------------


def test_aggregates_equal_rliable_definitions():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(0.3, 1, size=(5, 3))  # runs x tasks
    by_task = lambda m: [m[:, j] for j in range(m.shape[1])]  # noqa: E731
    rl = pytest.importorskip("rliable.metrics")
    assert st.aggregate_iqm(by_task(x)) == pytest.approx(rl.aggregate_iqm(x))
    assert st.probability_of_improvement_tasks(by_task(x), by_task(y)) == pytest.approx(
        rl.probability_of_improvement(x, y)
    )
    ties = np.ones((3, 2))
    same = st.probability_of_improvement_tasks(by_task(ties), by_task(ties))
    assert same == rl.probability_of_improvement(ties, ties) == 0.5


def test_performance_profile_and_stratified_bootstrap_known_answers():
    scores = [np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.4])]
    np.testing.assert_allclose(st.performance_profile(scores, [0.0, 0.3, 0.95]), [1.0, 0.6, 0.0])
    # a task whose runs are all equal keeps its value in every resample (stratified: never mixed)
    flat = st.stratified_bootstrap([np.full(4, 1.0), np.full(2, 3.0)], st.aggregate_iqm, n_resamples=200)
    assert flat.point == flat.low == flat.high
    ci = st.probability_of_improvement_tasks_ci([np.array([2.0, 3, 4])], [np.array([0.0, 1, 2.5])], n_resamples=300)
    assert ci.low <= ci.point <= ci.high and ci.point == pytest.approx(8 / 9)  # 2 > 0, 1; 3 and 4 > all
