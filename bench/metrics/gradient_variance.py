"""Gradient variance of a policy-gradient loss, measured from K independent minibatch gradients
g_k of the algorithm's own loss on the trainable parameters
(docs/measurements.md#gradient-signal-and-per-step-credit), and the per-denoising-step "credit
share" (the diagnosis of PCPO: a few timesteps carry most of the gradient).

Conventions. `grads` is (K, P), one flattened gradient per row; every statistic is computed in
float64. The gradient SNR is ||mean||^2 / tr Cov: the squared length of the average gradient over
the total variance of ONE minibatch gradient. It is scale-free (a loss multiplied by c leaves it
unchanged), so methods with different loss scales compare fairly. The SNR of the K-average is K
times larger. ||mean||^2 over-estimates ||E g||^2 by tr Cov / K, so under pure noise `snr` sits
near 1/K; `snr_unbiased` subtracts that bias (and can be negative).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


def _rows(grads: torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grads).detach().to(torch.float64)
    if g.dim() != 2 or g.shape[0] < 2:
        raise ValueError(f"expected (K, P) gradients with K >= 2, got shape {tuple(g.shape)}")
    return g


def trace_covariance(grads: torch.Tensor) -> float:
    """tr Cov = 1/(K-1) sum_k ||g_k - mean||^2: the unbiased total variance of one minibatch
    gradient (the quantity of variance-reduction papers, e.g. Greensmith et al. 2004)."""
    g = _rows(grads)
    return float((g - g.mean(0)).square().sum() / (g.shape[0] - 1))


def mean_sq_norm(grads: torch.Tensor) -> float:
    """||mean_k g_k||^2, the squared length of the average gradient."""
    return float(_rows(grads).mean(0).square().sum())


def gradient_snr(grads: torch.Tensor) -> float:
    """||mean||^2 / tr Cov (see the module docstring): signal over the noise of one minibatch
    gradient, scale-free; the SNR of the K-average is K times this. inf when tr Cov = 0."""
    tr = trace_covariance(grads)
    return mean_sq_norm(grads) / tr if tr > 0 else float("inf")


def gradient_snr_unbiased(grads: torch.Tensor) -> float:
    """(||mean||^2 - tr Cov / K) / tr Cov: `gradient_snr` with the unbiased estimate of ||E g||^2
    (E ||mean||^2 = ||E g||^2 + tr Cov / K), near 0 rather than 1/K under pure noise."""
    k = _rows(grads).shape[0]
    tr = trace_covariance(grads)
    return (mean_sq_norm(grads) - tr / k) / tr if tr > 0 else float("inf")


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
    k = g.shape[0]
    if k < 3:
        return None, None
    m = g.mean(0)
    c = g - m
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
    """All of the above for one (K, P) stack of gradients."""
    low, high = snr_unbiased_interval(grads)
    return GradientStatistics(
        k=int(_rows(grads).shape[0]),
        trace_cov=trace_covariance(grads),
        mean_sq_norm=mean_sq_norm(grads),
        snr=gradient_snr(grads),
        snr_unbiased=gradient_snr_unbiased(grads),
        snr_unbiased_low=low,
        snr_unbiased_high=high,
        mean_pairwise_cosine=mean_pairwise_cosine(grads),
        norm_variance=norm_variance(grads),
    )


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
