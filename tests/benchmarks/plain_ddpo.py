"""A straightforward DDPO-IS epoch on a diffusers Stable Diffusion folder, written from the paper
with no harness code: the speed baseline of `tests.benchmarks.sd_epoch` and the independent
reference of tests/test_speed_equivalence.py.

One epoch: sample with classifier-free guidance and DDIM eta > 0 recording each step's log-prob
(Black et al. 2023, Sec. 4; DDIM eq. 12 and 16), JPEG-compressibility reward, per-prompt
normalised advantages, then the PPO-clip loss over every recorded transition, recomputed one
denoising step at a time, and one optimiser step.
"""

from __future__ import annotations

import io
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass
class PlainSettings:
    num_steps: int = 20
    eta: float = 1.0
    guidance: float = 5.0
    sample_batch: int = 8  # images per sampling forward (ddpo-pytorch's sample.batch_size)
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    tracker_buffer: int = 16
    tracker_min_count: int = 16


class PlainDDPO:
    """UNet, VAE, text encoder and DDIM schedule of a pipeline folder, and a DDPO-IS epoch on them."""

    def __init__(self, folder: str | Path, settings: PlainSettings = PlainSettings()):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        folder = Path(folder)
        self.s = settings
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        self.vae = AutoencoderKL.from_pretrained(folder / "vae").requires_grad_(False).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").requires_grad_(False).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder / "scheduler"))
        scheduler.set_timesteps(settings.num_steps)
        self.timesteps = scheduler.timesteps.long()  # (K,) descending
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        self.final_alpha_cumprod = float(scheduler.final_alpha_cumprod)
        self.step_size = scheduler.config.num_train_timesteps // settings.num_steps
        self.optimiser = torch.optim.AdamW(
            self.unet.parameters(),
            lr=settings.lr,
            betas=settings.betas,
            weight_decay=settings.weight_decay,
            eps=settings.adam_eps,
        )
        self.buffers: dict[str, deque] = {}

    # ---- model -----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids)[0]  # (B, L, D)

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """eps_u + w (eps_c - eps_u) from one UNet call on [uncond; cond]."""
        both = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([null, embeds])).sample
        eps_u, eps_c = both.chunk(2)
        return eps_u + self.s.guidance * (eps_c - eps_u)

    def ddim_mean_std(self, x: torch.Tensor, eps: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
        """Mean and std of p(x_{t-1} | x_t) for DDIM with eta (Song et al. 2021, eq. 12 and 16)."""
        t_prev = t - self.step_size
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else self.final_alpha_cumprod
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        std = self.s.eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        mean = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - std**2, 0.0)) * eps
        return mean, std

    @staticmethod
    def log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
        """Gaussian log-density averaged over C, H, W (ddpo-pytorch's convention), (B,)."""
        elem = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
        return elem.mean(dim=(1, 2, 3))

    # ---- the epoch's parts -----------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: list[str], generator: torch.Generator):
        """latents (B, K+1, 4, h, w) and sampling-time log-probs (B, K)."""
        self.unet.eval()
        lat_parts, logp_parts = [], []
        for i in range(0, len(prompts), self.s.sample_batch):
            batch = prompts[i : i + self.s.sample_batch]
            embeds, null = self.embed(batch), self.embed([""] * len(batch))
            cfg = self.unet.config
            x = torch.randn((len(batch), cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator)
            xs, logps = [x], []
            for t in self.timesteps:
                eps = self.guided_eps(x, t.expand(len(batch)), embeds, null)
                mean, std = self.ddim_mean_std(x, eps, int(t))
                x = mean + std * torch.randn(mean.shape, generator=generator)
                xs.append(x)
                logps.append(self.log_prob(x, mean, std))
            lat_parts.append(torch.stack(xs, 1))
            logp_parts.append(torch.stack(logps, 1))
        return torch.cat(lat_parts), torch.cat(logp_parts)

    @torch.no_grad()
    def reward(self, x0: torch.Tensor) -> torch.Tensor:
        """Minus the JPEG (quality 95) size in kB of the decoded images."""
        images = ((self.vae.decode(x0 / self.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        arr = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        sizes = []
        for img in arr:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            sizes.append(buf.tell() / 1000)
        return -torch.tensor(sizes, dtype=torch.float64)

    def advantages(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """ddpo-pytorch's per-prompt stat tracker; the batch's statistics until a prompt has min_count."""
        r = rewards.double().numpy()
        out = np.empty_like(r)
        for prompt in set(prompts):
            idx = np.array([p == prompt for p in prompts])
            buf = self.buffers.setdefault(prompt, deque(maxlen=self.s.tracker_buffer))
            buf.extend(r[idx].tolist())
            ref = np.asarray(buf) if len(buf) >= self.s.tracker_min_count else r
            out[idx] = (r[idx] - ref.mean()) / (ref.std() + 1e-6)
        return torch.from_numpy(out).float().clamp(-self.s.adv_clip, self.s.adv_clip)

    def accumulate_gradient(
        self, prompts: list[str], latents: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor
    ) -> list[float]:
        """Gradient of the PPO-clip loss averaged over all B x K transitions, one step at a time;
        returns each step's recomputed log-probs' max deviation from logp_old (a check)."""
        self.unet.train()
        n, k = logp_old.shape
        embeds, null = self.embed(prompts), self.embed([""] * n)
        deviations = []
        for j, t in enumerate(self.timesteps):
            eps = self.guided_eps(latents[:, j], t.expand(n), embeds, null)
            mean, std = self.ddim_mean_std(latents[:, j], eps, int(t))
            logp = self.log_prob(latents[:, j + 1], mean, std)
            ratio = torch.exp(logp - logp_old[:, j])
            clipped = ratio.clamp(1 - self.s.clip_range, 1 + self.s.clip_range)
            loss = torch.maximum(-adv * ratio, -adv * clipped).mean() / k
            loss.backward()
            deviations.append(float((logp.detach() - logp_old[:, j]).abs().max()))
        return deviations

    def update(self, prompts, latents, logp_old, adv) -> float:
        self.optimiser.zero_grad(set_to_none=True)
        self.accumulate_gradient(prompts, latents, logp_old, adv)
        norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.s.max_grad_norm)
        self.optimiser.step()
        return float(norm)

    def epoch(self, prompts: list[str], generator: torch.Generator) -> dict:
        """One DDPO-IS epoch; seconds of each part."""
        import time

        t0 = time.perf_counter()
        latents, logp = self.sample(prompts, generator)
        t1 = time.perf_counter()
        rewards = self.reward(latents[:, -1])
        adv = self.advantages(rewards, prompts)
        t2 = time.perf_counter()
        self.update(prompts, latents, logp, adv)
        t3 = time.perf_counter()
        return {
            "seconds_sample": t1 - t0,
            "seconds_reward": t2 - t1,
            "seconds_train": t3 - t2,
            "reward_mean": float(rewards.mean()),
        }
