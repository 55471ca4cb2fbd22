"""Seconds per RL round for each algorithm at the default study's settings on its embedded model:
sampling, reward and training split, images per second and per core-second, peak memory, and the
fraction of the machine's one-thread matmul throughput a round achieves (its forward and backward
FLOPs, counted by torch's FLOP counter, over its seconds, against a measured GEMM rate). The
process's CPU seconds per round sit beside the wall-clock ones: on a shared machine they are the
steadier measure of the work.

    python -m tests.benchmarks.rl_step [--config config/config.yaml] [--rounds 3] [--algorithms ddpo_is]
        [--micro-batch N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from t2i_rl_bench import study
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer


def gemm_rate(n: int = 512, repeats: int = 20) -> float:
    """FLOP/s of an fp32 n x n matmul on this process's threads (best of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measure(spec: RunSpec, rounds: int, threads: int, peak: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(spec, out)
        lines, cpu = [], []
        for _ in range(rounds):  # timed without the counter's overhead
            start = time.process_time()
            lines.append(trainer.round())
            cpu.append(time.process_time() - start)
        with FlopCounterMode(display=False) as counter:
            trainer.round()
        flops = counter.get_total_flops()
    keep = lines[1:] if rounds > 1 else lines  # the first round pays one-off costs
    cpu_kept = cpu[1:] if rounds > 1 else cpu
    parts = ("seconds_sample", "seconds_reward", "seconds_train")
    mean = {k: float(np.mean([line[k] for line in keep])) for k in parts}
    total = sum(mean.values())
    images, steps = spec.images_per_round, spec.num_steps
    return {
        "algorithm": spec.algorithm,
        "micro_batch": spec.micro_batch,
        "seconds_per_round": round(total, 2),
        "cpu_seconds_per_round": round(float(np.mean(cpu_kept)), 2),
        **{k: round(v, 2) for k, v in mean.items()},
        "images_per_second": round(images / total, 2),
        "images_per_core_second": round(images / (total * threads), 2),
        "transitions_per_second": round(images * steps / total, 1),
        "gflop_per_round": round(flops / 1e9, 2),
        "fraction_of_gemm_rate": round(flops / total / peak, 3),
        "optimiser_steps": keep[-1]["optimiser_steps"],
        "peak_memory_mb": round(lines[-1]["peak_memory_mb"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml", help="the study whose run settings are timed")
    parser.add_argument("--algorithms", nargs="*", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse-sampling-graph", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--micro-batch", type=int, default=None, help="override the study's (memory only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = study.load(args.config)
    peak = gemm_rate()
    print(json.dumps({"gemm_gflops": round(peak / 1e9, 1), "threads": args.threads}), flush=True)
    for key in study.runs(cfg):
        if key.seed != cfg["seeds"][0] or (args.algorithms and key.algorithm not in args.algorithms):
            continue
        spec = study.run_spec(cfg, key)
        if args.reuse_sampling_graph != "auto":
            spec = spec.replace(reuse_sampling_graph=args.reuse_sampling_graph == "on")
        if args.micro_batch is not None:
            spec = spec.replace(micro_batch=args.micro_batch)
        print(json.dumps({"reward": key.reward, **measure(spec, args.rounds, args.threads, peak)}), flush=True)


if __name__ == "__main__":
    main()
