"""The embedded base model: a PixArt-style DiT in pixel space at 16x16 with a small CLIP text
encoder and the world's word-level tokenizer, all diffusers/transformers classes, so the same
folder layout and loading code serve real checkpoints.

Size and resolution were chosen by measurement (docs/design.md#measured-choices): a 0.3M-parameter DiT at 16x16
samples and trains 3-4x faster than a small UNet or a 32x32 model on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel

from t2i_rl_bench.world.tokenizer import MAX_LENGTH, build_tokenizer


@dataclass(frozen=True)
class EmbeddedSpec:
    resolution: int = 16
    patch_size: int = 2
    layers: int = 4
    heads: int = 4
    head_dim: int = 16
    text_width: int = 64
    text_layers: int = 2
    objective: str = "epsilon"  # "epsilon" (DDPM/DDIM family) or "flow" (rectified flow)


def build_transformer(spec: EmbeddedSpec) -> PixArtTransformer2DModel:
    inner = spec.heads * spec.head_dim
    return PixArtTransformer2DModel(
        num_attention_heads=spec.heads,
        attention_head_dim=spec.head_dim,
        in_channels=3,
        out_channels=3,
        num_layers=spec.layers,
        norm_num_groups=1,
        cross_attention_dim=inner,
        sample_size=spec.resolution,
        patch_size=spec.patch_size,
        caption_channels=spec.text_width,
        use_additional_conditions=False,
    )


def build_text_encoder(spec: EmbeddedSpec, vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.text_width,
        intermediate_size=2 * spec.text_width,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return CLIPTextModel(config)


def build_scheduler(spec: EmbeddedSpec):
    if spec.objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    # Stable Diffusion 1.x's schedule (scaled-linear betas 0.00085-0.012, "leading" spacing with
    # steps_offset 1, set_alpha_to_one False): the sampler then has SD's per-step credit structure
    # (docs/algorithms.md#per-step-credit), so what the study measures about credit transfers to real models. A
    # cosine schedule with alpha_bar(T) ~ 0 was tried first: its first DDIM step takes ~98% of the
    # gradient norm, a pathology SD does not have. x0 is clipped to the data range (pixel space).
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        clip_sample=True,
        set_alpha_to_one=False,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


def build_components(spec: EmbeddedSpec):
    """Freshly initialised (transformer, text_encoder, tokenizer, scheduler); seed torch first."""
    tokenizer = build_tokenizer()
    return (
        build_transformer(spec),
        build_text_encoder(spec, len(tokenizer)),
        tokenizer,
        build_scheduler(spec),
    )
