"""The self-consuming loop ("recursive training"; Shumailov et al. 2024, Alemohammad et al. 2024)
as its own experiment: starting from a run's RL-aligned model, each generation samples images
on the training prompts, optionally keeps the best by the run's reward and mixes in a fraction of
real rendered scenes, then fine-tunes the denoiser on them with the pretraining objective.
Every generation is measured like an evaluation checkpoint (FID/KID, precision/recall/density/
coverage against rendered references, per-prompt diversity, attribute accuracy); the rate of
decay is the least-squares slope of each measure over generations."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.evaluate import QualityJudge
from bench.factory import open_policy, open_reward, open_sampler
from bench.interfaces import Sampler
from bench.io import atomic_write_json
from bench.metrics.diversity import precision_recall_density_coverage
from bench.models.policy import Policy
from bench.rollout import sample_images
from bench.spec import RunSpec
from bench.world.captions import eval_prompts, prompt_sets
from bench.world.checker import accuracy
from bench.world.dataset import reference_images
from bench.world.pretrain import denoising_loss

DECAY_METRICS = ("quality/fid", "quality/kid", "diversity/vendi", "prdc/recall", "prdc/coverage", "attribute/mean")


@dataclass(frozen=True)
class RecursiveSettings:
    generations: int = 3
    images_per_generation: int = 256
    real_fraction: float = 0.0  # share of each generation's data that is real rendered scenes
    select_top: float = 1.0  # keep this fraction of the samples, best first by the run's reward
    finetune_steps: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    seed: int = 0


def finetune(policy: Policy, images: torch.Tensor, captions: list[str], steps: int, batch_size: int, lr: float,
             generator: torch.Generator) -> float:
    """Supervised fine-tune of the denoiser on (image, caption) pairs; returns the mean loss."""
    params = policy.trainable_parameters()
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    alphas_cumprod = getattr(policy.scheduler, "alphas_cumprod", None)
    cond = policy.encode(captions)
    policy.denoiser.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=generator)
        x0 = images[idx] * 2 - 1
        loss = denoising_loss(policy.denoiser, x0, cond.embeds[idx], cond.mask[idx], policy.objective,
                              alphas_cumprod, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(loss.item())
    policy.denoiser.eval()
    return float(np.mean(losses))


def _measure(policy: Policy, sampler: Sampler, prompts: list[str], guidance: float, judge: QualityJudge,
             evaluation: dict[str, Any]) -> dict[str, Any]:
    images = sample_images(policy, sampler, prompts, guidance, evaluation["seed"])
    row = judge(images)
    prdc = precision_recall_density_coverage(judge.features(judge.reference).numpy(), judge.features(images).numpy())
    row.update({f"prdc/{k}": float(v) for k, v in asdict(prdc).items()})
    row["attribute/mean"] = accuracy(images.numpy(), prompts)["mean"]
    return row


def recursive_run(run_dir: str | Path, spec: RunSpec, settings: RecursiveSettings, evaluation: dict[str, Any],
                  threads: int = 1) -> dict[str, Any]:
    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    policy = open_policy(spec, trainable=False)
    final = run_dir / "checkpoints" / str(max(spec.budgets))
    start = "base"
    if (final / "state.json").is_file():
        policy.load_denoiser_state(final)
        start = f"checkpoint {final.name}"
    sampler = open_sampler(spec, policy)
    reward = open_reward(spec)
    eval_set = [p for p in eval_prompts(evaluation["prompts"], evaluation["max_prompts"])
                for _ in range(evaluation["images_per_prompt"])]
    judge = QualityJudge(evaluation["clip_model"], eval_set, evaluation["images_per_prompt"], evaluation["seed"])
    train_prompts = prompt_sets()["train"]
    rows = [{"generation": 0, **_measure(policy, sampler, eval_set, spec.guidance, judge, evaluation)}]
    for g in range(1, settings.generations + 1):
        prompts = [train_prompts[i] for i in rng.integers(len(train_prompts), size=settings.images_per_generation)]
        images = sample_images(policy, sampler, prompts, spec.guidance, settings.seed + g)
        scores, _ = reward(images, prompts, {})
        keep = np.argsort(-scores.numpy(), kind="stable")[: max(1, int(round(settings.select_top * len(prompts))))]
        images, prompts = images[keep], [prompts[i] for i in keep]
        n_real = int(round(settings.real_fraction / max(1e-9, 1 - settings.real_fraction) * len(prompts)))
        if settings.real_fraction >= 1:
            n_real, images, prompts = len(prompts), images[:0], []
        if n_real:
            real_prompts = [train_prompts[i] for i in rng.integers(len(train_prompts), size=n_real)]
            real = torch.from_numpy(np.concatenate([reference_images([p], 1, settings.seed + 1000 * g + i)
                                                    for i, p in enumerate(real_prompts)]))
            images, prompts = torch.cat([images, real]), prompts + real_prompts
        loss = finetune(policy, images, prompts, settings.finetune_steps, settings.batch_size, settings.lr,
                        generator)
        rows.append({"generation": g, "finetune_loss": loss, "generated_share": 1 - n_real / len(prompts),
                     **_measure(policy, sampler, eval_set, spec.guidance, judge, evaluation)})
    gens = np.array([r["generation"] for r in rows], dtype=float)
    decay = {f"decay/{m}": float(np.polyfit(gens, [r[m] for r in rows], 1)[0]) for m in DECAY_METRICS}
    out = {"start": start, "settings": asdict(settings), "rows": rows, "decay": decay}
    atomic_write_json(run_dir / "recursive.json", json.loads(json.dumps(out)))
    return out

