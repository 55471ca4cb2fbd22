"""The measurements of the study (DESIGN.md, "Measurements"), as pure functions in one module per
kind: statistics (over seeds), gradient_variance, convergence, quality (FID/KID/CLIP score),
diversity, collapse. The scalar ones are registered in `bench.registry.METRICS` under their
function's name, each with the direction in which it is better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.metrics import collapse, convergence, diversity, gradient_variance, quality, statistics
from bench.registry import METRICS

DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class Metric:
    """A named measurement: `fn` computes it, `direction` says which way is better."""

    name: str
    direction: str  # "higher" | "lower"
    fn: Callable[..., Any]
    description: str

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def better(self, a: float, b: float) -> bool:
        """Whether value a is strictly better than value b."""
        return a > b if self.direction == "higher" else a < b


def _prdc_field(field: str) -> Callable[..., float]:
    def fn(real, fake, k: int = 5) -> float:
        return getattr(diversity.precision_recall_density_coverage(real, fake, k), field)

    fn.__name__ = field
    fn.__doc__ = f"The {field} of `diversity.precision_recall_density_coverage`."
    return fn


def _register(name: str, direction: str, fn: Callable[..., Any], description: str) -> Metric:
    return METRICS.register(name)(Metric(name, direction, fn, description))


_register("fid", "lower", quality.fid, "FID(real, fake, feature) by torchmetrics with a custom feature network")
_register("clean_fid", "lower", quality.clean_fid, "the same FID by clean-fid, on the same feature network")
_register("kid", "lower", quality.kid, "KID(real, fake, feature) by torchmetrics: (mean, std) over subsets")
_register("clip_score", "higher", quality.clip_score, "100 * max(cos, 0) per (image, text) embedding pair")
_register("vendi_score", "higher", diversity.vendi_score, "effective number of distinct samples (features)")
_register("mean_pairwise_distance", "higher", diversity.mean_pairwise_distance, "mean distance between samples")
for _field in ("precision", "recall", "density", "coverage"):
    _register(_field, "higher", _prdc_field(_field), f"k-NN {_field} of fake features against real features")
del _field
_register("gradient_snr", "higher", gradient_variance.gradient_snr, "||mean g||^2 / tr Cov of K minibatch gradients")
_register("trace_covariance", "lower", gradient_variance.trace_covariance, "tr Cov of K minibatch gradients")
_register("mean_pairwise_cosine", "higher", gradient_variance.mean_pairwise_cosine, "agreement of K gradients")
_register("credit_gini", "lower", gradient_variance.gini, "Gini of the per-denoising-step credit share")
_register("normalized_auc", "higher", convergence.normalized_auc, "area under the normalised reward curve")
_register(
    "probability_of_improvement",
    "higher",
    statistics.probability_of_improvement,
    "P(X > Y) + 0.5 P(X = Y) over the seeds of two methods",
)

__all__ = [
    "DIRECTIONS",
    "Metric",
    "collapse",
    "convergence",
    "diversity",
    "gradient_variance",
    "quality",
    "statistics",
]
