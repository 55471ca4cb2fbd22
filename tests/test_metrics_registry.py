import numpy as np
import pytest

import bench.metrics as bm
from bench.registry import METRICS


def test_metrics_are_registered_callable_and_directed():
    for name in ("fid", "kid", "clip_score", "vendi_score", "coverage", "gradient_snr", "normalized_auc"):
        metric = METRICS.get(name)
        assert isinstance(metric, bm.Metric) and metric.name == name
        assert metric.direction in bm.DIRECTIONS
    assert METRICS.get("fid").direction == "lower" and METRICS.get("vendi_score").direction == "higher"


def test_metric_delegates_and_compares():
    vendi = METRICS.get("vendi_score")
    assert vendi(np.eye(3)) == pytest.approx(3.0)
    assert vendi.better(3.0, 2.0) and METRICS.get("fid").better(2.0, 3.0)
    real = np.random.default_rng(0).normal(size=(20, 3))
    assert METRICS.get("coverage")(real, real) == 1.0
    with pytest.raises(ValueError):
        bm.Metric("x", "up", abs, "bad direction")
