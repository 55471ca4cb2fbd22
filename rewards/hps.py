"""Human Preference Score v2.1 (Wu et al. 2023, HPSv2): an open_clip ViT-H/14 fine-tuned on human
preferences; the score is the cosine of the normalised image and prompt embeddings (HPSv2's
`score`), about 0.2-0.35 on real generations (the papers often quote it x100).

Weights: `weights` = `HPS_v2.1_compressed.pt` (a {'state_dict': ...} of the whole CLIP), `model` =
the open_clip config ("ViT-H-14", or a JSON config file). Tokenizer: open_clip's BPE, shipped in
its wheel.

Differentiable (DRaFT, ReFL): `differentiable_score`, the same score with CLIP's preprocessing in
torch on the images as a tensor (tests/test_rewards.py measures the agreement with the PIL path).
"""

from __future__ import annotations

import torch

from t2i_rl_bench.judges.reward_model_weights import (
    clip_preprocess,
    clip_preprocess_differentiable,
    load_open_clip,
    open_clip_problems,
    open_clip_tokenizer,
    raise_problems,
)

NAME = "hps_v21"


class HPSv21:
    def __init__(
        self,
        weights: str | None = None,
        model: str | dict = "ViT-H-14",
        quick_gelu: bool = False,
        device: str | None = None,
        batch_size: int = 32,
    ):
        raise_problems(self.check_weights(dict(weights=weights, model=model, quick_gelu=quick_gelu)))
        self.clip, self.preprocess = load_open_clip(NAME, "weights", weights, model, quick_gelu, device)
        self.tokenizer = open_clip_tokenizer(self.clip)
        self.batch_size = batch_size

    @staticmethod
    def check_weights(settings: dict) -> list[str]:
        return open_clip_problems(
            NAME,
            "weights",
            settings.get("weights"),
            settings.get("model", "ViT-H-14"),
            settings.get("quick_gelu", False),
        )

    differentiable = True  # CLIP on the pixels: its cosine has a gradient in the images

    def differentiable_score(self, images, prompts, metadata=None) -> torch.Tensor:
        """(B,) the cosine with autograd through the images, CLIP's preprocessing in torch
        (clip_preprocess_differentiable; the weights stay frozen)."""
        device = self.clip.logit_scale.device
        img = self.clip.encode_image(
            clip_preprocess_differentiable(images.to(device), **self.preprocess), normalize=True
        )
        with torch.no_grad():
            txt = self.clip.encode_text(self.tokenizer(list(prompts)).to(device), normalize=True)
        return (img * txt).sum(-1).float().to(images.device)

    @torch.no_grad()
    def __call__(self, images, prompts, metadata=None):
        device = self.clip.logit_scale.device
        scores = []
        for i in range(0, images.shape[0], self.batch_size):
            x = clip_preprocess(images[i : i + self.batch_size], **self.preprocess).to(device)
            img = self.clip.encode_image(x, normalize=True)
            txt = self.clip.encode_text(self.tokenizer(prompts[i : i + self.batch_size]).to(device), normalize=True)
            scores.append((img * txt).sum(-1))
        return torch.cat(scores).double().cpu(), {}
