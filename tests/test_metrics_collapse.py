import math

import pytest

from t2i_rl_bench.metrics import collapse as cl


def test_collapse_onset():
    steps = [0, 100, 200, 300]
    assert cl.collapse_onset(steps, [10.0, 8.0, 4.0, 2.0], base_diversity=10.0, fraction=0.5) == 200.0
    assert cl.collapse_onset(steps, [10.0, 8.0, 5.0, 6.0], base_diversity=10.0, fraction=0.5) is None
    assert cl.collapse_onset(steps, [10.0, 8.0, 7.0, 6.0], base_diversity=10.0, fraction=0.8) == 200.0


def test_metric_at_reward_interpolates_at_the_first_crossing():
    rewards = [0.0, 0.4, 0.8, 0.6, 1.0]
    fid = [10.0, 20.0, 40.0, 50.0, 80.0]
    assert cl.metric_at_reward(rewards, fid, 0.6) == pytest.approx(30.0)  # halfway from 0.4 to 0.8
    assert cl.metric_at_reward(rewards, fid, 0.9) == pytest.approx(72.5)  # 3/4 of the way from 0.6 to 1.0
    assert cl.metric_at_reward(rewards, fid, 0.0) == 10.0
    assert math.isnan(cl.metric_at_reward(rewards, fid, 1.5))


def test_quality_at_matched_reward():
    runs = {
        "fast_collapse": ([0.0, 0.5, 1.0], [10.0, 30.0, 90.0]),
        "slow_healthy": ([0.0, 0.3, 0.6], [10.0, 12.0, 14.0]),
    }
    assert cl.matched_reward_level([r for r, _ in runs.values()]) == 0.6
    level, at = cl.metric_at_matched_reward(runs)
    assert level == 0.6
    assert at["slow_healthy"] == pytest.approx(14.0)
    assert at["fast_collapse"] == pytest.approx(30.0 + 0.2 * 60.0)  # reward 0.6 is 1/5 of 0.5 -> 1.0
