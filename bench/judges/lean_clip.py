"""The in-house CLIP judge's network in plain torch (docs/performance.md#start-up-the-lean-clip-judge):
open_clip's `CLIP` with a `VisionTransformer` image tower and a causal text transformer pooled at
[EOS], for exactly the options `t2i_rl_bench.judges.clip.build_clip` sets, computing the same
numbers bit for bit without importing open_clip (which imports torchvision, transformers and
`torch._dynamo`, ~2.7 s of CPU in every job that loads the judge).

Each class mirrors its open_clip original op for op and in the same order, with the same module
tree and parameter names (the shipped `model.safetensors` loads as it is) and the same torch
modules inside (`nn.MultiheadAttention`, `nn.GELU`, `nn.Linear`, `nn.Conv2d`, `nn.Embedding`), so
that even construction draws the same random numbers in the same order: a model built after
`torch.manual_seed(s)` equals open_clip's built after the same seed, parameter for parameter.
tests/test_clip_equivalence.py checks embeddings, cosines and feature outputs with `torch.equal`
on the shipped judge and at random initialisation. A configuration outside what is mirrored is
refused, naming the key."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2i_rl_bench.models.dit import WordTokenizer

# open_clip's CLIPVisionCfg / CLIPTextCfg defaults for the options this module does not mirror:
# a config may name them only with these values
VISION_FIXED: dict[str, Any] = {
    "ls_init_value": None,
    "patch_dropout": 0.0,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "attn_pooler_queries": 256,
    "attn_pooler_heads": 8,
    "timm_model_name": None,
    "timm_model_pretrained": False,
    "timm_pool": "avg",
    "timm_proj": "linear",
    "timm_proj_bias": False,
    "timm_drop": 0.0,
    "timm_drop_path": None,
}
VISION_FREE = ("image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio")
TEXT_FIXED: dict[str, Any] = {
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "eos",  # open_clip's default is 'argmax'; the in-house judge pools at [EOS]
    "proj_bias": False,
    "proj_type": "linear",
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "hf_model_name": None,
    "hf_model_pretrained": True,
    "hf_proj_type": "mlp",
    "hf_pooler_type": "mean_pooler",
}
TEXT_FREE = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id", "eos_id")
VISION_DEFAULTS = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
TEXT_DEFAULTS = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
    "pad_id": 0,
    "eos_id": 2,
}


def _checked(cfg: dict[str, Any], free: tuple[str, ...], fixed: dict[str, Any], defaults: dict, what: str) -> dict:
    for key, value in cfg.items():
        if key in free:
            continue
        if key not in fixed:
            raise ValueError(f"{what} {key}={value!r}: not an option the lean CLIP ({__name__}) mirrors")
        if value != fixed[key]:
            raise ValueError(
                f"{what} {key}={value!r}; the lean CLIP ({__name__}) mirrors {key}={fixed[key]!r} only "
                "(load this judge with T2I_RL_BENCH_LEAN_MODELS=0)"
            )
    if what == "text_cfg" and cfg.get("pool_type") != "eos":
        raise ValueError(f"text_cfg pool_type={cfg.get('pool_type', 'argmax')!r}; the lean CLIP mirrors 'eos' only")
    for key in ("image_size", "patch_size"):
        if isinstance(cfg.get(key), (tuple, list)):
            raise ValueError(f"{what} {key}={cfg[key]!r}: the lean CLIP mirrors a square int only")
    if isinstance(cfg.get("layers"), (tuple, list)):
        raise ValueError(f"{what} layers={cfg['layers']!r}: a ResNet tower is not mirrored")
    return {**defaults, **{k: v for k, v in cfg.items() if k in free}}


class LayerNorm(nn.LayerNorm):
    """open_clip's LayerNorm: torch's, cast back to the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.to(orig_type)


class ResidualAttentionBlock(nn.Module):
    """open_clip's default block (no layer scale, no cross-attention, batch first)."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_head, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = LayerNorm(d_model)
        mlp_width = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, mlp_width)),
                    ("gelu", nn.GELU()),
                    ("c_proj", nn.Linear(mlp_width, d_model)),
                ]
            )
        )
        self.ls_2 = nn.Identity()

    def attention(self, q_x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        attn_mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
        return self.attn(q_x, q_x, q_x, need_weights=False, attn_mask=attn_mask)[0]

    def forward(self, q_x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), attn_mask=attn_mask))
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)])

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for r in self.resblocks:
            x = r(x, attn_mask=attn_mask)
        return x


class VisionTransformer(nn.Module):
    """open_clip's ViT image tower with a learnable position embedding, ln_pre, the class token
    pooled after ln_post and a projection matrix."""

    def __init__(
        self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_ratio: float, output_dim: int
    ):
        super().__init__()
        self.image_size, self.patch_size = (image_size, image_size), (patch_size, patch_size)
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.patch_dropout = nn.Identity()
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.attn_pool = None
        self.pool_type = "tok"
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        x = x.permute(0, 2, 1)  # (N, grid ** 2, width)
        x = torch.cat([self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.patch_dropout(x)
        return self.ln_pre(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embeds(x)
        x = self.transformer(x)
        x = self.ln_post(x)
        pooled = x[:, 0]
        return pooled @ self.proj


class TextTransformer(nn.Module):
    """open_clip's text tower as `CLIP` builds it, only to be taken apart by `CLIP` (as open_clip
    does): its construction draws the same random numbers in the same order."""

    def __init__(
        self,
        context_length: int,
        vocab_size: int,
        width: int,
        heads: int,
        layers: int,
        mlp_ratio: float,
        output_dim: int,
        pad_id: int,
        eos_id: int,
    ):
        super().__init__()
        self.num_pos = self.context_length = context_length
        self.vocab_size, self.width, self.heads = vocab_size, width, heads
        self.pad_id, self.eos_id, self.pool_type = pad_id, eos_id, "eos"
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(self.num_pos, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_final = LayerNorm(width)
        self.register_buffer("attn_mask", self.build_causal_mask(), persistent=False)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.init_parameters()

    def init_parameters(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (self.transformer.width**-0.5) * ((2 * self.transformer.layers) ** -0.5)
        attn_std = self.transformer.width**-0.5
        fc_std = (2 * self.transformer.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    def build_causal_mask(self) -> torch.Tensor:
        mask = torch.empty(self.num_pos, self.num_pos)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask


class LeanCLIP(nn.Module):
    """open_clip's `CLIP(embed_dim, vision_cfg, text_cfg)` for the options above (GELU, float32,
    no logit bias), with `encode_image` and `encode_text` as open_clip computes them."""

    def __init__(self, embed_dim: int, vision_cfg: dict[str, Any], text_cfg: dict[str, Any]):
        super().__init__()
        vision = _checked(dict(vision_cfg), VISION_FREE, VISION_FIXED, VISION_DEFAULTS, "vision_cfg")
        text_settings = _checked(dict(text_cfg), TEXT_FREE, TEXT_FIXED, TEXT_DEFAULTS, "text_cfg")
        self.output_dict = False
        self.visual = VisionTransformer(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            width=vision["width"],
            layers=vision["layers"],
            heads=vision["width"] // vision["head_width"],
            mlp_ratio=vision["mlp_ratio"],
            output_dim=embed_dim,
        )
        text = TextTransformer(output_dim=embed_dim, **text_settings)
        self.transformer = text.transformer
        self.context_length = text.context_length
        self.vocab_size = text.vocab_size
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.text_pool_type = text.pool_type
        self.text_eos_id = text.eos_id
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.logit_bias = None

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        idx = (text == self.text_eos_id).int().argmax(dim=-1)  # open_clip's text_global_pool, 'eos'
        x = x[torch.arange(x.shape[0], device=x.device), idx]
        x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


class JudgeTokenizer(WordTokenizer):
    """The judge's saved word-level tokenizer through the `tokenizers` library (as the lean
    policy's), with the [EOS] id the text tower pools at."""

    def __init__(self, folder: str | Path):
        super().__init__(folder)
        eos = json.loads((Path(folder) / "tokenizer_config.json").read_text()).get("eos_token")
        self.eos_token_id = None if eos is None else self._tokenizer.token_to_id(eos)
        if self.eos_token_id is None:
            raise ValueError(f"{folder}: eos token {eos!r} is not in the vocabulary")
