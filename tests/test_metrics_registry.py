import numpy as np
import pytest

import t2i_rl_bench.metrics as bm
from t2i_rl_bench.registry import METRICS


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


def test_table_keys_find_their_metric_and_direction():
    assert bm.direction("quality/fid") == "lower" and bm.direction("matched/quality/fid") == "lower"
    assert bm.direction("reward/jpeg_compressibility") == "higher" and bm.direction("diversity/vendi") == "higher"
    assert bm.direction("convergence/seconds_to_80") == "lower" and bm.direction("snr_unbiased") == "higher"
    assert bm.direction("device_seconds") is None and bm.direction("credit_share/3") is None
    assert not bm.lookup("trace_cov").scale_free and bm.lookup("snr").scale_free
    gold = bm.gold_keys(["reward/x", "attribute/mean", "quality/fid", "quality/kid", "device_seconds"])
    assert gold == ["attribute/mean", "quality/fid", "quality/kid"]
    assert bm.floors(["diversity/vendi", "quality/fid", "diversity/pairwise_cosine_distance"]) == {
        "diversity/vendi": 1.0,
        "diversity/pairwise_cosine_distance": 0.0,
    }
    assert bm.lookup("quality/fid").unit == "FID"
    assert bm.lookup("attribute/mean").gold and not bm.lookup("attribute/colour").gold
    assert bm.direction("attribute/colour") == "higher"
