import numpy as np
import pytest
from scipy import stats

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


# ---- paired tests, equivalence, power and proportions (docs/study.md#statistics) ---------------


def test_paired_t_matches_a_hand_computation():
    # differences 0.1, 0.3, 0.2, 0.4: mean 0.25, sd sqrt(1/60) = 0.129099, se 0.0645497,
    # t = 3.872983 on 3 df -> two-sided p = 0.030466 (t table); 95% half-width 3.182446 x se
    x = np.array([1.1, 1.3, 1.2, 1.4])
    y = np.ones(4)
    d = st.paired_difference(x, y)
    assert d.paired and d.test == "paired t" and d.n_x == d.n_y == 4
    assert d.effect == pytest.approx(0.25)
    assert d.sd == pytest.approx(np.sqrt(1 / 60))
    assert d.p_value == pytest.approx(0.030466, abs=2e-6)
    assert (d.low, d.high) == pytest.approx((0.25 - 0.205426, 0.25 + 0.205426), abs=2e-6)


def test_compare_pairs_by_seed_only_when_the_seeds_match():
    x = {0: 1.0, 1: 2.0, 2: 3.5}
    y = {2: 3.0, 0: 0.5, 1: 1.0}  # other order: paired by seed, not by position
    d = st.compare(x, y)
    assert d.paired and d.effect == pytest.approx(np.mean([0.5, 1.0, 0.5]))
    assert not st.compare(x, {0: 0.5, 1: 1.0, 5: 2.0}).paired  # different seeds: Welch
    assert not st.compare(x, y, pairing="unpaired").paired
    with pytest.raises(ValueError, match="pairing"):
        st.compare(x, y, pairing="sometimes")


def test_paired_test_gains_power_on_correlated_seeds():
    # each seed shifts both methods alike (shared prompts and noise): sd 1 between seeds, 0.2
    # within; a true difference of 0.4 is found by the paired test far more often than by Welch's
    rng = np.random.default_rng(7)
    hits_paired = hits_welch = 0
    for _ in range(400):
        seed_effect = rng.normal(0, 1, 8)
        x = seed_effect + 0.4 + rng.normal(0, 0.2, 8)
        y = seed_effect + rng.normal(0, 0.2, 8)
        hits_paired += st.paired_difference(x, y).p_value < 0.05
        hits_welch += st.difference(x, y).p_value < 0.05
    assert hits_paired / 400 > 0.85 and hits_welch / 400 < 0.2, (hits_paired, hits_welch)


def test_paired_t_keeps_its_level_under_the_null():
    rng = np.random.default_rng(11)
    rejections = sum(st.paired_difference(rng.normal(0, 1, 6), rng.normal(0, 1, 6)).p_value < 0.05 for _ in range(2000))
    assert 0.035 <= rejections / 2000 <= 0.065


def test_tost_matches_a_hand_computation():
    # the differences above: mean 0.25, se 0.0645497, 3 df; margin 0.5:
    # t_upper = (0.25 - 0.5)/se = -3.872983 -> p = 0.015233; t_lower = 11.61895 -> p ~ 7e-4
    d = st.paired_difference([1.1, 1.3, 1.2, 1.4], [1, 1, 1, 1])
    e = st.tost(d, 0.5)
    assert e.p_value == pytest.approx(0.015233, abs=2e-6)
    # 90% interval 0.25 +- 2.353363 se = [0.098092, 0.401908], inside (-0.5, 0.5)
    assert (e.low, e.high) == pytest.approx((0.098092, 0.401908), abs=2e-6)
    # a margin inside the interval cannot be declared equivalent
    assert st.tost(d, 0.3).p_value > 0.05
    with pytest.raises(ValueError, match="margin"):
        st.tost(d, 0.0)


def test_tost_holds_its_level_at_the_margin():
    # true difference exactly at the margin: equivalence must be declared at most alpha of the time
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(2000):
        base = rng.normal(0, 1, 10)
        d = st.paired_difference(base + 0.5 + rng.normal(0, 0.5, 10), base + rng.normal(0, 0.5, 10))
        hits += st.tost(d, 0.5).p_value < 0.05
    assert hits / 2000 <= 0.065


def test_minimum_detectable_difference_has_its_power():
    sd, n = 1.0, 8
    mdd = st.minimum_detectable_difference(sd, n, alpha=0.05, power=0.8, tests=15)
    # the noncentral-t power at the MDD is the target, and the MDD is above the normal approximation's
    assert st.power_of_test(mdd, sd, n, 0.05, 15) == pytest.approx(0.8, abs=1e-6)
    z = (stats.norm.ppf(1 - 0.05 / 30) + stats.norm.ppf(0.8)) * sd / np.sqrt(n)
    assert mdd > z
    # simulated: paired t at alpha/15 rejects ~80% of studies with that true difference
    rng = np.random.default_rng(5)
    rej = sum(st.paired_difference(rng.normal(mdd, sd, n), np.zeros(n)).p_value < 0.05 / 15 for _ in range(1000))
    assert 0.75 <= rej / 1000 <= 0.85
    assert st.minimum_detectable_difference(sd, 32, tests=15) < mdd  # more seeds, smaller MDD
    assert np.isnan(st.minimum_detectable_difference(sd, 1))


def test_wilson_matches_a_hand_computation_and_stays_in_the_unit_interval():
    # 7 of 8 at 95%: centre (0.875 + z^2/16) / (1 + z^2/8) = 0.753352, half-width 0.224241
    p, low, high = st.wilson(7, 8)
    assert p == 0.875 and (low, high) == pytest.approx((0.529112, 0.977583), abs=2e-6)
    assert st.wilson(8, 8)[2] == 1.0 and st.wilson(0, 8)[1] == 0.0 and st.wilson(8, 8)[1] < 1
    assert np.isnan(st.wilson(0, 0)[0])
    with pytest.raises(ValueError):
        st.wilson(9, 8)
    cp = st.clopper_pearson(7, 8)
    assert cp[1] < low and cp[2] > high  # the exact interval is the wider one


@pytest.mark.parametrize("p", [0.5, 0.875])
def test_wilson_covers_near_nominal_at_eight_seeds(p):
    n = 8
    cover = sum(
        stats.binom.pmf(k, n, p) for k in range(n + 1) if st.wilson(k, n)[1] <= p <= st.wilson(k, n)[2]
    )  # exact coverage: sum over every outcome
    assert 0.90 <= cover <= 1.0, cover


def test_proportion_interval_refuses_non_binary_values():
    ci = st.proportion_interval([1, 1, 1, 1, 1, 1, 1, 0])
    assert ci.statistic == "proportion" and 0 <= ci.low <= ci.high <= 1
    assert st.is_proportion("gold/pass") and st.is_proportion("convergence/reached_80")
    assert st.is_proportion("collapse/loop_collapsed")  # the recursive loop's collapse rule, one 0/1 per seed
    assert not st.is_proportion("quality/fid")
    with pytest.raises(ValueError, match="0/1"):
        st.proportion_interval([0.5, 1.0])
