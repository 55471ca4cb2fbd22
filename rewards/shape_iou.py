"""Shape IoU: a dense reward from the programmatic checker (docs/study.md#the-second-reward).

The checker's shape and size attributes are right or wrong; this reward grades them: the
intersection-over-union of the image's largest object with the world's own template of the shape
and size the prompt names, placed around the object's centroid (the best of the checker's small
window of offsets), in [0, 1]; 0 when the image shows no object. It rewards drawing the named
shape at the named size, and nothing else the prompt names, so it is a second task beside
attribute_match (whose weakest attribute at the base is the shape: 0.45 right)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from t2i_rl_bench.world.captions import parse
from t2i_rl_bench.world.checker import _FOREGROUND_DISTANCE, _MIN_OBJECT_PIXELS
from t2i_rl_bench.world.scenes import SIZES, shape_mask


def largest_object(image: np.ndarray) -> np.ndarray | None:
    """The mask (H, W) of the largest object of an RGB image (3, H, W) in [0, 1], segmented as
    the checker does (pixels far from the border's median colour); None when there is none."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    border = np.concatenate([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], axis=1)
    distance = np.linalg.norm(image - np.median(border, axis=1)[:, None, None], axis=0)
    labels, n = ndimage.label(distance > _FOREGROUND_DISTANCE)
    if not n:
        return None
    sizes = ndimage.sum(np.ones_like(labels), labels, index=range(1, n + 1))
    best = int(np.argmax(sizes))
    return labels == best + 1 if sizes[best] >= _MIN_OBJECT_PIXELS else None


def template_iou(component: np.ndarray, shape: str, size: str) -> float:
    """IoU of `component` with the (shape, size) template around its centroid, the best over the
    checker's offsets (a triangle's centroid sits below its anchor)."""
    resolution = component.shape[0]
    cy, cx = ndimage.center_of_mass(component)
    cx, cy = cx + 0.5, cy + 0.5
    oy, ox = np.meshgrid(np.arange(-1.0, 1.01, 0.25), (-0.5, -0.25, 0.0, 0.25, 0.5), indexing="ij")
    xs, ys = (cx + ox).reshape(-1, 1, 1), (cy + oy).reshape(-1, 1, 1)
    templates = shape_mask(shape, xs, ys, SIZES[size] * resolution / 16, resolution)
    union = np.logical_or(templates, component).sum(axis=(1, 2))
    return float((np.logical_and(templates, component).sum(axis=(1, 2)) / np.maximum(union, 1)).max())


def shape_score(image: np.ndarray, prompt: str) -> float:
    named = parse(prompt)
    component = largest_object(image)
    if component is None:
        return 0.0
    return template_iou(component, named["shape"], named.get("size", "small"))


class ShapeIoU:
    def __call__(self, images, prompts, metadata=None):
        arr = images.detach().float().cpu().numpy()
        scores = np.asarray([shape_score(img, p) for img, p in zip(arr, prompts, strict=True)])
        return scores, {}
