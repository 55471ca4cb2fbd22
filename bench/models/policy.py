"""Policies: a denoiser with its text encoder and scheduler, behind one interface that the rollout
engine, the training loop and evaluation use for every model family.

A model folder holds diffusers/transformers subfolders (`transformer/` or `unet/`,
`text_encoder/`, `tokenizer/`, `scheduler/`, optionally `vae/`) and a `bench_model.json` manifest.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from t2i_rl_bench.models.checkpoint import model_family, read_manifest


@dataclass
class Cond:
    embeds: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L)

    def __getitem__(self, idx) -> Cond:
        return Cond(self.embeds[idx], self.mask[idx])

    @staticmethod
    def cat(parts: list[Cond]) -> Cond:
        return Cond(torch.cat([p.embeds for p in parts]), torch.cat([p.mask for p in parts]))


class Policy(nn.Module):
    """The embedded family: a pixel-space PixArt-style DiT (epsilon or flow objective)."""

    def __init__(self, denoiser, text_encoder, tokenizer, scheduler, info: dict):
        super().__init__()
        self.denoiser = denoiser
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.info = info
        self.objective = info.get("spec", {}).get("objective", "epsilon")
        self._reference: nn.Module | None = None
        self.lora: dict | None = None  # LoRA settings when adapters are trained

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, config_key: str = "model.path", **options) -> Policy:
        """The policy of a model folder, whatever its family: a `bench_model.json` names it (the
        embedded models), else a diffusers `model_index.json` does through its pipeline class.
        options go to the family's `from_folder` (e.g. resolution, mixed_precision)."""
        from t2i_rl_bench.registry import MODELS

        family = model_family(folder, config_key)
        try:
            family_cls = MODELS.get(family)
        except KeyError as exc:
            raise ValueError(
                f"model folder {folder} (config key '{config_key}') is of family {family!r}, not a policy family: {exc}"
            ) from exc
        return family_cls.from_folder(folder, **options)

    @classmethod
    def from_folder(cls, folder: str | Path, **options) -> Policy:
        """The embedded family: PixArt-style DiT, CLIP text encoder, word-level tokenizer."""
        if options:
            raise ValueError(f"the embedded model family takes no model options, got {sorted(options)}")
        from t2i_rl_bench.models.embedded import load_components

        folder = Path(folder)
        info = read_manifest(folder)
        return cls(*load_components(folder, info.get("spec", {}).get("objective", "epsilon")), info)

    def save_denoiser(self, folder: str | Path) -> None:
        """The trained weights: the whole denoiser, or only the LoRA adapter and its settings."""
        folder = Path(folder)
        if self.lora is None:
            self.denoiser.save_pretrained(folder / "transformer")
            return
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        (folder / "adapter").mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in get_peft_model_state_dict(self.denoiser).items()},
            folder / "adapter" / "adapter_model.safetensors",
        )
        (folder / "adapter" / "lora.json").write_text(json.dumps(self.lora))

    def load_denoiser_state(self, folder: str | Path) -> None:
        folder = Path(folder)
        if (folder / "adapter" / "lora.json").is_file():
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            if self.lora is None:
                self.enable_lora(**json.loads((folder / "adapter" / "lora.json").read_text()))
            set_peft_model_state_dict(self.denoiser, load_file(folder / "adapter" / "adapter_model.safetensors"))
            return
        loaded = type(self.denoiser).from_pretrained(folder / "transformer")
        self.denoiser.load_state_dict(loaded.state_dict())

    # ---- LoRA ----------------------------------------------------------------------------
    def enable_lora(
        self,
        rank: int,
        alpha: float | None = None,
        targets: tuple[str, ...] | list[str] = ("to_q", "to_k", "to_v", "to_out.0"),
    ) -> None:
        """Freeze the denoiser and train low-rank adapters on the attention projections (peft).
        The adapters start at zero, so the policy starts as the base model."""
        from peft import LoraConfig, inject_adapter_in_model

        self.lora = {"rank": int(rank), "alpha": float(alpha or rank), "targets": list(targets)}
        self.denoiser.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=self.lora["alpha"], target_modules=list(targets))
        self.denoiser = inject_adapter_in_model(config, self.denoiser)
        for name, param in self.denoiser.named_parameters():
            param.requires_grad_("lora_" in name)

    @contextmanager
    def adapters_disabled(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.denoiser.modules() if isinstance(m, BaseTunerLayer)]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    # ---- shapes --------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.denoiser.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    # ---- text ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Cond:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        embeds = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return Cond(embeds, tokens.attention_mask)

    # ---- denoiser ------------------------------------------------------------------------
    def _forward(self, module, x, t_model, cond: Cond) -> torch.Tensor:
        t_model = torch.as_tensor(t_model).expand(x.shape[0])
        return module(x, encoder_hidden_states=cond.embeds, timestep=t_model, encoder_attention_mask=cond.mask).sample

    def predict(
        self,
        x,
        t_model,
        cond: Cond,
        uncond: Cond | None,
        guidance: float,
        detach_uncond: bool = False,
        reference: bool = False,
    ) -> torch.Tensor:
        """Guided model output eps_u + w (eps_c - eps_u), one forward over the concatenated batch.
        reference=True: the frozen initial policy (LoRA: the same network with adapters off)."""
        if reference and self.lora is not None:
            with self.adapters_disabled():
                return self.predict(x, t_model, cond, uncond, guidance, detach_uncond)
        module = self.reference_denoiser() if reference else self.denoiser
        if uncond is None or guidance == 1.0:
            return self._forward(module, x, t_model, cond)
        t_model = torch.as_tensor(t_model).expand(x.shape[0])
        both = self._forward(module, torch.cat([x, x]), torch.cat([t_model, t_model]), type(cond).cat([uncond, cond]))
        out_u, out_c = both.chunk(2)
        if detach_uncond:  # Flow-GRPO detaches the unconditional branch
            out_u = out_u.detach()
        return out_u + guidance * (out_c - out_u)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W) fp32."""
        return ((x.float() + 1) / 2).clamp(0, 1)

    # ---- reference policy (PRDP, KL) -----------------------------------------------------
    def reference_denoiser(self) -> nn.Module:
        """The frozen initial denoiser (full fine-tuning keeps a copy, made on first use)."""
        if self._reference is None:
            raise RuntimeError("no reference policy: call policy.freeze_reference() before training")
        return self._reference

    def freeze_reference(self) -> None:
        """Keep the initial policy for reference log-probs: LoRA needs nothing (adapters off);
        full fine-tuning keeps a frozen copy."""
        if self.lora is None:
            self._reference = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
