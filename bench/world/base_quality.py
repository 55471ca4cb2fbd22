"""How good the base model is: attribute accuracy of its samples on the training and held-out
prompts at the study's default sampler, recorded in the model's manifest (RL needs room)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from t2i_rl_bench.models.checkpoint import read_manifest, write_manifest


def measure(
    folder: str | Path,
    num_steps: int = 20,
    eta: float = 1.0,
    guidance: float = 3.0,
    images_per_set: int = 256,
    seed: int = 0,
) -> dict:
    from t2i_rl_bench.models.policy import Policy
    from t2i_rl_bench.rollout import make_sampler, sample_images
    from t2i_rl_bench.world.captions import eval_prompts
    from t2i_rl_bench.world.checker import accuracy

    policy = Policy.load(folder)
    sampler = make_sampler(policy, num_steps, eta)
    out = {"sampler": {"num_steps": num_steps, "eta": eta, "guidance": guidance}}
    for split in ("train", "heldout"):
        prompts = eval_prompts(split, 10**6)
        rng = np.random.default_rng(seed)
        prompts = [prompts[i] for i in rng.integers(len(prompts), size=images_per_set)]
        images = sample_images(policy, sampler, prompts, guidance, seed)
        out[split] = {k: round(v, 4) for k, v in accuracy(images.numpy(), prompts).items()}
    return out


def record_base_quality(folder: str | Path, **kwargs) -> dict:
    info = read_manifest(folder)
    info["base_quality"] = measure(folder, **kwargs)
    info.pop("sha256", None)
    write_manifest(Path(folder), info)
    return info["base_quality"]
