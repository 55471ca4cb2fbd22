"""Wall time of a whole study and the time of each stage, from Snakemake's per-job benchmarks.

    python -m tests.benchmarks.study --configfile config/config.yaml [--cores 2] [--no-run]

Runs `snakemake --cores N` (unless --no-run), then sums the `benchmark:` files of every rule
(the study's benchmarks folder, bench/layout.py: results/benchmarks/<rule>/... for the default
study, results/studies/<study>/benchmarks/<rule>/... for the others) and prints job-seconds per
stage, their share, and the share of evaluation and probes (plus the self-consuming loop when
present) in the jobs' total.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path


def stage_seconds(root: Path) -> dict[str, tuple[int, float]]:
    """{stage: (jobs, summed seconds)} from results/benchmarks/<stage>/**.tsv."""
    out = {}
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        seconds = []
        for tsv in stage_dir.rglob("*.tsv"):
            with open(tsv) as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            seconds += [float(r["s"]) for r in rows]
        out[stage_dir.name] = (len(seconds), sum(seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--no-run", action="store_true", help="only summarise existing benchmarks")
    args = parser.parse_args()
    wall = None
    if not args.no_run:
        snakemake = Path(sys.executable).with_name("snakemake")
        start = time.perf_counter()
        subprocess.run([str(snakemake), "--cores", str(args.cores), "--configfile", args.configfile], check=True)
        wall = time.perf_counter() - start
    import yaml

    from t2i_rl_bench.layout import study_paths

    study = yaml.safe_load(Path(args.configfile).read_text()).get("study", "default")
    stages = stage_seconds(Path(study_paths(study).benchmarks))
    total = sum(s for _, s in stages.values())
    print(f"{'stage':<12}{'jobs':>6}{'job-seconds':>14}{'share':>8}")
    for stage, (jobs, secs) in stages.items():
        print(f"{stage:<12}{jobs:>6}{secs:>14.1f}{secs / total:>8.1%}")
    measured = sum(stages.get(s, (0, 0.0))[1] for s in ("evaluate", "probe"))
    print(f"evaluation + probes: {measured:.1f} job-seconds, {measured / total:.1%} of all jobs' time")
    if wall is not None:
        print(f"study wall time: {wall / 60:.1f} minutes ({args.cores} cores)")


if __name__ == "__main__":
    main()
