"""Gradient variance of a policy-gradient loss, measured from K independent minibatch gradients
g_k of the algorithm's own loss on the trainable parameters (docs/mechanisms.md#the-gradient-probe), and the
per-denoising-step "credit share" (the diagnosis of PCPO: a few timesteps carry most of the
gradient).

Conventions. `grads` is (K, P), one flattened gradient per row; every statistic is computed in
float64. The gradient SNR is ||mean||^2 / tr Cov: the squared length of the average gradient over
the total variance of ONE minibatch gradient. It is scale-free (a loss multiplied by c leaves it
unchanged), so methods with different loss scales compare fairly. The SNR of the K-average is K
times larger. ||mean||^2 over-estimates ||E g||^2 by tr Cov / K, so under pure noise `snr` sits
near 1/K; `snr_unbiased` subtracts that bias (and can be negative).

The trace SNR is dominated by the many noise directions of ~0.3M parameters, so its precision
shrinks only as 1/K. The projected SNR (`crossfit_projected`) measures the gradient along one
fixed direction estimated from the other half of the minibatches (cross-fitting), which keeps it
unbiased and gives it an exact interval under Gaussian gradients; the noise scale
(`noise_scale`) is McCandlish et al.'s B_simple from two batch sizes. The math, the estimators
and their measured coverage: docs/mechanisms.md#the-gradient-probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from t2i_rl_bench.models.imports import LazyModule

# scipy imported where first used, not by every job importing this (docs/performance.md#start-up-the-assess-job)
optimize = LazyModule("scipy.optimize")
special = LazyModule("scipy.special")
stats = LazyModule("scipy.stats")


def _rows(grads: torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grads).detach().to(torch.float64)
    if g.dim() != 2 or g.shape[0] < 2:
        raise ValueError(f"expected (K, P) gradients with K >= 2, got shape {tuple(g.shape)}")
    return g


def trace_covariance(grads: torch.Tensor) -> float:
    """tr Cov = 1/(K-1) sum_k ||g_k - mean||^2: the unbiased total variance of one minibatch
    gradient (the quantity of variance-reduction papers, e.g. Greensmith et al. 2004)."""
    g = _rows(grads)
    return _trace(g - g.mean(0))


def _trace(centred: torch.Tensor) -> float:
    """tr Cov from the centred rows g - mean."""
    return float(centred.square().sum() / (centred.shape[0] - 1))


def mean_sq_norm(grads: torch.Tensor) -> float:
    """||mean_k g_k||^2, the squared length of the average gradient."""
    return float(_rows(grads).mean(0).square().sum())


def gradient_snr(grads: torch.Tensor) -> float:
    """||mean||^2 / tr Cov (see the module docstring): signal over the noise of one minibatch
    gradient, scale-free; the SNR of the K-average is K times this. inf when tr Cov = 0."""
    return _snr(mean_sq_norm(grads), trace_covariance(grads))


def gradient_snr_unbiased(grads: torch.Tensor) -> float:
    """(||mean||^2 - tr Cov / K) / tr Cov: `gradient_snr` with the unbiased estimate of ||E g||^2
    (E ||mean||^2 = ||E g||^2 + tr Cov / K), near 0 rather than 1/K under pure noise."""
    g = _rows(grads)
    return _snr_unbiased(mean_sq_norm(g), trace_covariance(g), g.shape[0])


def _snr(sq: float, tr: float) -> float:
    return sq / tr if tr > 0 else float("inf")


def _snr_unbiased(sq: float, tr: float, k: int) -> float:
    return (sq - tr / k) / tr if tr > 0 else float("inf")


def snr_unbiased_interval(grads: torch.Tensor, confidence_level: float = 0.95) -> tuple[float | None, float | None]:
    """An interval for the bias-corrected SNR from ONE probe's K gradients (no seeds needed, so
    the base model's shared probe has one too). Normal approximation with the delta method for
    the ratio U / T, U = ||mean||^2 - tr S / K, T = tr S, using the Gaussian moments
    Var U = 4 mu'Sigma mu / K + 2 tr(Sigma^2) / (K (K-1)) and Var T = 2 tr(Sigma^2) / (K-1)
    (mean and sample covariance independent), tr(Sigma^2) estimated without the (tr S)^2 / (K-1)
    bias (Bai & Saranadasa 1996). Measured coverage of the 95% interval on Gaussian gradients,
    K = 8 (tests/test_metrics_gradient_variance.py): 0.97 at a true SNR of 0 (so 'excludes 0' is
    a conservative call), 0.92 at 0.3, 0.91 at 1.0. (None, None) when K < 3 or tr S = 0 (JSON
    has no NaN; the tables skip it)."""
    g = _rows(grads)
    if g.shape[0] < 3:
        return None, None
    m = g.mean(0)
    return _interval(m, g - m, confidence_level)


def _interval(m: torch.Tensor, c: torch.Tensor, confidence_level: float) -> tuple[float | None, float | None]:
    """`snr_unbiased_interval` from the mean m and the centred rows c = g - m (K >= 3)."""
    k = c.shape[0]
    gram = c @ c.T  # (K, K)
    tr_s = float(gram.trace() / (k - 1))
    if tr_s <= 0:
        return None, None
    tr_s2 = float(gram.square().sum() / (k - 1) ** 2)
    tr_sigma2 = max((k - 1) ** 2 / ((k - 2) * (k + 1)) * (tr_s2 - tr_s**2 / (k - 1)), 0.0)
    m_s_m = float((c @ m).square().sum() / (k - 1))  # mean' S mean, biased up by tr(Sigma^2) / K
    u = float(m.square().sum()) - tr_s / k
    var_u = 4 * max(m_s_m - tr_sigma2 / k, 0.0) / k + 2 * tr_sigma2 / (k * (k - 1))
    var_t = 2 * tr_sigma2 / (k - 1)
    se = (var_u / tr_s**2 + u**2 * var_t / tr_s**4) ** 0.5
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence_level / 2)))
    return u / tr_s - z * se, u / tr_s + z * se


def mean_pairwise_cosine(grads: torch.Tensor) -> float:
    """Mean cosine similarity over the K(K-1)/2 pairs of distinct gradients (1 = all agree)."""
    g = _rows(grads)
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    cos = unit @ unit.T
    i, j = torch.triu_indices(g.shape[0], g.shape[0], offset=1)
    return float(cos[i, j].mean())


def norm_variance(grads: torch.Tensor) -> float:
    """Unbiased variance (ddof 1) of the per-minibatch gradient norms ||g_k||."""
    return float(_rows(grads).norm(dim=1).var(correction=1))


@dataclass(frozen=True)
class GradientStatistics:
    k: int
    trace_cov: float
    mean_sq_norm: float
    snr: float
    snr_unbiased: float
    snr_unbiased_low: float | None  # 95% interval from this probe alone (`snr_unbiased_interval`)
    snr_unbiased_high: float | None
    mean_pairwise_cosine: float
    norm_variance: float


def gradient_statistics(grads: torch.Tensor) -> GradientStatistics:
    """All of the above for one (K, P) stack of gradients (converted to float64 once, each trace
    and norm computed once: the same numbers as the functions one by one)."""
    g = _rows(grads)
    k = int(g.shape[0])
    m = g.mean(0)
    c = g - m  # the centred rows, shared by the trace and the interval
    tr, sq = _trace(c), float(m.square().sum())
    low, high = _interval(m, c, 0.95) if k >= 3 else (None, None)
    return GradientStatistics(
        k=k,
        trace_cov=tr,
        mean_sq_norm=sq,
        snr=_snr(sq, tr),
        snr_unbiased=_snr_unbiased(sq, tr, k),
        snr_unbiased_low=low,
        snr_unbiased_high=high,
        mean_pairwise_cosine=mean_pairwise_cosine(g),
        norm_variance=norm_variance(g),
    )


# ---- the gradient projected on a fixed direction (docs/mechanisms.md#projected-snr) --------------


@dataclass(frozen=True)
class Projected:
    """The projections x_k = <g_k, d> of n minibatch gradients on a unit direction d: their mean,
    variance (d' Sigma d, the variance of one minibatch gradient along d) and the projected SNR
    delta = mean / sd (signed: > 0 when the gradients agree with d on average; its square is the
    power SNR along d), Hedges-corrected so that it is unbiased under Gaussian gradients, with an
    exact noncentral-t interval. None where it is undefined (n < 3, zero variance, non-finite)."""

    n: int
    mean: float | None
    variance: float | None
    snr: float | None
    low: float | None
    high: float | None


_UNDEFINED = Projected(0, None, None, None, None, None)


def unit(v: torch.Tensor) -> torch.Tensor | None:
    """v / ||v|| in float64, None for a zero or non-finite vector."""
    v = torch.as_tensor(v).detach().to(torch.float64).flatten()
    norm = float(v.norm())
    return v / norm if math.isfinite(norm) and norm > 0 else None


def hedges_factor(df: int) -> float:
    """J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)): E[mean / s] = delta / J for Gaussian
    samples with df = n - 1 degrees of freedom, so J x mean / s is unbiased (Hedges 1981)."""
    if df < 2:
        raise ValueError(f"the Hedges correction needs df >= 2, got {df}")
    return float(math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2))


def standardized_mean_interval(t: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact interval for delta = mu / sigma from t = sqrt(n) mean / s of n Gaussian values:
    t follows a noncentral t with n - 1 degrees of freedom and noncentrality sqrt(n) delta, whose
    cdf falls as the noncentrality grows, so each end solves cdf(t; nc) = (1 -+ confidence) / 2
    (the inversion of Steiger & Fouladi 1997)."""
    df, alpha = n - 1, 1 - confidence

    def cdf(nc: float) -> float:
        c = float(stats.nct.cdf(t, df, nc))
        # scipy returns NaN deep in a tail (t far below nc), where the cdf is 0 to double precision
        return c if math.isfinite(c) else (0.0 if nc > t else 1.0)

    def solve(q: float) -> float:
        f = lambda nc: cdf(nc) - q  # noqa: E731
        lo, hi = t - 10 - abs(t), t + 10 + abs(t)
        while f(lo) < 0:
            lo -= 10 + abs(lo)
        while f(hi) > 0:
            hi += 10 + abs(hi)
        return float(optimize.brentq(f, lo, hi, xtol=1e-10))

    root_n = math.sqrt(n)
    return solve(1 - alpha / 2) / root_n, solve(alpha / 2) / root_n


def projected_snr(grads: torch.Tensor, direction: torch.Tensor, confidence: float = 0.95) -> Projected:
    """The projected statistics of `grads` (n, P) on `direction` (P,), which must not depend on
    these gradients (else the mean is biased up: see `naive_projected`)."""
    d = unit(direction)
    g = torch.as_tensor(grads).detach().to(torch.float64)
    n = int(g.shape[0])
    if d is None or n < 3:
        return Projected(n, None, None, None, None, None)
    x = (g.reshape(n, -1) @ d).numpy()
    mean, var = float(x.mean()), float(x.var(ddof=1))
    if not (np.isfinite(mean) and np.isfinite(var)) or var <= 0:
        return Projected(n, mean if np.isfinite(mean) else None, var if np.isfinite(var) else None, None, None, None)
    t = math.sqrt(n) * mean / math.sqrt(var)
    low, high = standardized_mean_interval(t, n, confidence)
    return Projected(n, mean, var, hedges_factor(n - 1) * mean / math.sqrt(var), low, high)


def halves(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of K minibatches the cross-fit uses: the first floor(K/2) and the next
    floor(K/2) (an odd K leaves its last one out, so both halves have the same size)."""
    h = k // 2
    return torch.arange(h), torch.arange(h, 2 * h)


def crossfit_projected(grads: torch.Tensor, confidence: float = 0.95) -> Projected:
    """The cross-fitted projected SNR of K minibatch gradients: the direction is the mean of one
    half, the SNR is measured on the other half, and the two ways round are averaged (mean,
    variance, SNR and the interval's ends). Each way is unbiased for the SNR along its own
    direction (the measured half is independent of it); the average of the two intervals'
    ends covers the average of the two targets at least at the stated rate when their errors
    are not perfectly correlated (measured: docs/mechanisms.md#precision-and-coverage). Needs
    K >= 6 (three per half)."""
    g = _rows(grads)
    a, b = halves(g.shape[0])
    if len(a) < 3:
        return Projected(2 * len(a), None, None, None, None, None)
    ways = [projected_snr(g[b], g[a].mean(0), confidence), projected_snr(g[a], g[b].mean(0), confidence)]
    fields = ("mean", "variance", "snr", "low", "high")
    vals = {f: [getattr(w, f) for w in ways] for f in fields}
    avg = {f: (sum(v) / 2 if all(x is not None for x in v) else None) for f, v in vals.items()}
    return Projected(2 * len(a), **avg)


def naive_projected(grads: torch.Tensor, confidence: float = 0.95) -> Projected:
    """The projected SNR with the direction estimated from the same gradients it is measured on:
    biased up (under pure noise its mean is ||mean g|| > 0). For the tests and the docs only: the
    probe reports the cross-fitted one."""
    g = _rows(grads)
    return projected_snr(g, g.mean(0), confidence)


def cosine_to_reference(grads: torch.Tensor, sizes: Iterable[int] = (1, 2, 4)) -> dict[int, float | None]:
    """Mean cosine between minibatch gradients averaged over b minibatches and the reference
    direction of the other half (cross-fitted both ways, non-overlapping blocks of b), for each
    batch size b (in minibatches): it rises with b as signal accumulates (cos^2 ~ b rho / (1 + b rho)
    with rho the SNR of one minibatch along the mean; docs/mechanisms.md#cosine-and-noise-scale).
    None for a b larger than a half."""
    g = _rows(grads)
    a, b_ = halves(g.shape[0])
    out: dict[int, float | None] = {}
    ways = [(unit(g[ref].mean(0)), meas) for ref, meas in ((a, b_), (b_, a))]  # each direction once
    for b in sizes:
        if b > len(a) or b < 1:
            out[b] = None
            continue
        cosines = []
        for d, meas in ways:
            if d is None:
                continue
            blocks = g[meas][: (len(meas) // b) * b].reshape(len(meas) // b, b, -1).mean(1)
            norms = blocks.norm(dim=1).clamp_min(torch.finfo(blocks.dtype).tiny)
            cosines.append(float((blocks @ d / norms).mean()))
        out[b] = float(np.mean(cosines)) if cosines else None
    return out


def noise_scale(grads: torch.Tensor, batch_images: int) -> dict[str, float | None]:
    """McCandlish et al. 2018 (App. A), from two batch sizes: B_small = one minibatch of
    `batch_images` images and B_big = the K minibatches together. With |G_small|^2 the mean
    squared norm of the K minibatch gradients and |G_big|^2 that of their mean,
    |G|^2 = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small) and
    S = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big) are unbiased for |E g|^2 and
    tr Sigma of ONE image's gradient; the noise scale B_simple = S / |G|^2 (in images) is the
    batch size at which the gradient's noise equals its signal. Equal to batch_images /
    snr_unbiased (docs/mechanisms.md#cosine-and-noise-scale). None when |G|^2 <= 0 (no signal
    resolved) or non-finite."""
    g = _rows(grads)
    k = g.shape[0]
    small, big = batch_images, k * batch_images
    g_small = float(g.square().sum(1).mean())
    g_big = float(g.mean(0).square().sum())
    sq = (big * g_big - small * g_small) / (big - small)
    trace = (g_small - g_big) / (1 / small - 1 / big)
    ok = math.isfinite(sq) and math.isfinite(trace)
    return {
        "grad_sq_norm": sq if ok else None,
        "trace_sigma_per_image": trace if ok else None,
        "noise_scale": trace / sq if ok and sq > 0 else None,
    }


def step_statistics(step_grads: torch.Tensor, confidence: float = 0.95) -> dict[str, list[float | None]]:
    """Per denoising step s, from the (K, S, P) per-step gradients g_{k,s}: the bias-corrected
    trace SNR with its interval, the cross-fitted projected SNR with its interval (each step its
    own direction), and the step's share of the summed trace variance sum_s tr Cov_s (scale-free:
    where the noise sits; docs/mechanisms.md#per-step-variance)."""
    x = torch.as_tensor(step_grads).detach()  # one step at a time in float64 (memory: K x P, not K x S x P)
    if x.dim() != 3:
        raise ValueError(f"expected (K, S, P) per-step gradients, got shape {tuple(x.shape)}")
    out: dict[str, list[float | None]] = {
        k: []
        for k in (
            "step_snr_unbiased",
            "step_snr_unbiased_low",
            "step_snr_unbiased_high",
            "step_proj_snr",
            "step_proj_snr_low",
            "step_proj_snr_high",
            "step_var_share",
        )
    }
    traces = []
    for s in range(x.shape[1]):
        g = _rows(x[:, s])
        m = g.mean(0)
        c = g - m  # the centred rows, shared by the trace and the interval
        tr = _trace(c)
        traces.append(tr)
        low, high = _interval(m, c, confidence) if g.shape[0] >= 3 else (None, None)
        out["step_snr_unbiased"].append(_snr_unbiased(float(m.square().sum()), tr, g.shape[0]) if tr > 0 else None)
        out["step_snr_unbiased_low"].append(low)
        out["step_snr_unbiased_high"].append(high)
        p = crossfit_projected(g, confidence)
        out["step_proj_snr"].append(p.snr)
        out["step_proj_snr_low"].append(p.low)
        out["step_proj_snr_high"].append(p.high)
    total = sum(t for t in traces if math.isfinite(t))
    out["step_var_share"] = [t / total if total > 0 and math.isfinite(t) else None for t in traces]
    return out


def effective_sample_size(log_weights: torch.Tensor) -> float:
    """Kish's effective sample size of importance weights w = exp(log_weights), as a fraction
    of their number: (sum w)^2 / (n sum w^2), 1 when every weight is equal (on-policy), 1/n
    when one weight takes all (docs/mechanisms.md#off-policy-probe)."""
    lw = torch.as_tensor(log_weights).detach().to(torch.float64).flatten()
    w = torch.exp(lw - lw.max())
    return float(w.sum() ** 2 / (w.numel() * w.square().sum()))


def projected_statistics(grads: torch.Tensor, batch_images: int, confidence: float = 0.95) -> dict[str, float | None]:
    """The probe's row entries beside the trace statistics: the cross-fitted projected SNR with
    its interval, the projection's mean and variance, the cosine to the reference at 1, 2, 4, 8
    minibatches, and the noise scale."""
    grads = _rows(grads)  # float64 once for the three below
    p = crossfit_projected(grads, confidence)
    row: dict[str, float | None] = {
        "proj_snr": p.snr,
        "proj_snr_low": p.low,
        "proj_snr_high": p.high,
        "proj_mean": p.mean,
        "proj_var": p.variance,
    }
    row.update({f"cosine_ref_b{b}": c for b, c in cosine_to_reference(grads, (1, 2, 4, 8)).items()})
    row.update(noise_scale(grads, batch_images))
    return row


# ---- credit per denoising step ------------------------------------------------------------


def credit_share(step_grads: torch.Tensor) -> torch.Tensor:
    """(S,) share of the gradient norm each denoising step contributes, summing to 1:
    share_s = mean_k ||g_{k,s}|| / sum_s' mean_k ||g_{k,s'}||, where g_{k,s} is the gradient of
    step s's loss term in minibatch k. Accepts per-step gradient vectors (K, S, P), per-step norms
    (K, S), or already averaged norms (S,). Norms rather than squared norms, so the share reads as
    "fraction of the gradient magnitude" (PCPO, the uneven credit it corrects)."""
    x = torch.as_tensor(step_grads).detach().to(torch.float64)
    if x.dim() == 3:
        x = x.norm(dim=-1)
    if x.dim() == 2:
        x = x.mean(0)
    if x.dim() != 1 or (x < 0).any() or x.sum() <= 0:
        raise ValueError("credit_share needs non-negative norms, not all zero, of shape (S,), (K, S) or (K, S, P)")
    return x / x.sum()


def max_min_ratio(shares: torch.Tensor) -> float:
    """max_s share / min_s share: 1 when every step gets the same credit; inf if a step gets none."""
    x = torch.as_tensor(shares, dtype=torch.float64)
    return float(x.max() / x.min()) if x.min() > 0 else float("inf")


def gini(shares: torch.Tensor) -> float:
    """Gini coefficient sum_i sum_j |x_i - x_j| / (2 S^2 mean x) (Gini 1912, population form):
    0 for equal shares, (S-1)/S when one step takes all the credit."""
    x = torch.as_tensor(shares, dtype=torch.float64).flatten()
    return float((x[:, None] - x[None, :]).abs().sum() / (2 * x.numel() ** 2 * x.mean()))


# ---- collecting gradients -------------------------------------------------------------------


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def minibatch_gradients(
    loss_fn: Callable[[int], torch.Tensor], params: Iterable[torch.nn.Parameter], k: int
) -> torch.Tensor:
    """(K, P): the flattened gradient of `loss_fn(i)` (a scalar: the loss on minibatch i, i.e.
    fixed probe prompts and seed i) for i = 0..K-1 over the trainable `params`. Uses
    `torch.autograd.grad`, so parameters' `.grad` fields are left untouched; a parameter the loss
    does not reach contributes zeros."""
    params = [p for p in params if p.requires_grad]
    return torch.stack([_flat_grad(loss_fn(i), params, retain_graph=False).detach() for i in range(k)])


def per_step_gradient_norms(
    step_losses_fn: Callable[[int], torch.Tensor], params: Iterable[torch.nn.Parameter], k: int
) -> torch.Tensor:
    """(K, S): ||grad of step s's loss term|| for minibatch i, where `step_losses_fn(i)` returns
    the (S,) per-denoising-step terms whose sum is the loss. One backward pass per step; only
    norms are kept, so memory stays at one gradient. Feed the result to `credit_share`."""
    params = [p for p in params if p.requires_grad]
    rows = []
    for i in range(k):
        terms = step_losses_fn(i)
        n = terms.numel()
        rows.append(
            torch.stack([_flat_grad(terms[s], params, retain_graph=s < n - 1).detach().norm() for s in range(n)])
        )
    return torch.stack(rows)
