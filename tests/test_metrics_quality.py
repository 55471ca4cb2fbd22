import math

import pytest
import torch

from t2i_rl_bench.metrics import quality as q

torch.set_num_threads(1)


class TinyFeatures(torch.nn.Module):
    """A fixed random feature network for 16x16 images: 4x4 average pool, linear, tanh -> 8."""

    num_features = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.proj = torch.nn.Linear(48, self.num_features)

    def forward(self, images):  # (N, 3, 16, 16) in [0, 1] -> (N, 8)
        return torch.tanh(self.proj(self.pool(images).flatten(1)))


def _images(n, seed, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=gen) * 0.5 + shift  # a colour per image
    return (base + 0.2 * torch.rand(n, 3, 16, 16, generator=gen)).clamp(0, 1)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    net = TinyFeatures()
    real = _images(64, 0)
    assert abs(q.fid(real, real, net)) < 1e-4
    near, far = q.fid(real, _images(64, 1), net), q.fid(real, _images(64, 1, shift=0.4), net)
    assert 0 < near < far
    assert net.training  # mode restored


def test_torchmetrics_and_clean_fid_agree_on_the_same_features():
    from cleanfid.fid import fid_from_feats

    net = TinyFeatures()
    real, fake = _images(48, 0), _images(40, 2, shift=0.2)
    tm = q.fid(real, fake, net, batch_size=16)
    cf = q.clean_fid(real, fake, net, batch_size=16)
    with torch.no_grad():
        ref = fid_from_feats(net(real).double().numpy(), net(fake).double().numpy())
    assert tm > 0.01
    assert cf == pytest.approx(tm, rel=1e-5)
    assert ref == pytest.approx(tm, rel=1e-5)


def test_a_network_without_num_features_gets_the_same_fid():
    net = TinyFeatures()
    bare = torch.nn.Sequential(net.pool, torch.nn.Flatten(), net.proj, torch.nn.Tanh())
    real, fake = _images(32, 0), _images(32, 3, shift=0.1)
    assert q.fid(real, fake, bare) == pytest.approx(q.fid(real, fake, net), rel=1e-9)


def test_kid_is_seeded_and_separates_distributions():
    net = TinyFeatures()
    real = _images(60, 0)
    state = torch.get_rng_state()
    same, _ = q.kid(real, _images(60, 1), net, subset_size=30, subsets=20)
    assert torch.equal(state, torch.get_rng_state())
    far, far_std = q.kid(real, _images(60, 1, shift=0.4), net, subset_size=30, subsets=20)
    assert abs(same) < far and far_std >= 0
    assert q.kid(real, _images(60, 1), net, subset_size=30, subsets=20) == (same, _)
    with pytest.raises(ValueError):
        q.kid(real, real, net, subset_size=100)


def test_clip_score_convention():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    txt = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, math.sqrt(3.0)]])
    assert torch.allclose(q.clip_score(img, txt), torch.tensor([100.0, 0.0, 0.0, 50.0], dtype=torch.float64))


def test_images_are_checked():
    net = TinyFeatures()
    with pytest.raises(ValueError):
        q.fid(torch.rand(4, 1, 16, 16), torch.rand(4, 3, 16, 16), net)
    with pytest.raises(ValueError):
        q.fid(torch.rand(4, 3, 16, 16) * 255, torch.rand(4, 3, 16, 16), net)
