"""Stable Diffusion 1.x/2.x from a local diffusers folder (`StableDiffusionPipeline` layout: unet,
vae, text_encoder, tokenizer, scheduler): epsilon- or v-prediction UNet on 4 x H/8 x W/8 latents,
sampled by DDIM with eta > 0 as in ddpo-pytorch and DanceGRPO-SD
(docs/algorithms.md#the-ddim-step-and-its-log-probability,
docs/algorithms.md#dancegrpo-on-ddim-models).

- The scheduler is rebuilt as `DDIMScheduler.from_config(...)` whatever the folder ships (SD-1.5
  ships PNDM), exactly as ddpo-pytorch does; `clip_sample` etc. come from that config.
- Prompts are tokenized to the tokenizer's max length (77) and encoded by the CLIP text encoder's
  last hidden state, without an attention mask; the unconditional prompt is "" (ddpo-pytorch's
  `neg_prompt_embed`, and `StableDiffusionPipeline.encode_prompt`).
- LoRA (peft) on the UNet's attention projections to_q, to_k, to_v, to_out.0, i.e. every layer
  ddpo-pytorch's `LoRAAttnProcessor`s adapted; rank/alpha from the run settings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from t2i_rl_bench.models.latent import LatentPolicy, cond_to, read_model_index
from t2i_rl_bench.models.policy import Cond

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class StableDiffusionPolicy(LatentPolicy):
    """SD-1.x/2.x: UNet2DConditionModel + AutoencoderKL + CLIPTextModel, DDIM sampling."""

    denoiser_folder = "unet"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    @classmethod
    def from_folder(cls, folder: str | Path, **options) -> StableDiffusionPolicy:
        """options: resolution (pixels; default unet sample_size x 8), mixed_precision ('no', 'bf16',
        'fp16'), device (default: the process's GPU, else CPU)."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        folder = Path(folder)
        index = read_model_index(folder, COMPONENTS)
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder / "scheduler"))
        info = {
            "family": "sd",
            "pipeline": index["_class_name"],
            "path": str(folder),
            "scheduler": index["scheduler"][1],
        }
        return cls(
            UNet2DConditionModel.from_pretrained(folder / "unet"),
            CLIPTextModel.from_pretrained(folder / "text_encoder"),
            AutoTokenizer.from_pretrained(folder / "tokenizer"),
            scheduler,
            AutoencoderKL.from_pretrained(folder / "vae"),
            info,
            **options,
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Cond:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        embeds = self.text_encoder(tokens.input_ids.to(self.device))[0]  # (B, 77, D) last hidden state
        return cond_to(Cond(embeds, tokens.attention_mask), self.device)

    def _denoise(self, module, x, t, cond: Cond) -> torch.Tensor:
        # SD's UNet attends to every token (padding included): no encoder mask, as the pipeline
        return module(x, t, encoder_hidden_states=cond.embeds).sample
