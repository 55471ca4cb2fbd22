"""The shape_iou reward on the world's own renders: a known answer (docs/study.md#the-second-reward)."""

import numpy as np
import pytest
import torch

from t2i_rl_bench.registry import REWARDS
from t2i_rl_bench.rewards.shape_iou import shape_score
from t2i_rl_bench.world.scenes import Scene, render


def _image(**kw) -> np.ndarray:
    scene = Scene(
        **{
            "count": "one",
            "size": "large",
            "colour": "red",
            "shape": "square",
            "position": "left",
            "background": "black",
            **kw,
        }
    )
    return np.asarray(render(scene), dtype=np.float32)


def test_a_clean_render_of_the_named_shape_scores_near_one_and_a_wrong_shape_less():
    square = _image()
    assert shape_score(square, "a large red square on the left , black background") > 0.9
    assert shape_score(square, "a large red circle on the left , black background") < 0.9
    assert shape_score(square, "a small red square on the left , black background") < 0.8  # wrong size
    blank = np.zeros_like(square)
    assert shape_score(blank, "a large red square on the left , black background") == 0.0


def test_registered_and_graded():
    reward = REWARDS.get("shape_iou")()
    images = torch.from_numpy(np.stack([_image(), _image(shape="circle")]))
    prompts = ["a large red square on the left , black background"] * 2
    scores, info = reward(images, prompts, {})
    assert scores.shape == (2,) and scores[0] > scores[1] and info == {}
    assert 0 <= scores.min() and scores.max() <= 1 + 1e-9
    with pytest.raises(ValueError):
        reward(images, ["not a caption of this world"] * 2, {})
