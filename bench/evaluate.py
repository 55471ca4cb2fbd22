"""Evaluation of one run: held-out prompts, fixed seeds, the same noise for every method and
checkpoint; every evaluation reward and the attribute checker at each budget (0 = the base model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from bench.config import reward_label
from bench.io import atomic_write_json, read_shared
from bench.models.policy import Policy
from bench.reward import build_reward
from bench.rollout import make_sampler, rollout
from bench.world.captions import prompt_sets
from bench.world.checker import accuracy


def eval_prompts(split: str, max_prompts: int) -> list[str]:
    """A fixed, evenly spread subset of a prompt set (the same for every run)."""
    prompts = prompt_sets()[split]
    idx = np.linspace(0, len(prompts) - 1, num=min(max_prompts, len(prompts))).round().astype(int)
    return [prompts[i] for i in idx]


@torch.no_grad()
def sample_images(policy: Policy, sampler, prompts: list[str], guidance: float, seed: int, batch: int = 64):
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, len(prompts), batch):
        traj = rollout(policy, sampler, prompts[start : start + batch], guidance, generator)
        images.append(policy.decode(traj.x0))
    return torch.cat(images)


class QualityJudge:
    """FID/KID against rendered reference scenes of the same prompts, CLIP score, and per-prompt
    diversity, all in the in-house CLIP's feature space (a named, shipped feature network)."""

    def __init__(self, clip_model: str, prompts: list[str], per_prompt: int, seed: int):
        from bench.judges.clip import ImageFeatures, load_clip
        from bench.world.dataset import reference_images

        self.judge = load_clip(clip_model).eval()
        self.features = ImageFeatures(self.judge)
        self.prompts, self.per_prompt = prompts, per_prompt
        unique = list(dict.fromkeys(prompts))
        self.reference = torch.from_numpy(reference_images(unique, per_prompt, seed + 1))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        from bench.metrics.diversity import mean_pairwise_distance, vendi_score
        from bench.metrics.quality import clip_score, fid, kid

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


# the run-config fields the base model's evaluation depends on: runs that agree on them share it
BASE_FIELDS = ("model_path", "model_options", "num_steps", "eta", "guidance", "logp_reduce", "flow_variant")


def base_key(run_cfg: dict, evaluation: dict) -> dict:
    return {"run": {k: run_cfg.get(k) for k in BASE_FIELDS}, "evaluation": evaluation}


class Evaluator:
    """Held-out images of one policy at fixed seeds, scored by every evaluation reward, the
    attribute checker and the quality judge."""

    def __init__(self, run_cfg: dict, evaluation: dict, threads: int = 1):
        torch.set_num_threads(threads)
        self.run_cfg, self.evaluation = run_cfg, evaluation
        self.prompts = [p for p in eval_prompts(evaluation["prompts"], evaluation["max_prompts"])
                        for _ in range(evaluation["images_per_prompt"])]
        self.rewards = {name: build_reward(name, evaluation.get("reward_settings")) for name in evaluation["rewards"]}
        self.quality = (QualityJudge(evaluation["clip_model"], self.prompts, evaluation["images_per_prompt"],
                                     evaluation["seed"]) if evaluation.get("clip_model") else None)
        self.policy = Policy.load(run_cfg["model_path"], **run_cfg.get("model_options", {}))
        self.sampler = make_sampler(self.policy, run_cfg["num_steps"], run_cfg["eta"],
                                    run_cfg.get("logp_reduce", "mean"), run_cfg.get("flow_variant") or "flowgrpo")

    def __call__(self, budget: int, device_seconds: float, grid: Path) -> dict:
        images = sample_images(self.policy, self.sampler, self.prompts, self.run_cfg["guidance"],
                               self.evaluation["seed"])
        row = {"budget": budget, "device_seconds": device_seconds}
        for name, fn in self.rewards.items():
            scores, _ = fn(images, self.prompts, {})
            row[f"reward/{reward_label(name)}"] = float(scores.mean())  # the training reward's label
        acc = accuracy(images.numpy(), self.prompts)
        row.update({f"attribute/{k}": v for k, v in acc.items()})
        if self.quality is not None:
            row.update(self.quality(images))
        _save_grid(images[: min(16, len(images))], grid)
        return row


def evaluate_base(run_cfg: dict, evaluation: dict, out: str | Path, threads: int = 1) -> dict:
    """The base model's row (budget 0), once for every run that shares its key (all algorithms,
    rewards and seeds of a model): written to `out` with its sample grid beside it."""
    out = Path(out)
    row = Evaluator(run_cfg, evaluation, threads)(0, 0.0, out.with_suffix(".png"))
    result = {"key": base_key(run_cfg, evaluation), "row": row}
    atomic_write_json(out, result)
    return result


def evaluate_run(run_dir: str | Path, run_cfg: dict, evaluation: dict, threads: int = 1,
                 base: str | Path | None = None) -> dict:
    """Every checkpoint of a run (0 = the base model) -> eval.json. `base`: a file from
    evaluate_base; its row is used when its key matches this run's, else the base is evaluated here."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluate = Evaluator(run_cfg, evaluation, threads)
    shared = read_shared(base, base_key(run_cfg, evaluation))
    rows = []
    checkpoints = [(0, None)] + [(b, run_dir / "checkpoints" / str(b)) for b in sorted(run_cfg["budgets"])]
    for budget, folder in checkpoints:
        grid = run_dir / "samples" / f"{budget}.png"
        if folder is None and shared is not None:
            rows.append(shared["row"])
            grid.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(base).with_suffix(".png"), grid)
            continue
        if folder is not None and not (folder / "state.json").is_file():
            break  # a diverged run stops at its last good checkpoint
        state = json.loads((folder / "state.json").read_text()) if folder else {"device_seconds": 0.0}
        if folder is not None:
            evaluate.policy.load_denoiser_state(folder)
        rows.append(evaluate(budget, state["device_seconds"], grid))
    out = {"status": summary["status"], "prompts": evaluation["prompts"], "n_images": len(evaluate.prompts),
           "base_shared": shared is not None, "rows": rows}
    atomic_write_json(run_dir / "eval.json", out)
    return out


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
    Image.fromarray(canvas).resize((canvas.shape[1] * 4, canvas.shape[0] * 4), Image.NEAREST).save(path)
