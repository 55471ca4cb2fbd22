"""Seconds per RL round for each algorithm at its default settings on the embedded model:
sampling, reward and training split, images and transitions per second, peak memory.

    python -m tests.benchmarks.rl_step [--model results/models/dit16-ddim] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

from bench.registry import ALGORITHMS
from bench.spec import RunSpec
from bench.train import Trainer


def measure(model: str, algorithm: str, rounds: int, reward: str, images: int, steps: int) -> dict:
    cfg = RunSpec(model_path=model, algorithm=algorithm, reward=reward, seed=0, num_steps=steps,
                    images_per_round=images, budgets=[images * rounds])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out)
        lines = [trainer.round() for _ in range(rounds)]
    keep = lines[1:] if rounds > 1 else lines  # the first round pays one-off costs
    parts = ("seconds_sample", "seconds_reward", "seconds_train")
    mean = {k: float(np.mean([line[k] for line in keep])) for k in parts}
    total = sum(mean.values())
    return {"algorithm": algorithm, "seconds_per_round": round(total, 2),
            **{k: round(v, 2) for k, v in mean.items()},
            "images_per_second": round(images / total, 1),
            "transitions_per_second": round(images * steps / total, 1),
            "optimiser_steps": keep[-1]["optimiser_steps"], "peak_memory_mb": round(lines[-1]["peak_memory_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="results/models/dit16-ddim")
    parser.add_argument("--algorithms", nargs="*", default=None)
    parser.add_argument("--reward", default="jpeg_compressibility")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for algo in args.algorithms or ALGORITHMS.names():
        print(json.dumps(measure(args.model, algo, args.rounds, args.reward, args.images, args.steps)), flush=True)


if __name__ == "__main__":
    main()
