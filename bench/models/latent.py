"""What the real (latent-space) model families share: a diffusers pipeline folder, a VAE that
decodes latents to images, a device, optional mixed precision, and the guided prediction.

The rollout engine keeps latents and the sampler's arithmetic where the caller puts them (the
CPU by default); `predict` moves its inputs to the model's device and returns the model output
in fp32 on the caller's device, so the samplers' log-probs are always fp32
(docs/algorithms.md#log-probabilities-per-dimension-mean-in-fp32).

Mixed precision (`mixed_precision: bf16 | fp16`) follows ddpo-pytorch / Flow-GRPO: the frozen
text encoders (and, under LoRA, the frozen base denoiser) are cast to the half dtype, trainable
weights stay fp32, and the denoiser runs under autocast. The VAE stays fp32 (Flow-GRPO; SD3's VAE
overflows in fp16). fp16 training also needs a gradient scaler, which the training loop does not
have: use bf16.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from t2i_rl_bench.models.policy import Cond, Policy

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> torch.device:
    """The process's GPU (LOCAL_RANK under torchrun/accelerate), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def cond_to(cond: Cond, device: torch.device) -> Cond:
    """A copy of a Cond (or subclass) with every tensor field on `device`."""
    fields = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(cond).items()}
    return type(cond)(**fields)


def read_model_index(folder: Path, components: tuple[str, ...]) -> dict:
    """The pipeline's model_index.json, after checking that each required component's subfolder
    exists (a missing one is named with its path, before any weights are read)."""
    index = json.loads((folder / "model_index.json").read_text())
    missing = [name for name in components if not (folder / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"model folder {folder} ({index.get('_class_name')}) lacks "
            + ", ".join(str(folder / name) for name in missing)
        )
    return index


class LatentPolicy(Policy):
    """Base of the diffusers-pipeline families; subclasses set the denoiser's subfolder, the LoRA
    targets, and implement `from_folder`, `encode` and `_denoise`."""

    denoiser_folder = "unet"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(
        self,
        denoiser,
        text_encoder,
        tokenizer,
        scheduler,
        vae,
        info: dict,
        resolution: int | None = None,
        mixed_precision: str | None = None,
        device: str | torch.device | None = None,
        decode_batch: int = 8,
    ):
        super().__init__(denoiser, text_encoder, tokenizer, scheduler, info)
        mixed_precision = mixed_precision or "no"
        if mixed_precision not in DTYPES:
            raise ValueError(f"mixed_precision must be one of {sorted(DTYPES)}, got {mixed_precision!r}")
        self.vae = vae.requires_grad_(False).eval()
        self.mixed_precision = mixed_precision
        self.compute_dtype = DTYPES[mixed_precision]
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(resolution or denoiser.config.sample_size * self.vae_scale)
        multiple = self.vae_scale * getattr(denoiser.config, "patch_size", 1)
        if self.resolution % multiple:
            raise ValueError(f"resolution {self.resolution} is not a multiple of {multiple} (VAE x patch size)")
        self.decode_batch = decode_batch
        self.info = dict(info, resolution=self.resolution, mixed_precision=mixed_precision)
        self.text_encoder.to(self.compute_dtype)  # before moving: T5-XXL alone is 19 GB in fp32
        self.to(torch.device(device) if device is not None else default_device())

    # ---- devices and precision -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    # ---- shapes --------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale
        return (self.denoiser.config.in_channels, side, side)

    # ---- LoRA ----------------------------------------------------------------------------
    def enable_lora(
        self, rank: int, alpha: float | None = None, targets: tuple[str, ...] | list[str] | None = None
    ) -> None:
        super().enable_lora(rank, alpha, targets or self.lora_targets)
        if self.compute_dtype != torch.float32:  # frozen base weights in the half dtype (ddpo-pytorch)
            for param in self.denoiser.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(self.compute_dtype)

    # ---- denoiser ------------------------------------------------------------------------
    def _denoise(self, module: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        raise NotImplementedError

    def _forward(self, module, x, t_model, cond: Cond) -> torch.Tensor:
        """The model output in fp32 on x's device; the forward runs on the model's device."""
        t = torch.as_tensor(t_model).expand(x.shape[0]).to(self.device)
        with self.autocast():
            out = self._denoise(module, x.to(self.device), t, cond_to(cond, self.device))
        return out.float().to(x.device)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W) fp32 on x's device: VAE decode of latents / scaling_factor
        (+ shift_factor, SD3), then (image + 1) / 2 as the diffusers pipelines post-process."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        images = []
        for part in torch.split(x, self.decode_batch):
            z = part.to(self.device, torch.float32) / cfg.scaling_factor + shift
            images.append(self.vae.decode(z).sample.float().to(x.device))
        return ((torch.cat(images) + 1) / 2).clamp(0, 1)

    # ---- checkpoints ---------------------------------------------------------------------
    def save_denoiser(self, folder: str | Path) -> None:
        """The LoRA adapter and its settings only, or the whole denoiser in diffusers format."""
        if self.lora is not None:
            super().save_denoiser(folder)
            return
        self.denoiser.save_pretrained(Path(folder) / self.denoiser_folder)

    def load_denoiser_state(self, folder: str | Path) -> None:
        folder = Path(folder)
        if (folder / "adapter" / "lora.json").is_file():
            super().load_denoiser_state(folder)  # adapters: enable LoRA if needed, load its weights
            return
        loaded = type(self.denoiser).from_pretrained(folder / self.denoiser_folder)
        self.denoiser.load_state_dict(loaded.state_dict())
