"""LAION aesthetic predictor v2 (Schuhmann et al., improved-aesthetic-predictor; the DDPO aesthetic
task): an MLP on the L2-normalised CLIP ViT-L/14 image embedding, scoring on LAION's 1-10 rating
scale (most photographs score 4-7).

Weights, both local files:
- `clip_weights`: OpenAI CLIP ViT-L/14 as an open_clip state dict (.safetensors/.bin, e.g.
  `open_clip_pytorch_model.bin` of the hub repo `timm/vit_large_patch14_clip_224.openai`);
- `head_weights`: the MLP head, `sac+logos+ava1-l14-linearMSE.pth`.
`model` names the open_clip config ("ViT-L-14", or a JSON config file); OpenAI's weights were
trained with QuickGELU, hence `quick_gelu=True`.

Differentiable (DRaFT, ReFL): `differentiable_score`, the same score with CLIP's preprocessing in
torch on the images as a tensor (tests/test_rewards.py measures the agreement with the PIL path).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i_rl_bench.judges.reward_model_weights import (
    clip_preprocess,
    clip_preprocess_differentiable,
    file_problems,
    load_open_clip,
    load_state_dict,
    open_clip_config,
    open_clip_problems,
    raise_problems,
    shape_problems,
    tensor_shapes,
    where,
)

NAME = "laion_aesthetic"


class AestheticHead(nn.Module):
    """The predictor's MLP (its dropouts are identities at inference; the layer indices match the
    released state dict: layers.0, .2, .4, .6, .7)."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


class LaionAesthetic:
    def __init__(
        self,
        clip_weights: str | None = None,
        head_weights: str | None = None,
        model: str | dict = "ViT-L-14",
        quick_gelu: bool = True,
        device: str | None = None,
        batch_size: int = 32,
    ):
        raise_problems(
            self.check_weights(
                dict(clip_weights=clip_weights, head_weights=head_weights, model=model, quick_gelu=quick_gelu)
            )
        )
        self.clip, self.preprocess = load_open_clip(NAME, "clip_weights", clip_weights, model, quick_gelu, device)
        head = AestheticHead(self.clip.visual.output_dim)
        head.load_state_dict(load_state_dict(Path(head_weights)))
        self.head = head.to(self.clip.logit_scale.device).eval().requires_grad_(False)
        self.batch_size = batch_size

    @staticmethod
    def check_weights(settings: dict) -> list[str]:
        model, quick_gelu = settings.get("model", "ViT-L-14"), settings.get("quick_gelu", True)
        problems = open_clip_problems(NAME, "clip_weights", settings.get("clip_weights"), model, quick_gelu)
        path = settings.get("head_weights")
        head_problems = file_problems(NAME, "head_weights", path)
        if not head_problems:
            try:
                embed_dim = open_clip_config(model)[0]["embed_dim"]
                expected = {k: tuple(v.shape) for k, v in AestheticHead(embed_dim).state_dict().items()}
                head_problems = shape_problems(NAME, "head_weights", Path(path), expected, tensor_shapes(Path(path)))
            except Exception as exc:  # noqa: BLE001
                head_problems = [f"{where(NAME, 'head_weights', path)}: cannot read the weights: {exc}"]
        return problems + head_problems

    differentiable = True  # CLIP image tower + linear head on the pixels: a gradient in the images

    def differentiable_score(self, images, prompts, metadata=None) -> torch.Tensor:
        """(B,) the score with autograd through the images, CLIP's preprocessing in torch
        (clip_preprocess_differentiable; the weights stay frozen)."""
        device = self.clip.logit_scale.device
        x = clip_preprocess_differentiable(images.to(device), **self.preprocess)
        embeds = F.normalize(self.clip.encode_image(x), dim=-1)
        return self.head(embeds).squeeze(-1).float().to(images.device)

    @torch.no_grad()
    def __call__(self, images, prompts, metadata=None):
        device = self.clip.logit_scale.device
        scores = []
        for i in range(0, images.shape[0], self.batch_size):
            x = clip_preprocess(images[i : i + self.batch_size], **self.preprocess).to(device)
            embeds = F.normalize(self.clip.encode_image(x), dim=-1)
            scores.append(self.head(embeds).squeeze(-1))
        return torch.cat(scores).double().cpu(), {}
