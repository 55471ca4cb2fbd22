"""The embedded base model: a PixArt-style DiT in pixel space at 16x16 with a small CLIP text
encoder and the world's word-level tokenizer, saved as diffusers/transformers folders so the same
layout serves real checkpoints.

Size and resolution were chosen by measurement (docs/design.md#measured-choices): a 0.3M-parameter DiT at 16x16
samples and trains 3-4x faster than a small UNet or a 32x32 model on 2 CPU cores.

Pretraining builds the diffusers/transformers classes (`build_components`: they write the
folders). Loading a folder (`load_components`) gives the lean classes of bench/models/dit.py,
which compute the same numbers bit for bit without importing diffusers or transformers
(docs/performance.md#start-up-the-lean-embedded-model); `lean=False` or the environment variable
T2I_RL_BENCH_LEAN_MODELS=0 loads the diffusers/transformers classes instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEAN_ENV = "T2I_RL_BENCH_LEAN_MODELS"


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


def build_transformer(spec: EmbeddedSpec):
    """A freshly initialised diffusers PixArtTransformer2DModel."""
    from t2i_rl_bench.models.imports import denoiser_class

    inner = spec.heads * spec.head_dim
    return denoiser_class()(
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


def build_text_encoder(spec: EmbeddedSpec, vocab_size: int):
    """A freshly initialised transformers CLIPTextModel."""
    from transformers.models.clip.configuration_clip import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPTextModel

    from t2i_rl_bench.world.tokenizer import MAX_LENGTH

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
    from t2i_rl_bench.models.imports import scheduler_class

    if spec.objective == "flow":
        return scheduler_class("flow")(num_train_timesteps=1000, shift=1.0)
    # Stable Diffusion 1.x's schedule (scaled-linear betas 0.00085-0.012, "leading" spacing with
    # steps_offset 1, set_alpha_to_one False): the sampler then has SD's per-step credit structure
    # (docs/algorithms.md#per-step-credit), so what the study measures about credit transfers to real models. A
    # cosine schedule with alpha_bar(T) ~ 0 was tried first: its first DDIM step takes ~98% of the
    # gradient norm, a pathology SD does not have. x0 is clipped to the data range (pixel space).
    return scheduler_class("epsilon")(
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
    from t2i_rl_bench.world.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    return (
        build_transformer(spec),
        build_text_encoder(spec, len(tokenizer)),
        tokenizer,
        build_scheduler(spec),
    )


def lean_models() -> bool:
    """Whether loading gives the lean classes (the default; T2I_RL_BENCH_LEAN_MODELS=0: diffusers')."""
    value = os.environ.get(LEAN_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"environment variable {LEAN_ENV}={value!r}: 1 (lean classes, the default) or 0 (diffusers')")
    return value == "1"


def load_components(folder: str | Path, objective: str = "epsilon", lean: bool | None = None) -> tuple[Any, ...]:
    """(denoiser, text_encoder, tokenizer, scheduler) of an embedded model folder, in eval mode:
    the lean classes of bench/models/dit.py (lean=None: unless T2I_RL_BENCH_LEAN_MODELS=0), or
    diffusers'/transformers' (the same numbers bit for bit: tests/test_dit_equivalence.py)."""
    folder = Path(folder)
    if lean_models() if lean is None else lean:
        from t2i_rl_bench.models.dit import CLIPText, FlowMatchSchedule, PixArtDiT, WordTokenizer, load_schedule
        from t2i_rl_bench.models.imports import defer_dynamo

        defer_dynamo()  # nothing else of the job imports torch._dynamo now: keep the optimiser from it
        scheduler = load_schedule(folder / "scheduler")
        if isinstance(scheduler, FlowMatchSchedule) != (objective == "flow"):
            raise ValueError(
                f"{folder / 'scheduler'} holds a {type(scheduler).__name__}; the manifest's objective is {objective!r}"
            )
        return (
            PixArtDiT.from_pretrained(folder / "transformer"),
            CLIPText.from_pretrained(folder / "text_encoder"),
            WordTokenizer(folder / "tokenizer"),
            scheduler,
        )
    from transformers.models.clip.modeling_clip import CLIPTextModel
    from transformers.tokenization_utils_fast import PreTrainedTokenizerFast

    from t2i_rl_bench.models.imports import denoiser_class, scheduler_class

    return (
        denoiser_class().from_pretrained(folder / "transformer"),
        CLIPTextModel.from_pretrained(folder / "text_encoder"),
        PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer"),
        scheduler_class(objective).from_pretrained(folder / "scheduler"),
    )
