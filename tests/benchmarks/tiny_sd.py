"""A tiny randomly initialised Stable Diffusion pipeline for speed measurements: the real diffusers
classes at toy size, saved as a pipeline folder so the harness loads it through `Policy.load`.

Default: UNet2DConditionModel (32, 64) with one layer per block and cross-attention only in the
low-resolution blocks (0.99M parameters) on 4 x 16 x 16 latents; an AutoencoderKL with one
downsampling (32 x 32 images); a 2-layer CLIPTextModel; DDIMScheduler with SD-1.x's schedule.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TinySDSpec:
    seed: int = 0
    latent_size: int = 16  # latents are 4 x latent_size x latent_size
    block_out_channels: tuple[int, ...] = (32, 64)
    cross_attention_dim: int = 32
    text_layers: int = 2
    max_tokens: int = 16  # tokenizer model_max_length (77 in real checkpoints)
    vae_levels: int = 2  # VAE downsampling factor 2 ** (levels - 1): 16 x 16 latents -> 32 x 32 images


def _clip_tokenizer(max_tokens: int):
    """CLIP's byte-level BPE with no merges: every byte alone and with </w>, plus the special tokens."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_tokens)


def build_tiny_sd(folder: str | Path, spec: TinySDSpec = TinySDSpec()) -> Path:
    """Save the tiny pipeline to `folder` (a StableDiffusionPipeline folder) and return it."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(spec.seed)
    tokenizer = _clip_tokenizer(spec.max_tokens)
    levels = len(spec.block_out_channels)
    # cross-attention only at the lowest resolution(s): the first block plain, the rest attend
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=spec.latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=spec.block_out_channels,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=spec.cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.cross_attention_dim,
        intermediate_size=2 * spec.cross_attention_dim,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=2,
        max_position_embeddings=spec.max_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    levels_vae = spec.vae_levels
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,) * levels_vae,
        down_block_types=("DownEncoderBlock2D",) * levels_vae,
        up_block_types=("UpDecoderBlock2D",) * levels_vae,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=spec.latent_size * 2 ** (spec.vae_levels - 1),
        scaling_factor=0.18215,
    )
    # SD-1.x's schedule, as ddpo-pytorch rebuilds it (DDIM from the pipeline's scheduler config)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    (folder / "tiny_sd.json").write_text(json.dumps(asdict(spec)))
    return folder


def unet_parameters(folder: str | Path) -> int:
    from diffusers import UNet2DConditionModel

    return sum(p.numel() for p in UNet2DConditionModel.from_pretrained(Path(folder) / "unet").parameters())
