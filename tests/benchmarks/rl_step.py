"""The cost of an RL round for each algorithm at the default study's settings on its embedded
model, side by side with a baseline commit in the same invocation (docs/performance.md#the-benchmark).

For every algorithm the benchmark runs the baseline and this checkout alternately, each in a
fresh process (the allocator's settings and the peak memory are per process), `--repeats` times,
and prints per version: the CPU seconds from the process's start to a trainer ready to sample (a
job's start-up: imports and model loading), the process's CPU seconds per round (the steady
measure on a shared machine) beside the wall-clock split (sample, reward, train), images per
core-second (images over those CPU seconds), the fraction of the one-thread GEMM rate a round
achieves (its forward and backward FLOPs, counted by torch's FLOP counter, over its CPU seconds,
against an fp32 matmul timed in the same process), the process's peak RSS, and a digest of the
trained weights (`weights_sha256`). Then per algorithm: the ratio of images per
core-second, this checkout over the baseline (the median of the repeats of each), and whether
every process trained the same weights and logged the same rounds bit for bit. The baseline is a
commit checked out into a temporary `git worktree` (default: the commit before the speed work)
whose package is imported in place of this checkout's; `--baseline none` times this checkout alone.

    python -m tests.benchmarks.rl_step [--config config/config.yaml] [--rounds 3] [--repeats 1]
        [--algorithms ddpo_is ...] [--baseline REV|none] [--reuse-sampling-graph auto|on|off]
        [--micro-batch N]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("seconds_sample", "seconds_reward", "seconds_train")  # wall-clock, from the round's line
BASELINE = "c954d52"  # main before the speed work (issue 24)
ROOT = Path(__file__).resolve().parents[2]


def use_source(root: Path) -> None:
    """Import t2i_rl_bench (and its algorithms and rewards) from another checkout's folders."""
    for name, folder in (
        ("t2i_rl_bench", root / "bench"),
        ("t2i_rl_bench.algorithms", root / "algorithms"),
        ("t2i_rl_bench.rewards", root / "rewards"),
    ):
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def gemm_rate(n: int = 512, repeats: int = 20) -> float:
    """FLOP/s of an fp32 n x n matmul on this process's threads (best of `repeats`, CPU time)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        a @ b
        best = min(best, time.process_time() - t)
    return 2 * n**3 / max(best, 1e-9)


def known_keys(value: object, schema: dict, dropped: list[str], root: dict | None = None, where: str = "") -> object:
    """`value` without the mapping keys that `schema` (a JSON schema, `$ref`s into its root)
    forbids as additional properties; each key left out is appended to `dropped`."""
    root = schema if root is None else root
    while "$ref" in schema:
        node: dict = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [known_keys(item, schema["items"], dropped, root, f"{where}{i}.") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    out = {}
    for key, item in value.items():
        if key in properties:
            out[key] = known_keys(item, properties[key], dropped, root, f"{where}{key}.")
        elif isinstance(extra, dict):
            out[key] = known_keys(item, extra, dropped, root, f"{where}{key}.")
        elif extra is False:
            dropped.append(f"{where}{key}")
        else:
            out[key] = item
    return out


def worker(args: argparse.Namespace) -> dict:
    """Time `args.rounds` rounds of one algorithm in this process; one more under the FLOP counter."""
    if args.source:
        use_source(Path(args.source))
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from t2i_rl_bench import study
    from t2i_rl_bench.train import Trainer

    torch.set_num_threads(args.threads)
    import yaml

    # an older baseline's schema may not know every key of today's config; the keys it does not
    # know are left out (listed in the output: check that none of them reaches a training round)
    dropped: list[str] = []
    cfg = study.validate(known_keys(yaml.safe_load(Path(args.config).read_text()), study.load_schema(), dropped))
    key = next(k for k in study.runs(cfg) if k.seed == cfg["seeds"][0] and k.algorithm == args.algorithm)
    spec = study.run_spec(cfg, key)
    if args.reuse_sampling_graph != "auto":
        spec = spec.replace(reuse_sampling_graph=args.reuse_sampling_graph == "on")
    if args.micro_batch is not None:
        spec = spec.replace(micro_batch=args.micro_batch)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(spec, out)
        startup = time.process_time()  # CPU seconds from the process's start to a trainer ready to sample
        peak = gemm_rate()
        lines, cpu = [], []
        for _ in range(args.rounds):  # timed without the counter's overhead
            start = time.process_time()
            lines.append(trainer.round())
            cpu.append(time.process_time() - start)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the counter's round
        digest = hashlib.sha256()  # the trained weights, bit for bit
        for p in trainer.params:
            digest.update(p.detach().contiguous().numpy().tobytes())
        # the rounds' logged numbers; compared with another version's on the keys both log
        logged = [{k: v for k, v in line.items() if "seconds" not in k and "memory" not in k} for line in lines]
        with FlopCounterMode(display=False) as counter:
            trainer.round()
        flops = counter.get_total_flops()
    keep = lines[1:] if args.rounds > 1 else lines  # the first round pays one-off costs
    cpu_round = statistics.mean(cpu[1:] if args.rounds > 1 else cpu)
    images = spec.images_per_round
    return {
        "cpu_seconds_per_round": round(cpu_round, 3),
        **{k: round(statistics.mean(line[k] for line in keep), 3) for k in PHASES},
        "images_per_core_second": round(images / cpu_round, 2),
        "gflop_per_round": round(flops / 1e9, 2),
        "gemm_gflops": round(peak / 1e9, 1),
        "fraction_of_gemm_rate": round(flops / cpu_round / peak, 3),
        "optimiser_steps": keep[-1]["optimiser_steps"],
        "reuse_sampling_graph": bool(getattr(trainer, "reuse_graph", False)),
        "peak_rss_mb": round(rss),
        "startup_cpu_seconds": round(startup, 2),
        "weights_sha256": digest.hexdigest()[:16],
        "logged": logged,
        "config_sections_left_out": dropped,
    }


def run_worker(args: argparse.Namespace, algorithm: str, source: str | None) -> dict:
    cmd = [sys.executable, "-m", "tests.benchmarks.rl_step", "--worker", "--algorithm", algorithm]
    cmd += ["--config", args.config, "--rounds", str(args.rounds), "--threads", str(args.threads)]
    cmd += ["--reuse-sampling-graph", args.reuse_sampling_graph]
    if args.micro_batch is not None:
        cmd += ["--micro-batch", str(args.micro_batch)]
    if source:
        cmd += ["--source", source]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bit_identical(rows: list[dict]) -> bool:
    """Every process trained the same weights and logged the same numbers, bit for bit, on the
    keys every version logs (a newer version may log more)."""
    if len({r["weights_sha256"] for r in rows}) != 1:
        return False
    shared = set.intersection(*(set(line) for r in rows for line in r["logged"]))
    numbers = {json.dumps([{k: line[k] for k in sorted(shared)} for line in r["logged"]]) for r in rows}
    return len(numbers) == 1


def median_row(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for k, v in rows[0].items():
        if isinstance(v, float):
            out[k] = round(statistics.median(r[k] for r in rows), 3)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
    return out


def algorithms_of(config: str) -> list[str]:
    import yaml

    return list(yaml.safe_load(Path(config).read_text())["algorithms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml", help="the study whose run settings are timed")
    parser.add_argument("--algorithms", nargs="*", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per process (the first is left out)")
    parser.add_argument("--repeats", type=int, default=1, help="processes per version and algorithm (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with, or 'none'")
    parser.add_argument("--reuse-sampling-graph", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--micro-batch", type=int, default=None, help="override the study's (memory only)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return

    tree = None
    if args.baseline != "none":
        tree = tempfile.mkdtemp(prefix="rl-step-baseline-")
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)  # a killed run's leftover
        subprocess.run(
            ["git", "worktree", "add", "--detach", tree, args.baseline], cwd=ROOT, check=True, capture_output=True
        )
    try:
        versions = ([("baseline", tree)] if tree else []) + [("current", None)]
        print(json.dumps({"baseline": args.baseline, "threads": args.threads, "rounds": args.rounds}), flush=True)
        for algorithm in args.algorithms or algorithms_of(args.config):
            rows: dict[str, list[dict]] = {name: [] for name, _ in versions}
            for _ in range(args.repeats):  # alternate the versions, so that load falls on both
                for name, source in versions:
                    rows[name].append(run_worker(args, algorithm, source))
            result = {name: median_row(r) for name, r in rows.items()}
            for name, row in result.items():
                shown = {k: v for k, v in row.items() if k != "logged"}
                print(json.dumps({"algorithm": algorithm, "version": name, **shown}), flush=True)
            if tree:
                b, c = result["baseline"], result["current"]
                ratio = c["images_per_core_second"] / b["images_per_core_second"]
                print(
                    json.dumps(
                        {
                            "algorithm": algorithm,
                            "images_per_core_second": [b["images_per_core_second"], c["images_per_core_second"]],
                            "ratio": round(ratio, 3),
                            "fraction_of_gemm_rate": [b["fraction_of_gemm_rate"], c["fraction_of_gemm_rate"]],
                            "peak_rss_mb": [b["peak_rss_mb"], c["peak_rss_mb"]],
                            "startup_cpu_seconds": [b["startup_cpu_seconds"], c["startup_cpu_seconds"]],
                            # the same trained weights and round lines bit for bit (every repeat)
                            "bit_identical": bit_identical(rows["baseline"] + rows["current"]),
                        }
                    ),
                    flush=True,
                )
    finally:
        if tree:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
