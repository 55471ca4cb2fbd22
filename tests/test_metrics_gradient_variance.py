import math

import numpy as np
import pytest
import torch
from scipy import stats

from t2i_rl_bench.metrics import gradient_variance as gv

torch.set_num_threads(1)


def _gaussian_gradients(k: int, a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """g = A z + b with z ~ N(0, I): mean b, Cov = A A^T, tr Cov = ||A||_F^2."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(k, a.shape[1], generator=gen, dtype=torch.float64)
    return z @ a.T + b


def test_estimates_match_the_analytic_gradient_distribution():
    gen = torch.Generator().manual_seed(1)
    p, d, k = 20, 10, 4000
    a = torch.randn(p, d, generator=gen, dtype=torch.float64) * 0.5
    b = torch.randn(p, generator=gen, dtype=torch.float64)
    g = _gaussian_gradients(k, a, b)
    sigma = a @ a.T
    tr, tr2, b2, bsb = sigma.trace(), (sigma @ sigma).trace(), b.square().sum(), b @ sigma @ b
    stats = gv.gradient_statistics(g)
    # sampling errors of a Gaussian sample: Var(tr S) = 2 tr(Sigma^2)/(K-1);
    # Var ||mean||^2 = 4 b'Sigma b / K + 2 tr(Sigma^2) / K^2 around ||b||^2 + tr Sigma / K
    assert abs(stats.trace_cov - tr) < 5 * math.sqrt(2 * tr2 / (k - 1))
    se_mean = math.sqrt(4 * bsb / k + 2 * tr2 / k**2)
    assert abs(stats.mean_sq_norm - (b2 + tr / k)) < 5 * se_mean
    assert stats.snr == pytest.approx(float(b2 / tr), rel=0.1)
    assert stats.snr_unbiased == pytest.approx(float(b2 / tr), rel=0.1)
    assert stats.k == k


def test_snr_is_scale_free_and_debiased_under_pure_noise():
    k, p = 50, 400
    g = _gaussian_gradients(k, torch.eye(p, dtype=torch.float64), torch.zeros(p, dtype=torch.float64))
    assert gv.gradient_snr(g) * k == pytest.approx(1.0, abs=0.3)  # ||mean||^2 ~ tr Cov / K
    assert abs(gv.gradient_snr_unbiased(g)) * k < 0.3
    assert gv.gradient_snr(1e-3 * g) == pytest.approx(gv.gradient_snr(g))
    assert abs(gv.mean_pairwise_cosine(g)) < 0.02  # independent directions in 400 dims


def test_cosine_and_norm_variance_on_known_cases():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert gv.mean_pairwise_cosine(e) == pytest.approx(1.0)
    assert gv.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-1.0)
    assert gv.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(0.0)
    g = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, -2.0]])  # norms 5, 1, 2
    assert gv.norm_variance(g) == pytest.approx(torch.tensor([5.0, 1.0, 2.0]).var().item())
    assert gv.gradient_snr(e) == math.inf
    with pytest.raises(ValueError):
        gv.trace_covariance(torch.ones(1, 3))


def test_credit_share_and_its_spread():
    s = 5
    equal = gv.credit_share(torch.ones(s))
    assert torch.allclose(equal, torch.full((s,), 1 / s, dtype=torch.float64))
    assert gv.gini(equal) == pytest.approx(0.0, abs=1e-12)
    assert gv.max_min_ratio(equal) == pytest.approx(1.0)
    one_hot = gv.credit_share(torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0]))
    assert gv.gini(one_hot) == pytest.approx((s - 1) / s)
    assert gv.max_min_ratio(one_hot) == math.inf
    # (K, S, P) vectors: mean over K of the per-step norms, then normalised
    vecs = torch.zeros(2, 2, 3)
    vecs[0, 0, 0], vecs[1, 0, 1], vecs[0, 1, 2], vecs[1, 1, 2] = 1.0, 3.0, 4.0, 4.0
    assert torch.allclose(gv.credit_share(vecs), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    assert torch.allclose(gv.credit_share(vecs.norm(dim=-1)), gv.credit_share(vecs))


def test_minibatch_gradients_of_a_linear_least_squares_loss():
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(3, 2, bias=False)
    unused = torch.nn.Parameter(torch.ones(4))
    xs, ys = torch.randn(4, 8, 3, generator=gen), torch.randn(4, 8, 2, generator=gen)

    def loss_fn(i):
        return 0.5 * (lin(xs[i]) - ys[i]).square().sum(-1).mean()

    g = gv.minibatch_gradients(loss_fn, [lin.weight, unused], k=4)
    assert g.shape == (4, 6 + 4)
    for i in range(4):
        resid = xs[i] @ lin.weight.detach().T - ys[i]  # (8, 2)
        expected = (resid.T @ xs[i]) / 8  # dL/dW = mean_n (W x_n - y_n) x_n^T
        assert torch.allclose(g[i, :6], expected.reshape(-1), atol=1e-6)
    assert (g[:, 6:] == 0).all()
    assert lin.weight.grad is None  # autograd.grad leaves .grad alone


def test_per_step_gradient_norms_feed_credit_share():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    weights = torch.tensor([1.0, 2.0, 5.0])  # step s's term = weights[s] * (w . x_i)

    def step_losses(i):
        x = torch.tensor([1.0, float(i + 1)])
        return weights * (w * x).sum()

    norms = gv.per_step_gradient_norms(step_losses, [w], k=2)
    assert norms.shape == (2, 3)
    assert torch.allclose(norms[1], weights * math.sqrt(5.0))
    assert torch.allclose(gv.credit_share(norms), (weights / weights.sum()).double())


def test_at_the_probes_k_the_bias_corrected_snr_is_near_truth_and_the_plain_one_sits_1_over_k_above():
    # K = 8 minibatch gradients of known mean b and covariance A A^T, 2000 replicate probes:
    # E ||mean||^2 = ||b||^2 + tr Sigma / K, so the plain SNR is biased by ~1/K = 0.125, while the
    # corrected numerator ||mean||^2 - tr S / K is unbiased for ||b||^2 (tr S is unbiased)
    gen = torch.Generator().manual_seed(5)
    p, d, k, reps = 200, 200, 8, 2000
    a = torch.randn(p, d, generator=gen, dtype=torch.float64) / math.sqrt(d)  # tr Sigma ~ p
    sigma_tr = float((a @ a.T).trace())
    b = torch.randn(p, generator=gen, dtype=torch.float64)
    b = b / b.norm() * math.sqrt(0.3 * sigma_tr)  # true SNR 0.3: a weak signal, near the floor
    truth = float(b.square().sum()) / sigma_tr
    numerators, plain, corrected = [], [], []
    for r in range(reps):
        g = _gaussian_gradients(k, a, b, seed=100 + r)
        s = gv.gradient_statistics(g)
        numerators.append(s.mean_sq_norm - s.trace_cov / k)
        plain.append(s.snr)
        corrected.append(s.snr_unbiased)
    num = torch.tensor(numerators)
    assert abs(float(num.mean()) - float(b.square().sum())) < 4 * float(num.std()) / math.sqrt(reps)
    assert float(torch.tensor(corrected).mean()) == pytest.approx(truth, abs=0.02)
    assert float(torch.tensor(plain).mean()) == pytest.approx(truth + 1 / k, abs=0.02)


@pytest.mark.parametrize(("true_snr", "least"), [(0.0, 0.94), (0.3, 0.87)])
def test_the_single_probe_interval_of_the_bias_corrected_snr_covers(true_snr, least):
    gen = torch.Generator().manual_seed(11)
    p, k, reps = 200, 8, 400
    a = torch.randn(p, p, generator=gen, dtype=torch.float64) / math.sqrt(p)
    tr = float((a @ a.T).trace())
    b = torch.randn(p, generator=gen, dtype=torch.float64)
    b = b / b.norm() * math.sqrt(true_snr * tr)
    truth = float(b.square().sum()) / tr
    hits = 0
    for r in range(reps):
        low, high = gv.snr_unbiased_interval(_gaussian_gradients(k, a, b, seed=1000 + r))
        hits += low <= truth <= high
    assert hits / reps >= least
    stats = gv.gradient_statistics(_gaussian_gradients(k, a, b, seed=1))
    assert stats.snr_unbiased_low < stats.snr_unbiased < stats.snr_unbiased_high


# ---- the projected SNR, cross-fitted (docs/mechanisms.md#precision-and-coverage) -------------


def _anisotropic_world(p: int, rank: int, snr: float, seed: int = 0):
    """Gaussian minibatch gradients g = mu + A z with a decaying spectrum (few noise directions
    dominate, as in the probe) and mu scaled to a projected SNR `snr` along its own direction."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, rank)) * np.geomspace(3, 0.1, rank)
    sigma = a @ a.T
    u = rng.normal(size=p)
    u /= np.linalg.norm(u)
    return a, u * snr * np.sqrt(u @ sigma @ u), sigma


def _truth(direction, mu, sigma) -> float:
    d = direction / np.linalg.norm(direction)
    return float(mu @ d / np.sqrt(d @ sigma @ d))


@pytest.mark.parametrize("snr", [0.0, 3.0])
def test_crossfit_interval_covers_and_is_unbiased_where_the_naive_one_is_biased(snr):
    """Over 400 draws of K = 12 Gaussian gradients: the cross-fitted interval covers the SNR along
    its own directions at >= 93% (nominal 95%; measured 0.95-0.99 over K = 8-32 in the docs), the
    cross-fitted estimate's mean error is within 3 standard errors of 0, and the naive estimate
    (direction from the same gradients) is biased up by more than 10 standard errors."""
    a, mu, sigma = _anisotropic_world(60, 12, snr)
    rng = np.random.default_rng(1)
    k, draws = 12, 400
    first, second = (h.numpy() for h in gv.halves(k))
    covered, errors, naive = 0, [], []
    for _ in range(draws):
        g = rng.normal(size=(k, a.shape[1])) @ a.T + mu
        p = gv.crossfit_projected(torch.from_numpy(g))
        truth = (_truth(g[first].mean(0), mu, sigma) + _truth(g[second].mean(0), mu, sigma)) / 2
        covered += p.low <= truth <= p.high
        errors.append(p.snr - truth)
        naive.append(gv.naive_projected(torch.from_numpy(g)).snr - truth)
    e, n = np.array(errors), np.array(naive)
    assert covered / draws >= 0.93
    assert abs(e.mean()) < 3 * e.std() / np.sqrt(draws)
    assert n.mean() > 10 * n.std() / np.sqrt(draws)


def test_standardized_mean_interval_and_hedges_factor():
    # t = 0 gives a symmetric interval; its ends are the delta whose noncentral t puts t at 2.5% / 97.5%
    low, high = gv.standardized_mean_interval(0.0, 6)
    assert low == pytest.approx(-high)
    nc = high * math.sqrt(6)
    assert stats.nct.cdf(0.0, 5, nc) == pytest.approx(0.025, abs=1e-6)
    # J(df) -> 1 as df grows, and J(10) from its closed form
    assert gv.hedges_factor(10) == pytest.approx(1 - 3 / (4 * 10 - 1), abs=2e-3)
    assert gv.hedges_factor(1000) == pytest.approx(1.0, abs=1e-3)
    assert gv.crossfit_projected(torch.randn(5, 3)).snr is None  # needs three per half


def test_noise_scale_is_the_unbiased_mccandlish_estimate():
    """|G|^2 and tr Sigma per image from two batch sizes: with minibatches of B images of iid
    per-image gradients N(b, I), |G|^2 -> ||b||^2 and tr Sigma -> P; B_simple = B / snr_unbiased."""
    gen = torch.Generator().manual_seed(3)
    p, b_images, k = 50, 4, 4000
    b = torch.full((p,), 0.2, dtype=torch.float64)
    g = b + torch.randn(k, p, generator=gen, dtype=torch.float64) / math.sqrt(b_images)
    out = gv.noise_scale(g, b_images)
    assert out["grad_sq_norm"] == pytest.approx(float(b.square().sum()), rel=0.1)
    assert out["trace_sigma_per_image"] == pytest.approx(p, rel=0.05)
    assert out["noise_scale"] == pytest.approx(p / float(b.square().sum()), rel=0.15)
    assert out["noise_scale"] == pytest.approx(b_images / gv.gradient_snr_unbiased(g), rel=1e-9)
    assert gv.noise_scale(torch.zeros(4, 3), 2)["noise_scale"] is None


def test_cosine_to_reference_grows_with_the_batch_and_step_statistics_add_up():
    a, mu, _ = _anisotropic_world(40, 10, 2.0)
    g = torch.from_numpy(np.random.default_rng(2).normal(size=(16, 10)) @ a.T + mu * 3)
    cos = gv.cosine_to_reference(g, (1, 2, 4, 8, 16))
    assert cos[1] < cos[2] < cos[4] < cos[8] and cos[16] is None
    steps = torch.randn(8, 3, 20, generator=torch.Generator().manual_seed(0))
    steps[:, 2] *= 3  # the last step carries 9x the variance of each other
    out = gv.step_statistics(steps)
    assert all(len(v) == 3 for v in out.values())
    assert sum(out["step_var_share"]) == pytest.approx(1.0)
    assert out["step_var_share"][2] > 0.6
    assert all(
        lo <= s <= hi for lo, s, hi in zip(out["step_proj_snr_low"], out["step_proj_snr"], out["step_proj_snr_high"])
    )


def test_effective_sample_size():
    assert gv.effective_sample_size(torch.zeros(10)) == pytest.approx(1.0)
    assert gv.effective_sample_size(torch.tensor([0.0, -50.0, -50.0, -50.0])) == pytest.approx(0.25, abs=1e-6)


def test_distinct_prompts_bias_the_signal_by_the_between_prompt_variance_and_independent_ones_do_not():
    """K groups on prompts drawn from a set of N: the U-statistic ||mean g||^2 - tr S / K estimates
    ||mean over the set of the prompts' expected gradients||^2 only when the draws are independent
    (with replacement); drawn without replacement it is low by V / (N - 1), V the variance of the
    per-prompt expected gradients (docs/mechanisms.md#independent-prompt-draws). The probe's two
    draws: `distinct` never repeats a prompt, `independent` does."""
    from t2i_rl_bench.probe import probe_prompts

    rng = np.random.default_rng(0)
    n, p, k, draws = 6, 40, 4, 4000
    means = rng.normal(size=(n, p))
    centre = means.mean(0)
    v = float(((means - centre) ** 2).sum(1).mean())
    target = float((centre**2).sum())
    for replace, expected in ((True, target), (False, target - v / (n - 1))):
        est = []
        for _ in range(draws):
            idx = rng.choice(n, size=k, replace=replace)
            g = torch.as_tensor(means[idx] + 0.5 * rng.normal(size=(k, p)))
            s = gv.gradient_statistics(g)
            est.append(s.snr_unbiased * s.trace_cov)
        est = np.asarray(est)
        assert abs(est.mean() - expected) < 4 * est.std() / np.sqrt(draws), (replace, est.mean(), expected)
    assert abs(target - (target - v / (n - 1))) > 8 * est.std() / np.sqrt(draws)  # the two differ, visibly
    assert len(set(probe_prompts(64, 3, "distinct"))) == 64
    assert len(set(probe_prompts(64, 3, "independent"))) < 64  # 64 draws from 288 repeat (p > 0.999)
    assert probe_prompts(8, 99) == probe_prompts(8, 99, "distinct")  # the committed studies' draw
