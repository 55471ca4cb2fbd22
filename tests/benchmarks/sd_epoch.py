"""Seconds per RL epoch on a tiny random Stable Diffusion pipeline, through the harness's own path
(`Policy.load` -> StableDiffusionPolicy, `t2i_rl_bench.train.Trainer`), against a plain DDPO-IS loop.

One epoch: 32 images x 20 DDIM steps (eta 1, guidance 5), JPEG-compressibility reward, the
algorithm's advantages, then one pass over all 640 transitions with one optimiser step.

    python -m tests.benchmarks.sd_epoch --threads 1 --epochs 3             # harness and plain loop
    python -m tests.benchmarks.sd_epoch --algorithm all --mode harness     # every method
    python -m tests.benchmarks.sd_epoch --parallel 2                       # 2 one-thread runs at once
    python -m tests.benchmarks.sd_epoch --graph-samples auto all 0 16      # the reused graph, bounded

Prints, per run, seconds per epoch split into sampling, reward and training (the mean over
epochs after the first, which pays one-off costs), images and transitions per second and the
process's peak memory; then the harness/plain ratio, or with --parallel N the throughput ratio
(epochs per hour of N simultaneous one-thread runs / one run alone). `--graph-samples` runs the
harness once per bound on the reused sampling graph (RunSpec.reuse_graph_samples: auto = the
family's default, all = the whole round, 0 = no graph, so every forward recomputed as the plain
loop does) and prints each one's time and peak memory as ratios to the plain loop's and to the
unbounded reuse's (docs/performance.md#the-reused-graph-bounded).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = [
    "a cat",
    "a dog",
    "a red car",
    "a blue house",
    "a tree on a hill",
    "a bowl of fruit",
    "a boat at sea",
    "a mountain at dawn",
    "a city street",
    "a yellow flower",
    "an old clock",
    "a horse in a field",
]
ALGORITHMS = ("reinforce", "ddpo_is", "loop", "prdp", "dancegrpo", "pcpo")
PARTS = ("seconds_sample", "seconds_reward", "seconds_train")


def _peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _summary(name: str, lines: list[dict], images: int, steps: int) -> dict:
    keep = lines[1:] if len(lines) > 1 else lines  # the first epoch pays one-off costs
    mean = {k: float(np.mean([line[k] for line in keep])) for k in PARTS}
    total = sum(mean.values())
    return {
        "run": name,
        "seconds_per_epoch": round(total, 2),
        # the process's CPU seconds (one thread: its busy time, less sensitive to other load than wall)
        "cpu_seconds_per_epoch": round(float(np.mean([line["cpu_seconds"] for line in keep])), 2),
        **{k: round(v, 2) for k, v in mean.items()},
        "epochs": [round(sum(line[k] for k in PARTS), 2) for line in lines],
        "images_per_second": round(images / total, 2),
        "transitions_per_second": round(images * steps / total, 1),
        "peak_memory_mb": round(_peak_memory_mb()),
    }


def _cpu_timed(fn, *a) -> dict:
    cpu = time.process_time()
    line = fn(*a)
    return {**line, "cpu_seconds": time.process_time() - cpu}


def measure_harness(args, algorithm: str) -> dict:
    import torch

    from t2i_rl_bench.spec import RunSpec
    from t2i_rl_bench.train import Trainer

    torch.set_num_threads(args.threads)
    reuse = {"auto": None, "on": True, "off": False}[args.reuse_graph]
    bound = args.graph_samples[0]
    bound = None if bound == "auto" else args.images if bound == "all" else int(bound)
    cfg = RunSpec(
        model_path=args.model,
        algorithm=algorithm,
        reward="jpeg_compressibility",
        seed=args.seed,
        algorithm_settings={"updates_per_round": 1, "inner_epochs": 1},
        prompts=list(PROMPTS),
        num_steps=args.steps,
        eta=args.eta,
        guidance=args.guidance,
        images_per_round=args.images,
        group_size=args.group_size,
        micro_batch=args.micro_batch,
        step_chunk=args.step_chunk,
        lora_rank=args.lora_rank,
        budgets=[args.images * args.epochs],
        reuse_sampling_graph=reuse,
        reuse_graph_samples=bound,
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, threads=args.threads)
        lines = [_cpu_timed(trainer.round) for _ in range(args.epochs)]
        held = getattr(trainer, "graph_bound", None) if trainer.reuse_graph else 0
    res = _summary(f"harness/{algorithm}", lines, args.images, args.steps)
    if len(args.graph_samples) > 1 or args.graph_samples[0] != "auto":
        res["run"] += f"/graph_samples={args.graph_samples[0]}"
    res["graph_samples"] = min(held, args.images) if held is not None else args.images
    return res


def measure_plain(args) -> dict:
    import torch

    from tests.benchmarks.plain_ddpo import PlainDDPO, PlainSettings

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    plain = PlainDDPO(
        args.model,
        PlainSettings(num_steps=args.steps, eta=args.eta, guidance=args.guidance, sample_batch=args.sample_batch),
    )
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    lines = []
    for _ in range(args.epochs):
        chosen = rng.choice(len(PROMPTS), size=args.images // args.group_size, replace=False)
        prompts = [PROMPTS[i] for i in chosen for _ in range(args.group_size)]
        lines.append(_cpu_timed(plain.epoch, prompts, generator))
    return _summary("plain/ddpo_is", lines, args.images, args.steps)


def _child(args, mode: str, threads: int, algorithm: str | None = None, bound: str | None = None) -> list[str]:
    bound = bound or args.graph_samples[0]
    cmd = [
        sys.executable,
        "-m",
        "tests.benchmarks.sd_epoch",
        "--child",
        "--mode",
        mode,
        "--model",
        args.model,
        "--threads",
        str(threads),
        "--epochs",
        str(args.epochs),
        "--images",
        str(args.images),
        "--group-size",
        str(args.group_size),
        "--steps",
        str(args.steps),
        "--guidance",
        str(args.guidance),
        "--eta",
        str(args.eta),
        "--micro-batch",
        str(args.micro_batch),
        "--step-chunk",
        str(args.step_chunk),
        "--sample-batch",
        str(args.sample_batch),
        "--lora-rank",
        str(args.lora_rank),
        "--reuse-graph",
        args.reuse_graph,
        "--graph-samples",
        bound,
        "--seed",
        str(args.seed),
    ]
    if algorithm:
        cmd += ["--algorithm", algorithm]
    return cmd


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def _run_children(cmds: list[tuple[list[str], int]]) -> list[dict]:
    """Start every command at once; each prints its summaries as JSON lines."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env(threads)) for cmd, threads in cmds]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"benchmark child failed ({proc.returncode}): {' '.join(proc.args)}")
        results.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a StableDiffusionPipeline folder; default: build the tiny one")
    parser.add_argument("--algorithm", default="ddpo_is", help="a method name, or 'all'")
    parser.add_argument("--mode", choices=("both", "harness", "plain"), default="both")
    parser.add_argument("--parallel", type=int, default=0, help="N one-thread runs at once vs one alone")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--micro-batch", type=int, default=32, help="harness: samples per forward/backward")
    parser.add_argument("--step-chunk", type=int, default=0, help="harness: steps per forward/backward, 0 = all")
    parser.add_argument("--sample-batch", type=int, default=8, help="plain loop: images per sampling forward")
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument(
        "--reuse-graph",
        choices=("auto", "on", "off"),
        default="auto",
        help="harness: RunSpec.reuse_sampling_graph (auto = the policy family's default)",
    )
    parser.add_argument(
        "--graph-samples",
        nargs="+",
        default=["auto"],
        help="harness: RunSpec.reuse_graph_samples, 'auto' (the family's default), 'all' or an integer; "
        "several: the plain loop and one harness run per bound, with their ratios",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one measurement in this process, so that its peak memory is its own
        if args.mode == "plain":
            print(json.dumps(measure_plain(args)), flush=True)
        else:
            print(json.dumps(measure_harness(args, args.algorithm)), flush=True)
        return

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from tests.benchmarks.tiny_sd import build_tiny_sd, unet_parameters

            args.model = str(build_tiny_sd(Path(tmp) / "tiny-sd"))
            print(f"tiny SD pipeline: UNet {unet_parameters(args.model) / 1e6:.2f}M parameters", flush=True)
        if args.parallel:
            _parallel(args)
            return
        algorithms = ALGORITHMS if args.algorithm == "all" else (args.algorithm,)
        results = {}
        if len(args.graph_samples) > 1:
            _bounds(args, algorithms[0])
            return
        if args.mode in ("both", "harness"):
            for algo in algorithms:
                (res,) = _run_children([(_child(args, "harness", args.threads, algo), args.threads)])[0]
                results[f"harness/{algo}"] = res
                print(json.dumps(res), flush=True)
        if args.mode in ("both", "plain"):
            (res,) = _run_children([(_child(args, "plain", args.threads), args.threads)])[0]
            results["plain"] = res
            print(json.dumps(res), flush=True)
        if "plain" in results and "harness/ddpo_is" in results:
            ratio = results["harness/ddpo_is"]["seconds_per_epoch"] / results["plain"]["seconds_per_epoch"]
            print(f"harness/plain seconds per epoch (ddpo_is, {args.threads} thread(s)): {ratio:.3f}", flush=True)


def _bounds(args, algorithm: str) -> None:
    """The plain loop, then the harness once per bound on the reused graph, one process each (one
    after the other); each bound's seconds per epoch and peak memory over the plain loop's and
    over the unbounded reuse's ('all', when it is among the bounds)."""
    (plain,) = _run_children([(_child(args, "plain", args.threads), args.threads)])[0]
    print(json.dumps(plain), flush=True)
    runs = {}
    for bound in args.graph_samples:
        (runs[bound],) = _run_children([(_child(args, "harness", args.threads, algorithm, bound), args.threads)])[0]
        print(json.dumps(runs[bound]), flush=True)
    full = runs.get("all")
    print(f"{algorithm}, {args.threads} thread(s), {args.images} images x {args.steps} steps:", flush=True)
    for bound, res in runs.items():
        line = (
            f"  graph_samples={bound} (holds {res['graph_samples']}): "
            f"time/plain {res['seconds_per_epoch'] / plain['seconds_per_epoch']:.3f} "
            f"(CPU {res['cpu_seconds_per_epoch'] / plain['cpu_seconds_per_epoch']:.3f}), "
            f"peak memory/plain {res['peak_memory_mb'] / plain['peak_memory_mb']:.3f} "
            f"({res['peak_memory_mb']} / {plain['peak_memory_mb']} MB)"
        )
        if full is not None:
            line += (
                f", time/unbounded {res['seconds_per_epoch'] / full['seconds_per_epoch']:.3f} "
                f"(CPU {res['cpu_seconds_per_epoch'] / full['cpu_seconds_per_epoch']:.3f}), "
                f"memory/unbounded {res['peak_memory_mb'] / full['peak_memory_mb']:.3f}"
            )
        print(line, flush=True)


def _parallel(args) -> None:
    """Epochs per hour of N simultaneous one-thread harness runs over that of one run alone."""
    alone = _run_children([(_child(args, "harness", 1, args.algorithm), 1)])[0][0]
    print(json.dumps({"alone": alone}), flush=True)
    t0 = time.perf_counter()
    together = [r[0] for r in _run_children([(_child(args, "harness", 1, args.algorithm), 1)] * args.parallel)]
    wall = time.perf_counter() - t0
    for res in together:
        print(json.dumps({"together": res}), flush=True)
    per_hour_alone = 3600 / alone["seconds_per_epoch"]
    per_hour_together = sum(3600 / r["seconds_per_epoch"] for r in together)
    print(
        f"throughput ratio ({args.parallel} parallel one-thread runs / one run, epochs per hour): "
        f"{per_hour_together / per_hour_alone:.2f} (wall {wall:.1f} s for the parallel set)",
        flush=True,
    )


if __name__ == "__main__":
    main()
