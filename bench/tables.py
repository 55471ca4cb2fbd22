"""Tidy result tables over seeds, with confidence intervals and provenance, as CSV, Markdown and
LaTeX (booktabs), plus `results/citable.json` with stable keys. Every number traces back to a
commit, a config hash and seeds."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench import analysis, failures
from bench import config as study
from bench.io import atomic_write_text, dumps_json, read_json
from bench.metrics.statistics import mean_ci, probability_of_improvement_ci
from bench.provenance import plugin_provenance

KEYS = ["model", "reward", "algorithm", "budget", "metric"]
QUALITY_METRICS = ["quality/fid", "quality/kid", "quality/clip_score", "diversity/vendi", "attribute/mean"]
DIVERSITY_METRIC = "diversity/vendi"
# compared pairwise at the final budget; "-" = lower is better
IMPROVEMENT_METRICS = ["reward/{reward}", "attribute/mean", "-quality/fid", "diversity/vendi"]
PACKAGES = ("t2i-rl-bench", "torch", "diffusers", "transformers", "numpy", "scipy", "snakemake")


GENERATED = ("results/tables", "results/citable.json", "results/studies", "report")


def provenance(cfg: dict) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # the study's own outputs (tables, citable.json, the report) are rewritten by design
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     *(f":(exclude){p}" for p in GENERATED)],
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    return {
        "study": cfg.get("study"),
        "commit": commit + ("+dirty" if dirty else ""),
        "config_hash": study.config_hash(cfg),
        "seeds": cfg["seeds"],
        "packages": versions,
        "plugins": plugin_provenance(cfg),  # file plugins by SHA-256, installed ones by package version
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
    }


def _numbers(row: dict):
    """(metric, value) pairs of one result row; a list (per-step credit) becomes metric/k."""
    for metric, value in row.items():
        if metric in ("budget", "generation"):
            continue
        if isinstance(value, list):
            yield from ((f"{metric}/{k}", v) for k, v in enumerate(value))
        elif isinstance(value, int | float):
            yield metric, float(value)


def collect(cfg: dict, runs_root: Path, name: str = "eval.json") -> pd.DataFrame:
    """One row per run, budget and metric (seed-level, before aggregation)."""
    rows = []
    for key in study.runs(cfg):
        run = runs_root / key.path
        result = read_json(run / name)  # NaN where a non-finite number was written as null
        status = json.loads((run / "summary.json").read_text())["status"]
        rows_in = [{**r, "budget": r.get("budget", r.get("generation"))} for r in result["rows"]]
        if "decay" in result:  # the self-consuming loop: one slope per run, filed at the last generation
            rows_in.append({"budget": rows_in[-1]["budget"], **result["decay"]})
        for r in rows_in:
            for metric, value in _numbers(r):
                rows.append({"model": key.model, "reward": key.reward, "algorithm": key.algorithm,
                             "seed": key.seed, "budget": r["budget"], "metric": metric, "value": value,
                             "status": status})
    return pd.DataFrame(rows, columns=["model", "reward", "algorithm", "seed", "budget", "metric", "value", "status"])


def summarise(seed_rows: pd.DataFrame, stats_cfg: dict) -> pd.DataFrame:
    out = []
    for keys, group in seed_rows.groupby(KEYS, sort=True):
        values = group["value"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]  # censored / undefined seeds are counted apart
        if values.size == 0:
            out.append({**dict(zip(KEYS, keys)), "mean": float("nan"), "ci_low": float("nan"),
                        "ci_high": float("nan"), "n_seeds": 0,
                        "diverged": int((group["status"] == "diverged").sum())})
            continue
        ci = mean_ci(values, confidence_level=stats_cfg["confidence"],
                     n_resamples=stats_cfg["bootstrap_resamples"], seed=stats_cfg["seed"])
        out.append({**dict(zip(KEYS, keys)), "mean": ci.point, "ci_low": ci.low, "ci_high": ci.high,
                    "n_seeds": len(values), "diverged": int((group["status"] == "diverged").sum())})
    return pd.DataFrame(out, columns=KEYS + ["mean", "ci_low", "ci_high", "n_seeds", "diverged"])


def improvement(seed_rows: pd.DataFrame, stats_cfg: dict, metrics: list[str]) -> pd.DataFrame:
    """Probability that method X beats method Y over seeds (rliable's definition), with a
    bootstrap interval, at the final budget, for each training reward and each metric listed
    (a `-` prefix means lower is better). `significant` when the interval excludes 0.5 and an
    exact two-sided Mann-Whitney U test rejects equality at the same level: a percentile bootstrap
    over 2-3 seeds can give a degenerate [1, 1] interval, while the exact test cannot reject with
    so few seeds (its smallest p-value with 3 vs 3 seeds is 0.1)."""
    out, alpha = [], 1 - stats_cfg["confidence"]
    for (model, reward), part in seed_rows.groupby(["model", "reward"]):
        final = part[part["budget"] == part["budget"].max()]
        for spec in metrics:
            metric = spec.lstrip("-").replace("{reward}", reward)
            sign = -1.0 if spec.startswith("-") else 1.0
            values = {a: sign * g["value"].to_numpy(dtype=float)
                      for a, g in final[final["metric"] == metric].groupby("algorithm")}
            for x, vx in values.items():
                for y, vy in values.items():
                    if x == y:
                        continue
                    p_value = float(mannwhitneyu(vx, vy, alternative="two-sided", method="exact").pvalue)
                    ci = probability_of_improvement_ci(vx, vy, confidence_level=stats_cfg["confidence"],
                                                       n_resamples=stats_cfg["bootstrap_resamples"],
                                                       seed=stats_cfg["seed"])
                    out.append({"model": model, "reward": reward, "metric": metric,
                                "budget": int(final["budget"].max()), "method": x, "over": y,
                                "poi": ci.point, "ci_low": ci.low, "ci_high": ci.high,
                                "n_seeds": ci.n, "p_value": p_value,
                                "significant": bool((ci.low > 0.5 or ci.high < 0.5) and p_value < alpha)})
    return pd.DataFrame(out)


def _header(prov: dict, comment: str) -> str:
    plugins = ", ".join(f"{k} {v}" for k, v in (prov.get("plugins") or {}).items())
    lines = [f"t2i-rl-bench results, study '{prov['study']}'",
             f"commit {prov['commit']}, config hash {prov['config_hash']}, seeds {prov['seeds']}, date {prov['date']}",
             "packages: " + ", ".join(f"{k} {v}" for k, v in prov["packages"].items()),
             *([f"plugins: {plugins}"] if plugins else []),
             "mean over seeds with a percentile-bootstrap confidence interval"]
    return "".join(f"{comment} {line}\n" for line in lines)


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.4g}"


def write_tables(table: pd.DataFrame, prov: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.csv", _header(prov, "#") + table.to_csv(index=False, float_format="%.6g"))
    shown = table.assign(value=[f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"
                                for m, lo, hi in zip(table["mean"], table["ci_low"], table["ci_high"])])
    shown = shown[KEYS + ["value", "n_seeds"]]
    md = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    md += "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    atomic_write_text(out / f"{name}.md", _header(prov, "<!--").replace("\n", " -->\n") + "\n" + md)
    tex = [_header(prov, "%"), "\\begin{tabular}{lllrlr}", "\\toprule",
           " & ".join(c.replace("_", "\\_") for c in shown.columns) + " \\\\", "\\midrule"]
    tex += [" & ".join(str(v).replace("_", "\\_") for v in row) + " \\\\" for row in shown.itertuples(index=False)]
    tex += ["\\bottomrule", "\\end{tabular}", ""]
    atomic_write_text(out / f"{name}.tex", "\n".join(tex))


def aggregate(cfg: dict, runs_root: Path, out: Path) -> pd.DataFrame:
    prov = provenance(cfg)
    failures.prune_tables(out)  # every table below is written fresh; one this study does not make is gone
    failures.write_failed_runs(cfg, runs_root, out, _header(prov, "#"))
    seed_rows = collect(cfg, runs_root)
    table = summarise(seed_rows, cfg["statistics"])
    write_tables(table, prov, out, "eval")
    seed_rows.to_csv(out / "eval_per_seed.csv", index=False)
    if cfg.get("recursive", {}).get("enabled"):
        rec_table = summarise(collect(cfg, runs_root, "recursive.json"), cfg["statistics"])
        write_tables(rec_table, prov, out, "recursive")  # here the budget column holds the generation
        table = pd.concat([table, rec_table.assign(metric="recursive/" + rec_table["metric"])])
    poi = improvement(seed_rows, cfg["statistics"], IMPROVEMENT_METRICS)
    if len(poi):
        atomic_write_text(out / "improvement.csv", _header(prov, "#") + poi.to_csv(index=False, float_format="%.6g"))
    derived = pd.concat([analysis.convergence(seed_rows),
                         analysis.matched_quality(seed_rows, QUALITY_METRICS),
                         analysis.collapse(seed_rows, DIVERSITY_METRIC)])
    derived = failures.with_run_status(derived, seed_rows)  # the eval table's diverged flag
    if len(derived):
        derived_table = summarise(derived, cfg["statistics"])
        write_tables(derived_table, prov, out, "derived")
        table = pd.concat([table, derived_table])
    if cfg.get("probe", {}).get("enabled"):
        probe_rows = collect(cfg, runs_root, "probe.json")
        probe_table = summarise(probe_rows, cfg["statistics"])
        write_tables(probe_table, prov, out, "probe")
        probe_rows.to_csv(out / "probe_per_seed.csv", index=False)
        table = pd.concat([table, probe_table.assign(metric="probe/" + probe_table["metric"])])
    num = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731  (JSON has no NaN)
    citable = {"provenance": prov, "results": {
        "/".join(str(r[k]) for k in KEYS): {"mean": num(r["mean"]), "ci_low": num(r["ci_low"]),
                                            "ci_high": num(r["ci_high"]), "n_seeds": int(r["n_seeds"]),
                                            "diverged": int(r["diverged"])}  # as in every table
        for r in table.to_dict("records")}}
    citable_path = out.parent / "citable.json" if out.name == "tables" else out / "citable.json"
    atomic_write_text(citable_path, dumps_json(citable) + "\n")
    return table
