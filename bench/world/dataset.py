"""Rendered scenes with captions, for pretraining the base model and the in-house judges."""

from __future__ import annotations

import numpy as np

from t2i_rl_bench.world.captions import caption, random_omissions
from t2i_rl_bench.world.scenes import all_scenes, render, sample_jitter


def scene_batch(rng: np.random.Generator, n: int, resolution: int = 16, p_uncond: float = 0.0):
    """n random scenes: images (n, 3, H, W) in [0, 1] and captions (an empty caption with
    probability p_uncond, for classifier-free guidance)."""
    scenes = all_scenes()
    images = np.empty((n, 3, resolution, resolution), dtype=np.float32)
    captions = []
    for i in range(n):
        scene = scenes[rng.integers(len(scenes))]
        images[i] = render(scene, resolution, sample_jitter(rng))
        omit = random_omissions(rng)
        captions.append("" if rng.random() < p_uncond else caption(scene, omit))
    return images, captions


def reference_images(prompts: list[str], per_prompt: int, seed: int, resolution: int = 16):
    """Real images for given full captions (the 'reference set' FID compares against)."""
    from t2i_rl_bench.world.captions import parse
    from t2i_rl_bench.world.scenes import Scene

    rng = np.random.default_rng(seed)
    images = []
    for prompt in prompts:
        scene = Scene(**parse(prompt))
        images += [render(scene, resolution, sample_jitter(rng)) for _ in range(per_prompt)]
    return np.stack(images)
