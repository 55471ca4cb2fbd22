"""The self-consuming loop ("recursive training") as its own experiment, after the published
protocol: Shumailov et al. 2024 ("AI models collapse when trained on recursively generated
data", Nature 631), Alemohammad et al. 2024 ("Self-consuming generative models go MAD", ICLR:
the fully synthetic loop, the synthetic augmentation loop with a fixed real set, and sampling
bias), Bertrand et al. 2024 ("On the stability of iterative retraining of generative models on
their own data", ICLR: a fraction of real data) and Gerstgrasser et al. 2024 ("Is model collapse
inevitable? Breaking the curse of recursion by accumulating real and synthetic data": replace
vs accumulate).

Starting from a run's final (RL-aligned) model, each generation g = 1..G samples images on the
training prompts, optionally keeps the best by the run's reward (`select_top` < 1: MAD's
sampling bias), adds real rendered scenes so that they make `real_fraction` of the generation's
data (the same fixed real set every generation: MAD's synthetic augmentation loop), and then
fine-tunes the denoiser with the pretraining objective on the training set of `mode`:
`replace` the newest generation's data only, `accumulate` every generation's data so far (the
real share stays `real_fraction` in both modes, so the mode is the only difference). The loop
samples with the run's training sampler (each method's own SDE) unless `sampler` is
"evaluation" (the study's evaluation sampler for every method). Every generation, the start
(g = 0) included, is measured with the same metrics as an evaluation checkpoint: FID/KID,
precision/recall/density/coverage against rendered references, per-prompt diversity, attribute
accuracy. The decay rate of a measure is its least-squares slope per generation
(`t2i_rl_bench.metrics.collapse.decay_rate`); the tables give it with an interval over seeds.
Each loop is also judged by the collapse rule (`collapse.loop_collapsed`: FID rising faster than
a threshold calibrated on the fully synthetic loop; docs/mechanisms.md#collapse-rule), whose
mean over seeds is the method's collapse rate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2i_rl_bench.evaluate import QualityJudge, evaluation_spec
from t2i_rl_bench.factory import open_policy, open_reward, open_sampler
from t2i_rl_bench.interfaces import Sampler
from t2i_rl_bench.io import atomic_write_json
from t2i_rl_bench.metrics.collapse import decay_rate, loop_collapsed
from t2i_rl_bench.metrics.diversity import precision_recall_density_coverage
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.rollout import sample_images
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.world.captions import eval_prompts, prompt_sets
from t2i_rl_bench.world.checker import accuracy
from t2i_rl_bench.world.dataset import reference_images
from t2i_rl_bench.world.pretrain import denoising_loss

DECAY_METRICS = (
    "quality/fid",
    "quality/kid",
    "diversity/vendi",
    "diversity/pairwise_cosine_distance",
    "prdc/precision",
    "prdc/recall",
    "prdc/density",
    "prdc/coverage",
    "attribute/mean",
)
MODES = ("replace", "accumulate")


@dataclass(frozen=True)
class RecursiveSettings:
    name: str = "replace-real0"  # the variant: its file is recursive/<name>.json in the run folder
    mode: str = "replace"  # replace: train on the newest generation's data; accumulate: on all so far
    generations: int = 5
    images_per_generation: int = 128
    real_fraction: float = 0.0  # share of each generation's data that is real rendered scenes (< 1)
    select_top: float = 1.0  # keep this fraction of the samples, best first by the run's reward
    finetune_steps: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    seed: int = 0  # combined with the run's seed: every seed of a method runs its own loop
    # the sampler of the generations and their measurement: "training", the run's own (each method's
    # SDE), or "evaluation", the study's evaluation sampler for every method
    sampler: str = "training"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"recursive mode must be one of {MODES}, got {self.mode!r}")
        if not 0 <= self.real_fraction < 1:
            raise ValueError(f"real_fraction must be in [0, 1), got {self.real_fraction}")
        if self.sampler not in ("training", "evaluation"):
            raise ValueError(f"recursive sampler must be 'training' or 'evaluation', got {self.sampler!r}")

    @classmethod
    def from_dict(cls, section: dict) -> RecursiveSettings:
        """From a variant's settings (t2i_rl_bench.study.recursive_variants); keys that are not settings
        (enabled, variants) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})


@dataclass(frozen=True)
class Block:
    """One generation's data: its (selected) samples and its real scenes."""

    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    captions: tuple[str, ...]
    real: np.ndarray  # (n,) bool: a rendered scene, not a sample
    generation: np.ndarray  # (n,) int: the generation that made it (0 for real scenes)

    def __len__(self) -> int:
        return len(self.captions)


def real_count(n_generated: int, real_fraction: float) -> int:
    """Real scenes to add to n_generated samples so that they make real_fraction of the block."""
    return int(round(real_fraction / (1 - real_fraction) * n_generated))


def generation_block(
    images: torch.Tensor, captions: list[str], generation: int, real_images: torch.Tensor, real_captions: list[str]
) -> Block:
    """A generation's data: its samples followed by the real set."""
    n, m = len(captions), len(real_captions)
    return Block(
        torch.cat([images, real_images]),
        (*captions, *real_captions),
        np.r_[np.zeros(n, bool), np.ones(m, bool)],
        np.r_[np.full(n, generation), np.zeros(m, int)],
    )


def training_set(blocks: list[Block], mode: str) -> Block:
    """The data generation len(blocks) fine-tunes on: `replace` the newest block only (Shumailov
    et al., MAD's loops, Bertrand et al.); `accumulate` every block so far, oldest first
    (Gerstgrasser et al.). Each block carries its own copy of the fixed real set, so the real
    share of the training set is the same in both modes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not blocks:
        raise ValueError("no generation's data yet")
    chosen = blocks[-1:] if mode == "replace" else blocks
    return Block(
        torch.cat([b.images for b in chosen]),
        tuple(c for b in chosen for c in b.captions),
        np.concatenate([b.real for b in chosen]),
        np.concatenate([b.generation for b in chosen]),
    )


def finetune(
    policy: Policy,
    images: torch.Tensor,
    captions: list[str],
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> float:
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
        loss = denoising_loss(
            policy.denoiser, x0, cond.embeds[idx], cond.mask[idx], policy.objective, alphas_cumprod, generator
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(loss.item())
    policy.denoiser.eval()
    return float(np.mean(losses))


def _measure(
    policy: Policy,
    sampler: Sampler,
    prompts: list[str],
    guidance: float,
    judge: QualityJudge,
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    images = sample_images(policy, sampler, prompts, guidance, evaluation["seed"])
    row = judge(images)
    prdc = precision_recall_density_coverage(judge.features(judge.reference).numpy(), judge.features(images).numpy())
    row.update({f"prdc/{k}": float(v) for k, v in asdict(prdc).items()})
    row["attribute/mean"] = accuracy(images.numpy(), prompts)["mean"]
    return row


def recursive_run(
    run_dir: str | Path, spec: RunSpec, settings: RecursiveSettings, evaluation: dict[str, Any], threads: int = 1
) -> dict[str, Any]:
    """Runs one variant of the loop from a run's final checkpoint; writes and returns
    recursive/<name>.json: the settings, one row of measures per generation (0 = the start) with
    the training set's size and real share, and the decay rate (slope per generation) of each
    measure."""
    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    # every seed of a method runs its own loop (sampling, real set, fine-tune order)
    loop_seed = int(np.random.SeedSequence([settings.seed, int(spec.seed)]).generate_state(1)[0])
    rng = np.random.default_rng(loop_seed)
    generator = torch.Generator().manual_seed(loop_seed)
    policy = open_policy(spec, trainable=False)
    final = run_dir / "checkpoints" / str(max(spec.budgets))
    start = "base"
    if (final / "state.json").is_file():
        policy.load_denoiser_state(final)
        start = f"checkpoint {final.name}"
    sampler = open_sampler(evaluation_spec(spec, evaluation) if settings.sampler == "evaluation" else spec, policy)
    reward = open_reward(spec)
    eval_set = [
        p
        for p in eval_prompts(evaluation["prompts"], evaluation["max_prompts"])
        for _ in range(evaluation["images_per_prompt"])
    ]
    judge = QualityJudge(evaluation["clip_model"], eval_set, evaluation["images_per_prompt"], evaluation["seed"])
    train_prompts = prompt_sets()["train"]
    n_keep = max(1, int(round(settings.select_top * settings.images_per_generation)))
    # the fixed real set (MAD's synthetic augmentation loop), drawn once for the whole loop
    real_prompts = [
        train_prompts[i] for i in rng.integers(len(train_prompts), size=real_count(n_keep, settings.real_fraction))
    ]
    real_images = torch.from_numpy(reference_images(real_prompts, 1, loop_seed)) if real_prompts else None
    rows = [{"generation": 0, **_measure(policy, sampler, eval_set, spec.guidance, judge, evaluation)}]
    blocks: list[Block] = []
    for g in range(1, settings.generations + 1):
        prompts = [train_prompts[i] for i in rng.integers(len(train_prompts), size=settings.images_per_generation)]
        images = sample_images(policy, sampler, prompts, spec.guidance, loop_seed + g)
        scores, _ = reward(images, prompts, {})
        keep = np.argsort(-scores.numpy(), kind="stable")[:n_keep]
        real = real_images if real_images is not None else images[:0]
        blocks.append(generation_block(images[keep], [prompts[i] for i in keep], g, real, real_prompts))
        data = training_set(blocks, settings.mode)
        loss = finetune(
            policy,
            data.images,
            list(data.captions),
            settings.finetune_steps,
            settings.batch_size,
            settings.lr,
            generator,
        )
        rows.append(
            {
                "generation": g,
                "finetune_loss": loss,
                "train_images": len(data),
                "real_share": float(data.real.mean()),
                "selected_reward": float(scores[keep].mean()),
                **_measure(policy, sampler, eval_set, spec.guidance, judge, evaluation),
            }
        )
    decay = {f"decay/{m}": decay_rate([r["generation"] for r in rows], [r[m] for r in rows]) for m in DECAY_METRICS}
    # the collapse rule, calibrated on the fully synthetic loop (docs/mechanisms.md#collapse-rule)
    decay["collapse/loop_collapsed"] = loop_collapsed(decay["decay/quality/fid"])
    out = {"variant": settings.name, "start": start, "settings": asdict(settings), "rows": rows, "decay": decay}
    atomic_write_json(run_dir / "recursive" / f"{settings.name}.json", json.loads(json.dumps(out)))
    return out
