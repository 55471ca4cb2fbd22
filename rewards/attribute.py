"""Attribute match: the programmatic checker as a reward, the fraction of the attributes the
prompt names that the image shows (GenEval-like, exact, nothing for a network to fool)."""

from __future__ import annotations

import numpy as np

from t2i_rl_bench.world.checker import score


class AttributeMatch:
    def __call__(self, images, prompts, metadata):
        arr = images.detach().float().cpu().numpy()
        per_image = [score(img, prompt) for img, prompt in zip(arr, prompts, strict=True)]
        fractions = np.asarray([np.mean(list(s.values())) for s in per_image])
        all_right = np.asarray([all(s.values()) for s in per_image], dtype=float)
        return fractions, {"all_correct": all_right}
