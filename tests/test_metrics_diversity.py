import numpy as np
import pytest
import torch

from t2i_rl_bench.metrics import diversity as dv


def test_vendi_score_known_cases():
    n = 6
    assert dv.vendi_score(np.tile([[1.0, 2.0, 3.0]], (n, 1))) == pytest.approx(1.0)
    assert dv.vendi_score(np.eye(n) * 3.0) == pytest.approx(n)
    # two clusters of identical vectors, orthogonal to each other, sizes 3 and 3: eigenvalues 1/2, 1/2
    two = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    assert dv.vendi_score(two) == pytest.approx(2.0)
    assert dv.vendi_score(torch.eye(4)) == pytest.approx(4.0)  # tensors accepted


def test_mean_pairwise_distance():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert dv.mean_pairwise_distance(x) == pytest.approx((5 + 0 + 5) / 3)
    assert dv.mean_pairwise_distance(np.ones((5, 3))) == 0.0
    assert dv.mean_pairwise_distance(np.eye(3), metric="cosine") == pytest.approx(1.0)
    assert np.isnan(dv.mean_pairwise_distance(np.ones((1, 3))))


def test_prdc_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 4))
    same = dv.precision_recall_density_coverage(real, real, k=5)
    assert (same.precision, same.recall, same.coverage) == (1.0, 1.0, 1.0)
    assert same.density == pytest.approx(6 / 5)  # each ball holds its centre and its 5 neighbours
    far = dv.precision_recall_density_coverage(real, real + 100.0, k=5)
    assert far == dv.PRDC(0.0, 0.0, 0.0, 0.0)


def test_prdc_collapsed_fake_set_has_precision_but_no_coverage():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 2))
    collapsed = real[:1] + 1e-3 * rng.normal(size=(50, 2))  # every fake sample near one real point
    out = dv.precision_recall_density_coverage(real, collapsed, k=5)
    assert out.precision == 1.0
    assert out.coverage < 0.05 and out.recall < 0.05
    same = dv.precision_recall_density_coverage(real[:100], real[100:], k=5)
    assert same.coverage > 0.8 and 0.7 < same.density < 1.3
    with pytest.raises(ValueError):
        dv.precision_recall_density_coverage(real[:3], real, k=5)
