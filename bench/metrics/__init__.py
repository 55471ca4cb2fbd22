"""The measurements of the study (docs/measurements.md), as pure functions in one module per
kind: statistics (over seeds), gradient_variance, convergence, quality (FID/KID/CLIP score),
diversity, collapse. The scalar ones are registered in `t2i_rl_bench.registry.METRICS` under their
function's name, each with the direction in which it is better, the table keys it appears under
(`keys`, glob patterns over the columns of eval.json / probe.json), whether it is a gold check of
the held-out evaluation (`gold`: the metrics a proxy reward can hack), and whether it is
scale-free (`scale_free=False`: its value depends on the loss's scale, so it is shown per method
and never ranked across methods). The tables, verdicts and report read all of this from here
through `lookup`; they hold no metric lists of their own.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from t2i_rl_bench.metrics import collapse, convergence, diversity, gradient_variance, quality, statistics
from t2i_rl_bench.registry import METRICS

DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class Metric:
    """A named measurement: `fn` computes it, `direction` says which way is better."""

    name: str
    direction: str  # "higher" | "lower"
    fn: Callable[..., Any]
    description: str
    keys: tuple[str, ...] = ()  # table keys (glob patterns) that hold this metric's values
    gold: bool = False  # a gold check of the held-out evaluation (reward hacking shows here)
    scale_free: bool = True  # False: depends on the loss's scale; never ranked across methods
    unit: str = ""  # axis label of figures
    floor: float | None = None  # the value of a fully collapsed model (diversity measures)

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


def _register(name: str, direction: str, fn: Callable[..., Any], description: str, **fields) -> Metric:
    return METRICS.register(name)(Metric(name, direction, fn, description, **fields))


def _mean_score(scores) -> float:
    """The held-out mean of per-image scores (a reward, an attribute check)."""
    return float(sum(scores) / len(scores))


# table keys wrapped by the derived tables; the wrapped metric keeps its direction
_WRAPPERS = ("matched/", "probe/", "recursive/", "seconds/", "gain/", "change/", "decay/")


@functools.cache  # the built-in metrics are registered at import; table keys repeat
def lookup(key: str) -> Metric | None:
    """The registered metric whose `keys` match a table key (e.g. 'quality/fid' -> fid,
    'matched/quality/fid' -> fid, 'reward/jpeg_compressibility' -> reward), None for keys that are
    bookkeeping (k, device_seconds, credit_share/3, ...) and have no direction."""
    while key.startswith(_WRAPPERS):
        key = key[len(next(p for p in _WRAPPERS if key.startswith(p))) :]
    for name in METRICS.names():
        metric = METRICS.get(name)
        if isinstance(metric, Metric) and any(fnmatch.fnmatchcase(key, k) for k in metric.keys):
            return metric
    return None


def direction(key: str) -> str | None:
    """'higher', 'lower', or None (not a ranked measure) for a table key."""
    metric = lookup(key)
    return metric.direction if metric is not None else None


def floors(keys) -> dict[str, float]:
    """The table keys among `keys` that have a collapse floor, with it (Vendi 1, distance 0)."""
    return {k: m.floor for k in keys if (m := lookup(k)) is not None and m.floor is not None}


def gold_keys(keys) -> list[str]:
    """The table keys among `keys` that are gold checks, in the given order."""
    return [k for k in keys if (m := lookup(k)) is not None and m.gold]


_register(
    "reward",
    "higher",
    _mean_score,
    "held-out mean of a registered reward (rewards: higher is better)",
    keys=("reward/*",),
)
_register(
    "attribute_accuracy",
    "higher",
    _mean_score,
    "held-out rate of correct scene attributes (GenEval-like)",
    keys=("attribute/mean", "attribute/all"),
    gold=True,
    unit="fraction correct",
)
_register(
    "attribute_part",
    "higher",
    _mean_score,
    "held-out rate of one scene attribute (colour, shape, ...)",
    keys=("attribute/*",),
    unit="fraction correct",
)
_register(
    "fid",
    "lower",
    quality.fid,
    "FID(real, fake, feature) by torchmetrics with a custom feature network",
    keys=("quality/fid",),
    gold=True,
    unit="FID",
)
_register("clean_fid", "lower", quality.clean_fid, "the same FID by clean-fid, on the same feature network")
_register(
    "kid",
    "lower",
    quality.kid,
    "KID(real, fake, feature) by torchmetrics: (mean, std) over subsets",
    keys=("quality/kid",),
    gold=True,
    unit="KID",
)
_register(
    "clip_score",
    "higher",
    quality.clip_score,
    "100 * max(cos, 0) per (image, text) embedding pair",
    keys=("quality/clip_score",),
    gold=True,
    unit="CLIP score (0-100)",
)
_register(
    "vendi_score",
    "higher",
    diversity.vendi_score,
    "effective number of distinct samples (features)",
    keys=("diversity/vendi",),
    gold=True,
    unit="effective # of samples",
    floor=1.0,
)
_register(
    "mean_pairwise_distance",
    "higher",
    diversity.mean_pairwise_distance,
    "mean distance between samples",
    keys=("diversity/pairwise_cosine_distance",),
    unit="cosine distance",
    floor=0.0,
)
for _field in ("precision", "recall", "density", "coverage"):
    _register(
        _field,
        "higher",
        _prdc_field(_field),
        f"k-NN {_field} of fake features against real features",
        keys=(f"prdc/{_field}",),
    )
del _field
_register(
    "gradient_snr",
    "higher",
    gradient_variance.gradient_snr,
    "||mean g||^2 / tr Cov of K minibatch gradients",
    keys=("snr",),
)
_register(
    "gradient_snr_unbiased",
    "higher",
    gradient_variance.gradient_snr_unbiased,
    "(||mean g||^2 - tr Cov / K) / tr Cov: the SNR without its 1/K noise floor",
    keys=("snr_unbiased", "update*/snr_unbiased", "step_snr_unbiased/*"),
)
_register(
    "projected_snr",
    "higher",
    gradient_variance.crossfit_projected,
    "cross-fitted SNR of the gradient projected on the other half's mean (docs/mechanisms.md#projected-snr)",
    keys=("proj_snr", "update*/proj_snr", "step_proj_snr/*"),
)
_register(
    "cosine_to_reference",
    "higher",
    gradient_variance.cosine_to_reference,
    "cosine of minibatch gradients to the other half's mean, by batch size",
    keys=("cosine_ref_b*",),
)
_register(
    "importance_ess",
    "higher",
    gradient_variance.effective_sample_size,
    "effective sample size of the importance ratios after an update of the round (off-policy probe)",
    keys=("update*/ess", "update*/ess_trajectory"),
)
_register(
    "trace_covariance",
    "lower",
    gradient_variance.trace_covariance,
    "tr Cov of K minibatch gradients (scales with the loss: per method only)",
    keys=("trace_cov",),
    scale_free=False,
)
_register(
    "mean_sq_norm",
    "higher",
    gradient_variance.mean_sq_norm,
    "||mean g||^2 of K minibatch gradients (scales with the loss: per method only)",
    keys=("mean_sq_norm",),
    scale_free=False,
)
_register(
    "norm_variance",
    "lower",
    gradient_variance.norm_variance,
    "variance of the K minibatch gradient norms (scales with the loss: per method only)",
    keys=("norm_variance",),
    scale_free=False,
)
_register(
    "mean_pairwise_cosine",
    "higher",
    gradient_variance.mean_pairwise_cosine,
    "agreement of K gradients",
    keys=("mean_pairwise_cosine",),
)
_register(
    "credit_gini", "lower", gradient_variance.gini, "Gini of the per-denoising-step credit share", keys=("credit_gini",)
)
_register(
    "credit_max_min",
    "lower",
    gradient_variance.max_min_ratio,
    "max/min per-step credit share",
    keys=("credit_max_min",),
)
_register(
    "loop_collapsed",
    "lower",
    collapse.loop_collapsed,
    "self-consuming loop's collapse rule, calibrated on the fully synthetic loop (docs/mechanisms.md#collapse-rule)",
    keys=("collapse/loop_collapsed",),
)
_register(
    "normalized_auc",
    "higher",
    convergence.normalized_auc,
    "area under the normalised reward curve",
    keys=("convergence/normalized_auc",),
)
_register(
    "samples_to_reach",
    "lower",
    convergence.samples_to_reach,
    "samples (or device-seconds) to a fraction of the reference improvement; censored runs kept",
    keys=("convergence/samples_to_*", "convergence/seconds_to_*", "convergence/rmst_*"),
)
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
    "direction",
    "floors",
    "gold_keys",
    "lookup",
    "diversity",
    "gradient_variance",
    "quality",
    "statistics",
]
