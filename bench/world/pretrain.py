"""Pretrain the embedded base model on rendered scenes (seeded; one thread is the fast setting).

    python -m t2i_rl_bench pretrain --out results/models/dit16-ddim --steps 8000 --seed 0

Epsilon objective (DDPM loss, sampled with DDIM) or rectified flow (velocity objective), with
caption dropout for classifier-free guidance and an EMA of the weights, which is what is saved.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from t2i_rl_bench.models.embedded import EmbeddedSpec, build_components
from t2i_rl_bench.world.dataset import scene_batch


def pretrain(
    out: str | Path,
    steps: int = 8000,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    p_uncond: float = 0.1,
    spec: EmbeddedSpec = EmbeddedSpec(),
    save_every: int = 0,
    progress: bool = True,
) -> Path:
    out = Path(out)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    transformer, text_encoder, tokenizer, scheduler = build_components(spec)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    ema = [copy.deepcopy(transformer).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)]
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    generator = torch.Generator().manual_seed(seed)
    losses, started = [], time.time()
    for step in tqdm(range(steps), disable=not progress, desc="pretrain", mininterval=5):
        images, captions = scene_batch(rng, batch_size, spec.resolution, p_uncond)
        x0 = torch.from_numpy(images) * 2 - 1
        tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        embeds = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        loss = denoising_loss(transformer, x0, embeds, tokens.attention_mask, spec.objective, alphas_cumprod, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            for shadow, live in zip(ema, (transformer, text_encoder), strict=True):
                for ps, pl in zip(shadow.parameters(), live.parameters(), strict=True):
                    ps.lerp_(pl, 1 - ema_decay)
        losses.append(loss.item())
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            _save(
                out / f"step{step + 1}",
                ema,
                tokenizer,
                scheduler,
                spec,
                losses,
                dict(seed=seed, steps=step + 1, batch_size=batch_size, lr=lr, started=started),
            )
    return _save(
        out,
        ema,
        tokenizer,
        scheduler,
        spec,
        losses,
        dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, started=started),
    )


def denoising_loss(denoiser, x0, embeds, mask, objective: str, alphas_cumprod, generator) -> torch.Tensor:
    """The pretraining objective on clean images x0 in [-1, 1]: epsilon MSE at a uniform DDPM
    timestep (Ho et al. 2020), or velocity MSE at a logit-normal time (rectified flow, SD3)."""
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator)
    if objective == "flow":
        t = torch.sigmoid(torch.randn(n, generator=generator))
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
        target, model_t = noise - x0, t * 1000
    else:
        t = torch.randint(0, len(alphas_cumprod), (n,), generator=generator)
        ab = alphas_cumprod[t][:, None, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        target, model_t = noise, t
    pred = denoiser(xt, encoder_hidden_states=embeds, timestep=model_t, encoder_attention_mask=mask).sample
    return (pred - target).pow(2).mean()


def _save(out, ema, tokenizer, scheduler, spec, losses, run: dict) -> Path:
    from t2i_rl_bench.models.checkpoint import write_manifest

    out.mkdir(parents=True, exist_ok=True)
    ema[0].save_pretrained(out / "transformer")
    ema[1].save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    curve = [float(np.mean(losses[i : i + 100])) for i in range(0, len(losses), 100)]
    info = {
        "family": "embedded",
        "spec": asdict(spec),
        "pretraining": {
            "seed": run["seed"],
            "steps": run["steps"],
            "batch_size": run["batch_size"],
            "lr": run["lr"],
            "seconds": round(time.time() - run["started"], 1),
            "torch_threads": torch.get_num_threads(),
            "loss_per_100_steps": [round(v, 5) for v in curve],
        },
    }
    write_manifest(out, info)
    return out
