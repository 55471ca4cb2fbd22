"""A programmatic attribute checker: reads a scene's attributes back from pixels.

It segments the objects from the background, then reads colour (nearest palette colour of the
mean object pixel), count (connected components), position (side of the canvas where the
objects' centroid lies), size and shape (best intersection-over-union with the world's own
shape templates around each object). Exact on clean renders (a test checks >= 99%); on
generated images it is a GenEval-like judge that no network can fool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from t2i_rl_bench.world.captions import parse
from t2i_rl_bench.world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, shape_mask

_FOREGROUND_DISTANCE = 0.3  # RGB distance from the background that counts as an object pixel
_MIN_OBJECT_PIXELS = 3


@dataclass(frozen=True)
class Reading:
    """What the checker reads off one image; None where nothing could be read."""

    count: str | None
    size: str | None
    colour: str | None
    shape: str | None
    position: str | None
    background: str


def _nearest(value: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    names = list(palette)
    dists = [np.linalg.norm(value - np.asarray(palette[n])) for n in names]
    return names[int(np.argmin(dists))]


def _best_template(component: np.ndarray) -> tuple[str, str]:
    """(shape, size) whose template, placed around the component's centroid, overlaps it best."""
    resolution = component.shape[0]
    cy, cx = ndimage.center_of_mass(component)
    cx, cy = cx + 0.5, cy + 0.5  # pixel centres sit at +0.5
    # a triangle's centroid sits below its anchor point: search a small window of offsets
    oy, ox = np.meshgrid(np.arange(-1.0, 1.01, 0.25), (-0.5, -0.25, 0.0, 0.25, 0.5), indexing="ij")
    centres_x, centres_y = (cx + ox).reshape(-1, 1, 1), (cy + oy).reshape(-1, 1, 1)
    best, best_iou = ("circle", "small"), -1.0
    for shape in SHAPES:
        for size, half in SIZES.items():
            templates = shape_mask(shape, centres_x, centres_y, half * resolution / 16, resolution)  # (offsets, H, W)
            union = np.logical_or(templates, component).sum(axis=(1, 2))
            iou = (np.logical_and(templates, component).sum(axis=(1, 2)) / np.maximum(union, 1)).max()
            if iou > best_iou:
                best, best_iou = (shape, size), iou
    return best


def read(image: np.ndarray) -> Reading:
    """Attributes of one RGB image (3, H, W) in [0, 1]."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    border = np.concatenate([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], axis=1)
    bg_value = np.median(border, axis=1)
    background = _nearest(bg_value, BACKGROUNDS)
    distance = np.linalg.norm(image - bg_value[:, None, None], axis=0)
    mask = distance > _FOREGROUND_DISTANCE
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1)) if n else []
    keep = [i + 1 for i, s in enumerate(sizes) if s >= _MIN_OBJECT_PIXELS]
    if not keep:
        return Reading(None, None, None, None, None, background)
    objects = np.isin(labels, keep)
    count = {1: "one", 2: "two"}.get(len(keep))
    colour = _nearest(image[:, objects].mean(axis=1), COLOURS)
    ys, xs = np.nonzero(objects)
    centre = (image.shape[-1] - 1) / 2
    dx, dy = xs.mean() - centre, ys.mean() - centre
    position = max({"left": -dx, "right": dx, "top": -dy, "bottom": dy}.items(), key=lambda kv: kv[1])[0]
    largest = keep[int(np.argmax([sizes[i - 1] for i in keep]))]
    shape, size = _best_template(labels == largest)
    return Reading(count, size, colour, shape, position, background)


_readings: dict[tuple, Reading] | None = None  # inside `reading_once`: each image's reading, by its bytes


@contextmanager
def reading_once() -> Iterator[None]:
    """Inside, `score` reads each distinct image (the same array bytes) once and keeps its
    `Reading`: an evaluation scores every image with the attribute_match reward and again with
    `accuracy`, and the second pass then costs no segmentation (the same readings, so the same
    numbers; docs/performance.md#where-an-assess-jobs-time-goes)."""
    global _readings
    previous, _readings = _readings, {}
    try:
        yield
    finally:
        _readings = previous


def _read_once(image: np.ndarray) -> Reading:
    if _readings is None:
        return read(image)
    arr = np.asarray(image)
    key = (arr.dtype.str, arr.shape, arr.tobytes())
    reading = _readings.get(key)
    if reading is None:
        reading = _readings[key] = read(arr)
    return reading


def score(image: np.ndarray, prompt: str) -> dict[str, bool]:
    """For each attribute the prompt names: does the image show it?"""
    reading = _read_once(image)
    return {attr: getattr(reading, attr) == value for attr, value in parse(prompt).items()}


def accuracy(images: np.ndarray, prompts: list[str]) -> dict[str, float]:
    """Per-attribute accuracy, 'mean' (fraction of named attributes right, averaged over images)
    and 'all' (fraction of images with every named attribute right)."""
    per_attr: dict[str, list[bool]] = {}
    means, alls = [], []
    for image, prompt in zip(images, prompts, strict=True):
        s = score(image, prompt)
        for attr, ok in s.items():
            per_attr.setdefault(attr, []).append(ok)
        means.append(np.mean(list(s.values())))
        alls.append(all(s.values()))
    out = {attr: float(np.mean(v)) for attr, v in per_attr.items()}
    out["mean"] = float(np.mean(means))
    out["all"] = float(np.mean(alls))
    return out
