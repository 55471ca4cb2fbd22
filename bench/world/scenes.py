"""Procedural scenes: a few objects with attributes that a caption names and a program checks.

A scene is a frozen dataclass of attributes; `render` turns it into an RGB image (3, H, W) in
[0, 1] with hard edges, so the attribute checker can be exact on clean renders. The working size
is 16x16 pixels (see docs/design.md#the-embedded-world: the small DiT learns it in minutes).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
}
SIZES = {"small": 2.6, "large": 3.5}  # half-extent in pixels at 16x16
SQUARE_HALF = 0.9  # square half-side per unit size
TRIANGLE_HALF_BASE = 0.85  # triangle half-base per unit size
POSITIONS = ("left", "right", "top", "bottom")
COUNTS = {"one": 1, "two": 2}
BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}

ATTRIBUTES = ("count", "size", "colour", "shape", "position", "background")


@dataclass(frozen=True)
class Scene:
    count: str
    size: str
    colour: str
    shape: str
    position: str
    background: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def all_scenes() -> list[Scene]:
    """Every attribute combination, in a fixed order."""
    return [Scene(*combo) for combo in itertools.product(COUNTS, SIZES, COLOURS, SHAPES, POSITIONS, BACKGROUNDS)]


def object_centres(scene: Scene, resolution: int = 16, jitter: tuple[float, float] = (0.0, 0.0)):
    """Centres (x, y) in pixels of the scene's objects: one in the middle of its half of the
    canvas, or two spread along the other axis of that half."""
    q = resolution / 4  # a quarter of the canvas
    mid = resolution / 2
    anchor = {"left": (q, mid), "right": (3 * q, mid), "top": (mid, q), "bottom": (mid, 3 * q)}
    x, y = anchor[scene.position]
    if COUNTS[scene.count] == 1:
        centres = [(x, y)]
    elif scene.position in ("left", "right"):
        centres = [(x, q), (x, 3 * q)]
    else:
        centres = [(q, y), (3 * q, y)]
    return [(cx + jitter[0], cy + jitter[1]) for cx, cy in centres]


def shape_mask(shape: str, cx, cy, r: float, resolution: int = 16) -> np.ndarray:
    """Boolean (H, W) mask of one shape; a pixel is in when its centre is. Centres given as
    (N, 1, 1) arrays give N masks (N, H, W) in one go."""
    ys, xs = np.mgrid[0:resolution, 0:resolution] + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        h = SQUARE_HALF * r  # corners filled: tells a square from a circle at 16 px
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # apex up; width grows linearly from the apex to the base
        top, bottom = cy - r, cy + 0.8 * r
        frac = (ys - top) / (bottom - top)
        return (frac >= 0) & (frac <= 1) & (np.abs(dx) <= TRIANGLE_HALF_BASE * r * frac + 0.25)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(scene: Scene, resolution: int = 16, jitter: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """RGB image (3, H, W), float32 in [0, 1]."""
    image = np.empty((3, resolution, resolution), dtype=np.float32)
    image[:] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)[:, None, None]
    r = SIZES[scene.size] * resolution / 16
    colour = np.asarray(COLOURS[scene.colour], dtype=np.float32)
    for cx, cy in object_centres(scene, resolution, jitter):
        mask = shape_mask(scene.shape, cx, cy, r, resolution)
        image[:, mask] = colour[:, None]
    return image


def sample_jitter(rng: np.random.Generator, max_jitter: float = 0.75) -> tuple[float, float]:
    """Small random offset of the whole layout, so scenes are not pixel-identical per caption."""
    return tuple(float(v) for v in rng.uniform(-max_jitter, max_jitter, size=2))
