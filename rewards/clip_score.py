"""CLIP score (Hessel et al. 2021) with OpenAI CLIP ViT-L/14 as a transformers `CLIPModel`:
100 * max(cos(image, prompt), 0), the torchmetrics convention (`t2i_rl_bench.metrics.quality.clip_score`),
about 20-35 on real generations. The info holds the cosine.

Differentiable (DRaFT, ReFL): `differentiable_score` is the same score on the images as a tensor,
CLIP's preprocessing done in torch (bicubic antialiased resize, centre crop, normalise) instead of
on 8-bit PIL images; the two agree to the 8-bit rounding and the resizes' difference
(tests/test_rewards.py). The clamp at cosine 0 passes no gradient below it (real generations score
about 0.2-0.35).

Weights: `model_path` = a local copy of the `openai/clip-vit-large-patch14` folder (config.json,
model.safetensors, tokenizer files, preprocessor_config.json).
"""

from __future__ import annotations

import torch

from t2i_rl_bench.judges.reward_model_weights import (
    hf_clip_cosine,
    hf_clip_cosine_differentiable,
    hf_clip_problems,
    load_hf_clip,
    raise_problems,
)

NAME = "clip_score"


class ClipScore:
    def __init__(self, model_path: str | None = None, device: str | None = None, batch_size: int = 32):
        raise_problems(self.check_weights(dict(model_path=model_path)))
        self.model, self.tokenizer, self.preprocess = load_hf_clip(NAME, "model_path", model_path, device=device)
        self.batch_size = batch_size

    @staticmethod
    def check_weights(settings: dict) -> list[str]:
        return hf_clip_problems(NAME, "model_path", settings.get("model_path"))

    differentiable = True  # a network on the pixels: its score has a gradient in the images

    def differentiable_score(self, images, prompts, metadata=None) -> torch.Tensor:
        """(B,) 100 max(cos, 0) with autograd through the images (the CLIP's weights stay frozen)."""
        cos = hf_clip_cosine_differentiable(self.model, self.tokenizer, self.preprocess, images, prompts)
        return 100 * cos.clamp_min(0)

    def __call__(self, images, prompts, metadata=None):
        cos = hf_clip_cosine(self.model, self.tokenizer, self.preprocess, images, prompts, self.batch_size)
        return 100 * cos.clamp_min(0), {"cosine": cos}
