"""PickScore (Kirstain et al. 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic preferences, as a
transformers `CLIPModel`. Score = logit_scale.exp() * cos(image, prompt), PickScore's own inference
code (about 18-24 on real generations; Flow-GRPO divides it by 26). The info holds the cosine.

Weights, local folders: `model_path` = the `yuvalkirstain/PickScore_v1` folder (config.json +
model.safetensors); `processor_path` = the folder of its processor (PickScore uses the one of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`: tokenizer files + preprocessor_config.json); by default
`model_path`. The image transform is CLIP's (bicubic resize, centre crop, normalise) on tensors,
with the sizes and statistics read from preprocessor_config.json.

Differentiable (DRaFT, ReFL): `differentiable_score`, the same score with CLIP's preprocessing in
torch on the images as a tensor (see rewards/clip_score.py; tests/test_rewards.py measures the
agreement with the PIL path).
"""

from __future__ import annotations

import torch

from t2i_rl_bench.judges.reward_model_weights import (
    hf_clip_cosine,
    hf_clip_cosine_differentiable,
    hf_clip_problems,
    load_hf_clip,
    processor_problems,
    raise_problems,
)

NAME = "pickscore"


class PickScore:
    def __init__(
        self,
        model_path: str | None = None,
        processor_path: str | None = None,
        device: str | None = None,
        batch_size: int = 32,
    ):
        raise_problems(self.check_weights(dict(model_path=model_path, processor_path=processor_path)))
        self.model, self.tokenizer, self.preprocess = load_hf_clip(
            NAME, "model_path", model_path, "processor_path" if processor_path else None, processor_path, device
        )
        self.batch_size = batch_size

    @staticmethod
    def check_weights(settings: dict) -> list[str]:
        model_path, processor_path = settings.get("model_path"), settings.get("processor_path")
        if not processor_path:
            return hf_clip_problems(NAME, "model_path", model_path)
        return hf_clip_problems(NAME, "model_path", model_path, need_processor=False) + processor_problems(
            NAME, "processor_path", processor_path
        )

    differentiable = True  # a network on the pixels: its score has a gradient in the images

    def differentiable_score(self, images, prompts, metadata=None) -> torch.Tensor:
        """(B,) logit_scale.exp() cos with autograd through the images (the weights stay frozen)."""
        cos = hf_clip_cosine_differentiable(self.model, self.tokenizer, self.preprocess, images, prompts)
        return self.model.logit_scale.exp().item() * cos

    def __call__(self, images, prompts, metadata=None):
        cos = hf_clip_cosine(self.model, self.tokenizer, self.preprocess, images, prompts, self.batch_size)
        return self.model.logit_scale.exp().item() * cos, {"cosine": cos}
