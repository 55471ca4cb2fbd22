"""Rectified-flow models from a local diffusers folder (`StableDiffusion3Pipeline` layout: SD3 /
SD3.5 transformer, VAE with shift_factor, two CLIP text encoders with projection, optional T5),
sampled by the flow SDEs of docs/algorithms.md#the-flow-grpo-sde,
docs/algorithms.md#the-dancegrpo-sde (`t2i_rl_bench.rollout.make_sampler`, objective 'flow').

- Velocity objective: the transformer predicts v ~ eps - x0 with x_t = (1 - t) x0 + t eps.
- Time: the model gets t * 1000 (`FlowMatchEulerDiscreteScheduler.timesteps` = sigmas x
  num_train_timesteps, what `StableDiffusion3Pipeline` passes); the sampler's sigmas are the
  scheduler's own after `set_timesteps`, so they include the shift (3.0 for SD3.5-M).
- Text, as `StableDiffusion3Pipeline.encode_prompt` (and Flow-GRPO's `encode_prompt`): each CLIP's
  penultimate hidden state (77 tokens), concatenated over features and zero-padded to
  `joint_attention_dim`, then the T5 tokens (`max_sequence_length`, 128 in Flow-GRPO) along the
  sequence; the pooled condition is both CLIPs' projected text embeddings. T5 is optional: without
  it (`use_t5=False`, or a folder without text_encoder_3) its tokens are zeros, as diffusers does
  when `text_encoder_3=None`; this drops ~4.7B parameters at some cost in prompt following.
- LoRA targets: Flow-GRPO's (`scripts/train_sd3.py`): attn.to_q/k/v, attn.to_out.0 and the
  context stream's attn.add_q/k/v_proj, attn.to_add_out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i_rl_bench.models.latent import LatentPolicy, cond_to, read_model_index
from t2i_rl_bench.models.policy import Cond

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


@dataclass
class PooledCond(Cond):
    pooled: torch.Tensor  # (B, P) pooled text embedding (SD3: CLIP-L + CLIP-G projections)

    def __getitem__(self, idx) -> PooledCond:
        return PooledCond(self.embeds[idx], self.mask[idx], self.pooled[idx])

    @staticmethod
    def cat(parts: list[PooledCond]) -> PooledCond:
        return PooledCond(
            torch.cat([p.embeds for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )


class FlowMatchingPolicy(LatentPolicy):
    """SD3-style MMDiT (SD3Transformer2DModel) + FlowMatchEulerDiscreteScheduler with shift."""

    denoiser_folder = "transformer"
    lora_targets = (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
    )

    def __init__(self, *args, max_sequence_length: int = 128, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = "flow"
        self.max_sequence_length = int(max_sequence_length)
        self.info = dict(self.info, max_sequence_length=self.max_sequence_length, t5=len(self.text_encoder) == 3)

    @classmethod
    def from_folder(cls, folder: str | Path, use_t5: bool = True, **options) -> FlowMatchingPolicy:
        """options: resolution (pixels; default transformer sample_size x 8), mixed_precision,
        device, max_sequence_length (T5 tokens, default 128 as Flow-GRPO), use_t5."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        folder = Path(folder)
        index = read_model_index(folder, COMPONENTS)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        if scheduler.config.use_dynamic_shifting:
            raise ValueError(
                f"{folder / 'scheduler'}: dynamic (resolution-dependent) shifting needs mu, which the "
                "flow samplers do not pass; use a scheduler config with a fixed shift"
            )
        encoders = [
            CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder"),
            CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
        ]
        tokenizers = [
            AutoTokenizer.from_pretrained(folder / "tokenizer"),
            AutoTokenizer.from_pretrained(folder / "tokenizer_2"),
        ]
        if use_t5 and (index.get("text_encoder_3") or [None])[0] is not None:
            encoders.append(T5EncoderModel.from_pretrained(folder / "text_encoder_3"))
            tokenizers.append(AutoTokenizer.from_pretrained(folder / "tokenizer_3"))
        info = {
            "family": "flow",
            "pipeline": index["_class_name"],
            "path": str(folder),
            "shift": float(scheduler.config.shift),
        }
        return cls(
            SD3Transformer2DModel.from_pretrained(folder / "transformer"),
            nn.ModuleList(encoders),
            tokenizers,
            scheduler,
            AutoencoderKL.from_pretrained(folder / "vae"),
            info,
            **options,
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> PooledCond:
        prompts = list(prompts)
        max_length = self.tokenizer[0].model_max_length  # diffusers uses the first tokenizer's for both CLIPs
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizer[:2], self.text_encoder[:2]):
            ids = tokenizer(
                prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            pooled.append(out.text_embeds)  # (B, P_i) projected pooled embedding
            hidden.append(out.hidden_states[-2])  # (B, 77, D_i) penultimate layer
        width = self.denoiser.config.joint_attention_dim
        clip = torch.cat(hidden, dim=-1)
        clip = F.pad(clip, (0, width - clip.shape[-1]))  # (B, 77, joint_attention_dim)
        if len(self.text_encoder) == 3:
            ids = self.tokenizer[2](
                prompts,
                padding="max_length",
                max_length=self.max_sequence_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids
            t5 = self.text_encoder[2](ids.to(self.device))[0]
        else:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, width, device=self.device, dtype=clip.dtype)
        embeds = torch.cat([clip, t5.to(clip.dtype)], dim=-2)  # (B, 77 + L_t5, joint_attention_dim)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)  # SD3 attends to all tokens
        return cond_to(PooledCond(embeds, mask, torch.cat(pooled, dim=-1)), self.device)

    def _denoise(self, module, x, t, cond: PooledCond) -> torch.Tensor:
        return module(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=cond.embeds,
            pooled_projections=cond.pooled,
            return_dict=False,
        )[0]
