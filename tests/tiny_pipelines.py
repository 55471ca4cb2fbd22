"""Tiny randomly initialised diffusers pipelines of the real classes (SD-1.x and SD3 layouts),
saved with `save_pretrained` so they load through `Policy.load` like downloaded checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MAX_TOKENS = 16  # the tokenizers' model_max_length (77 in real checkpoints)


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE with an empty merge list: every byte alone and with CLIP's </w>
    end-of-word suffix, plus CLIP's special tokens (514 ids). Built offline."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def clip_config(tokenizer, hidden: int, projection: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae(latent_channels: int, **sd3) -> AutoencoderKL:
    """Four resolution levels as the real VAEs (x8 downsampling), 8 channels each."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        **sd3,
    )


def build_sd(folder: Path, seed: int = 0) -> Path:
    """SD-1.x layout: UNet2DConditionModel (32, 64), 8x8 latents (64 px), PNDM scheduler as SD-1.5 ships."""
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    scheduler.register_to_config(clip_sample=False)  # SD-1.5's scheduler_config.json has it
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(4, scaling_factor=0.18215),
        text_encoder=CLIPTextModel(clip_config(tokenizer, 32)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    # SD-1.5's tokenizer folder layout: vocab.json + merges.txt (no tokenizer.json)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(tokenizer.get_vocab()))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    return folder


def build_sd3(folder: Path, seed: int = 0) -> Path:
    """SD3.5 layout without T5: SD3Transformer2DModel (2 layers, one dual-attention block, qk RMS
    norm), two CLIPs with projection (16 + 32 wide), 16-channel VAE with shift_factor, shift 3."""
    torch.manual_seed(seed)
    tok_l, tok_g = clip_tokenizer(), clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=16,
        pooled_projection_dim=48,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(clip_config(tok_l, 16)),
        tokenizer=tok_l,
        text_encoder_2=CLIPTextModelWithProjection(clip_config(tok_g, 32)),
        tokenizer_2=tok_g,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(folder)
    return folder
