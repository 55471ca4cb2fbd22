"""Evaluation of one run: held-out prompts, fixed seeds, the same noise for every method and
checkpoint; every evaluation reward and the attribute checker at each budget (0 = the base model)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from t2i_rl_bench.factory import open_policy, open_sampler
from t2i_rl_bench.io import atomic_write_json, read_shared
from t2i_rl_bench.reward import build_reward
from t2i_rl_bench.rollout import sample_images
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.study import reward_label
from t2i_rl_bench.tracking import flatten, open_tracker
from t2i_rl_bench.train.allocator import keep_freed_memory
from t2i_rl_bench.world.captions import eval_prompts
from t2i_rl_bench.world.checker import accuracy, reading_once

__all__ = ["Evaluator", "QualityJudge", "evaluate_base", "evaluate_run", "eval_prompts", "sample_images"]


class QualityJudge:
    """FID/KID against rendered reference scenes of the same prompts, CLIP score, and per-prompt
    diversity, all in the in-house CLIP's feature space (a named, shipped feature network)."""

    def __init__(self, clip_model: str, prompts: list[str], per_prompt: int, seed: int):
        from t2i_rl_bench.judges.clip import ImageFeatures, load_clip
        from t2i_rl_bench.world.dataset import reference_images

        self.judge = load_clip(clip_model).eval()
        self.features = ImageFeatures(self.judge)
        self.prompts, self.per_prompt = prompts, per_prompt
        unique = list(dict.fromkeys(prompts))
        self.reference = torch.from_numpy(reference_images(unique, per_prompt, seed + 1))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        from t2i_rl_bench.metrics.diversity import mean_pairwise_distance, vendi_score
        from t2i_rl_bench.metrics.quality import clip_score, fid, kid

        n = len(images)
        feats = self.features(images)
        vendi, dist = [], []
        for start in range(0, n, self.per_prompt):  # the images of one prompt are contiguous
            f = feats[start : start + self.per_prompt]
            vendi.append(vendi_score(f))
            dist.append(mean_pairwise_distance(f, metric="cosine"))
        score = clip_score(self.judge.encode_images(images), self.judge.encode_texts(self.prompts))
        kid_mean, _ = kid(self.reference, images, self.features, subset_size=min(n, len(self.reference)) // 2)
        return {
            "quality/fid": fid(self.reference, images, self.features),
            "quality/kid": kid_mean,
            "quality/clip_score": float(score.mean()),
            "diversity/vendi": float(np.mean(vendi)),
            "diversity/pairwise_cosine_distance": float(np.nanmean(dist)),
        }


def evaluation_spec(spec: RunSpec, evaluation: dict[str, Any]) -> RunSpec:
    """The run's spec with the evaluation's own sampler: `evaluation.num_steps` / `evaluation.eta`
    when the config sets them (Flow-GRPO trains with the SDE and evaluates with the ODE, eta 0, at
    40 steps), else the training sampler's. One setting for the study, so every method is compared
    at the same sampler; an SDE window (sde_window) is a training device and is not evaluated with."""
    own: dict[str, Any] = {k: evaluation[k] for k in ("num_steps", "eta") if evaluation.get(k) is not None}
    if spec.sde_window is not None:
        own["sde_window"] = None
        own["sde_window_shift"] = None
        own["sde_window_range"] = None
    return dataclasses.replace(spec, **own) if own else spec


# the run-spec fields the base model's evaluation depends on: runs that agree on them share it
BASE_FIELDS = ("model_path", "model_options", "num_steps", "eta", "guidance", "logp_reduce", "flow_variant")


def base_key(spec: RunSpec, evaluation: dict[str, Any]) -> dict[str, Any]:
    run = spec.to_dict()
    return {"run": {k: run[k] for k in BASE_FIELDS}, "evaluation": evaluation}


class Evaluator:
    """Held-out images of one policy at fixed seeds, scored by every evaluation reward, the
    attribute checker and the quality judge."""

    def __init__(self, spec: RunSpec, evaluation: dict[str, Any], threads: int = 1):
        torch.set_num_threads(threads)
        keep_freed_memory()  # the same arithmetic, fewer page faults (bench/train/allocator.py)
        self.spec, self.evaluation = spec, evaluation
        self.prompts = [
            p
            for p in eval_prompts(evaluation["prompts"], evaluation["max_prompts"])
            for _ in range(evaluation["images_per_prompt"])
        ]
        self.rewards = {name: build_reward(name, evaluation.get("reward_settings")) for name in evaluation["rewards"]}
        self.quality = (
            QualityJudge(evaluation["clip_model"], self.prompts, evaluation["images_per_prompt"], evaluation["seed"])
            if evaluation.get("clip_model")
            else None
        )
        # every method at the study's sampler (no algorithm's own noise), the weights of its checkpoints
        self.policy = open_policy(spec, trainable=False)
        self.sampler = open_sampler(evaluation_spec(spec, evaluation), self.policy)

    def __call__(self, budget: int, device_seconds: float, grid: Path) -> dict[str, Any]:
        images = sample_images(self.policy, self.sampler, self.prompts, self.spec.guidance, self.evaluation["seed"])
        row = {"budget": budget, "device_seconds": device_seconds}
        with reading_once():  # the checker reads each image once for attribute_match and accuracy
            for name, fn in self.rewards.items():
                scores, _ = fn(images, self.prompts, {})
                row[f"reward/{reward_label(name)}"] = float(scores.mean())  # the training reward's label
            acc = accuracy(images.numpy(), self.prompts)
        row.update({f"attribute/{k}": v for k, v in acc.items()})
        if self.quality is not None:
            row.update(self.quality(images))
        _save_grid(images[: min(16, len(images))], grid)
        return row


def evaluate_base(spec: RunSpec, evaluation: dict[str, Any], out: str | Path, threads: int = 1) -> dict[str, Any]:
    """The base model's row (budget 0), once for every run that shares its key (all algorithms,
    rewards and seeds of a model): written to `out` with its sample grid beside it."""
    out = Path(out)
    row = Evaluator(spec, evaluation, threads)(0, 0.0, out.with_suffix(".png"))
    result = {"key": base_key(spec, evaluation), "row": row}
    atomic_write_json(out, result)
    return result


def evaluate_run(
    run_dir: str | Path, spec: RunSpec, evaluation: dict[str, Any], threads: int = 1, base: str | Path | None = None
) -> dict[str, Any]:
    """Every checkpoint of a run (0 = the base model) -> eval.json. `base`: a file from
    evaluate_base; its row is used when its key matches this run's, else the base is evaluated here."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluate = Evaluator(spec, evaluation, threads)
    shared = read_shared(base, base_key(spec, evaluation))
    rows: list[dict[str, Any]] = []
    checkpoints: list[tuple[int, Path | None]] = [(0, None)]
    checkpoints += [(b, run_dir / "checkpoints" / str(b)) for b in sorted(spec.budgets)]
    tracker = open_tracker(run_dir, "eval", spec.tracking, spec.to_dict())  # the run's curves, at each budget
    try:
        for budget, folder in tqdm(checkpoints, desc="evaluate checkpoints", unit="checkpoint"):
            grid = run_dir / "samples" / f"{budget}.png"
            if folder is None and shared is not None:
                rows.append(shared["row"])
                grid.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(str(base)).with_suffix(".png"), grid)
            else:
                if folder is not None and not (folder / "state.json").is_file():
                    break  # a diverged run stops at its last good checkpoint
                state = json.loads((folder / "state.json").read_text()) if folder else {"device_seconds": 0.0}
                if folder is not None:
                    evaluate.policy.load_denoiser_state(folder)
                rows.append(evaluate(budget, state["device_seconds"], grid))
            tracker.scalars(flatten("eval", {k: v for k, v in rows[-1].items() if k != "budget"}), budget)
            tracker.image("eval/samples", _read_rgb(grid), budget)
    finally:
        tracker.close()
    out = {
        "status": summary["status"],
        "prompts": evaluation["prompts"],
        "n_images": len(evaluate.prompts),
        "base_shared": shared is not None,
        "rows": rows,
    }
    atomic_write_json(run_dir / "eval.json", out)
    return out


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8


def _save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    n, _, h, w = images.shape
    rows = (n + columns - 1) // columns
    canvas = np.zeros((rows * (h + 1), columns * (w + 1), 3), dtype=np.uint8)
    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(arr):
        r, c = divmod(i, columns)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    Image.fromarray(canvas).resize((canvas.shape[1] * 4, canvas.shape[0] * 4), Image.Resampling.NEAREST).save(path)
