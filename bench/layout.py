"""Where a study writes: one folder per study, so running a preset never overwrites another
study's results or the committed default study.

The default study (`study: default`) keeps the committed layout: results/runs, results/tables,
results/citable.json, report/index.html. Every other study writes under
results/studies/<study>/{runs,tables,citable.json,logs,benchmarks} and report/studies/<study>/index.html.
Inputs every study shares (the embedded world's prompt sets, the shipped models) stay where they are.
The Snakefile derives every output path from `study_paths`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_STUDY = "default"


@dataclass(frozen=True)
class StudyPaths:
    study: str
    root: str  # the study's results folder
    runs: str  # one folder per run: <runs>/<model>/<reward>/<algorithm>/seed<seed>
    tables: str  # eval.csv, derived.csv, improvement.csv, failed_runs.csv, ... (+ .md, .tex)
    citable: str  # citable.json
    logs: str
    benchmarks: str
    report: str  # the comparative HTML report

    @property
    def run_dir(self) -> str:
        """A run's folder as a Snakemake pattern."""
        return self.runs + "/{model}/{reward}/{algorithm}/seed{seed}"


def study_paths(config: dict | str) -> StudyPaths:
    """The output folders of a study, from its validated config (or its name)."""
    name = config if isinstance(config, str) else config.get("study", DEFAULT_STUDY)
    if name == DEFAULT_STUDY:
        root, report = "results", "report/index.html"
    else:
        root, report = f"results/studies/{name}", f"report/studies/{name}/index.html"
    return StudyPaths(
        study=name,
        root=root,
        runs=f"{root}/runs",
        tables=f"{root}/tables",
        citable=f"{root}/citable.json",
        logs=f"{root}/logs",
        benchmarks=f"{root}/benchmarks",
        report=report,
    )
