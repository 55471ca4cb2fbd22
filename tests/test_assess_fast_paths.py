"""The assess job's shortcuts give the numbers of the plain computations bit for bit
(docs/performance.md#where-an-assess-jobs-time-goes): the gradient statistics computed from one
float64 copy and one centring, and the attribute checker reading each image once per evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import t2i_rl_bench.world.checker as checker
from t2i_rl_bench.metrics import gradient_variance as gv
from t2i_rl_bench.world.captions import eval_prompts
from t2i_rl_bench.world.scenes import Scene, render


def _same(a, b) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("k", [2, 3, 8])
def test_gradient_statistics_equal_the_functions_one_by_one(k):
    torch.manual_seed(k)
    for grads in (torch.randn(k, 500) * 1e-3 + 2e-4, torch.ones(k, 50)):  # noise + signal; zero variance
        stats = gv.gradient_statistics(grads)
        low, high = gv.snr_unbiased_interval(grads)
        expected = {
            "k": k,
            "trace_cov": gv.trace_covariance(grads),
            "mean_sq_norm": gv.mean_sq_norm(grads),
            "snr": gv.gradient_snr(grads),
            "snr_unbiased": gv.gradient_snr_unbiased(grads),
            "snr_unbiased_low": low,
            "snr_unbiased_high": high,
            "mean_pairwise_cosine": gv.mean_pairwise_cosine(grads),
            "norm_variance": gv.norm_variance(grads),
        }
        for name, value in expected.items():
            assert _same(getattr(stats, name), value), name


def test_step_statistics_equal_the_functions_one_by_one():
    torch.manual_seed(0)
    steps = torch.randn(8, 5, 400) * 1e-3 + torch.linspace(0, 1e-3, 5)[None, :, None]
    steps[:, 2] = 0.5  # a step with no variance: None where the SNR is undefined
    out = gv.step_statistics(steps)
    for s in range(steps.shape[1]):
        g = steps[:, s]
        tr = gv.trace_covariance(g)
        low, high = gv.snr_unbiased_interval(g)
        p = gv.crossfit_projected(g)
        assert _same(out["step_snr_unbiased"][s], gv.gradient_snr_unbiased(g) if tr > 0 else None)
        assert _same(out["step_snr_unbiased_low"][s], low) and _same(out["step_snr_unbiased_high"][s], high)
        assert _same(out["step_proj_snr"][s], p.snr) and _same(out["step_proj_snr_low"][s], p.low)


def test_cosine_to_reference_unchanged_by_the_shared_directions():
    torch.manual_seed(1)
    g = (torch.randn(8, 300) + 0.3).double()
    a, b = gv.halves(8)
    by_hand = []
    for ref, meas in ((a, b), (b, a)):
        d = gv.unit(g[ref].mean(0))
        blocks = g[meas].reshape(2, 2, -1).mean(1)
        by_hand.append(float((blocks @ d / blocks.norm(dim=1).clamp_min(torch.finfo(blocks.dtype).tiny)).mean()))
    out = gv.cosine_to_reference(g, (2, 8))
    assert out[2] == float(np.mean(by_hand)) and out[8] is None


def test_checker_reads_each_image_once_inside_reading_once(monkeypatch):
    prompts = eval_prompts("heldout", 6)
    rng = np.random.default_rng(0)
    images = np.stack([render(Scene(**checker.parse(p)), 16) for p in prompts]).astype(np.float32)
    images[3] = rng.random(images[3].shape, dtype=np.float32)  # one that the checker gets wrong
    plain = checker.accuracy(images, prompts)
    calls = []
    real_read = checker.read
    monkeypatch.setattr(checker, "read", lambda image: calls.append(1) or real_read(image))
    with checker.reading_once():
        first = [checker.score(img, p) for img, p in zip(images, prompts, strict=True)]
        again = checker.accuracy(images.copy(), prompts)  # equal bytes in another array: read once
    assert len(calls) == len(prompts)
    assert again == plain
    assert first == [checker.score(img, p) for img, p in zip(images, prompts, strict=True)]
    assert len(calls) == 2 * len(prompts)  # outside the block every call reads again
