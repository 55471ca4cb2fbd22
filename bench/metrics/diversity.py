"""Diversity of a set of generated images, measured on their features (N, D) from a named
feature network: the Vendi score and the mean pairwise distance (per prompt, along training),
and the k-nearest-neighbour precision / recall / density / coverage against a reference set
(the self-consuming loop: does generation g still cover the real data?).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist, pdist


def _features(x, name: str = "features") -> np.ndarray:
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be (N, D) with N >= 1, got shape {x.shape}")
    return x


def vendi_score(features) -> float:
    """Vendi score (Friedman & Dieng 2023, "The Vendi Score"): exp of the Shannon entropy of the
    eigenvalues of K/n, with K the cosine-similarity kernel of the n feature vectors: the effective
    number of distinct samples, 1 for n identical vectors and n for n mutually orthogonal ones."""
    x = _features(features)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(float).tiny)
    lam = np.clip(np.linalg.eigvalsh(unit @ unit.T / x.shape[0]), 0.0, None)
    lam = lam[lam > 0]
    return float(np.exp(-np.sum(lam * np.log(lam))))


def mean_pairwise_distance(features, metric: str = "euclidean") -> float:
    """Mean distance over the n(n-1)/2 pairs of distinct samples (`scipy.spatial.distance.pdist`
    metric: "euclidean", or "cosine" for 1 - cos); 0 for a collapsed set. NaN for n < 2."""
    x = _features(features)
    return float(pdist(x, metric=metric).mean()) if x.shape[0] >= 2 else float("nan")


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float


def _kth_neighbour_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if x.shape[0] <= k:
        raise ValueError(f"need more than k={k} points, got {x.shape[0]}")
    d = cdist(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself (distance 0)


def precision_recall_density_coverage(real, fake, k: int = 5) -> PRDC:
    """k-NN manifold estimates, each ball centred on a sample with radius its distance to its k-th
    nearest neighbour in its own set (k = 5, Naeem et al. 2020's default).

    precision: fraction of fake samples inside some real ball (Kynkaanniemi et al. 2019);
    recall: fraction of real samples inside some fake ball (ibid.);
    density: (1 / kM) sum_j #{real balls containing fake j} (Naeem et al. 2020), about 1
      when fake matches real, (k+1)/k exactly for fake = real;
    coverage: fraction of real balls containing at least one fake sample (Naeem et al. 2020)."""
    x, y = _features(real, "real"), _features(fake, "fake")
    r_real, r_fake = _kth_neighbour_radii(x, k), _kth_neighbour_radii(y, k)
    d = cdist(x, y)  # (N real, M fake)
    in_real = d <= r_real[:, None]
    return PRDC(
        precision=float(in_real.any(axis=0).mean()),
        recall=float((d <= r_fake[None, :]).any(axis=1).mean()),
        density=float(in_real.sum() / (k * y.shape[0])),
        coverage=float(in_real.any(axis=1).mean()),
    )
