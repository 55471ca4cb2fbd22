"""Tidy result tables over seeds, with confidence intervals and provenance, as CSV, Markdown and
LaTeX (booktabs longtables, one per model x training reward), plus `results/citable.json` with
stable keys. Every number traces back to a commit, a config hash and seeds.

The interval over seeds is the study's setting (`statistics.interval`, `statistics.confidence`)
and is named in every header. A row measured once and shared by every seed (the base model at
budget 0) carries n_seeds = 1 and no interval. Directions (which way is better), gold checks and
scale-freeness come from the metrics registry (`t2i_rl_bench.metrics.lookup`); a scale-dependent
quantity (tr Cov, ||mean g||^2) is marked `scale_free = False` and never ranked across methods.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from t2i_rl_bench import analysis, calibration, failures, frontier, mechanisms, study, verdicts
from t2i_rl_bench.io import atomic_write_text, dumps_json, read_json
from t2i_rl_bench.metrics import direction, gold_keys, lookup
from t2i_rl_bench.metrics.statistics import (
    aggregate_iqm,
    compare,
    describe_interval,
    holm,
    interval,
    is_proportion,
    performance_profile,
    probability_of_improvement_ci,
    probability_of_improvement_tasks_ci,
    proportion_interval,
    stratified_bootstrap,
)
from t2i_rl_bench.provenance import (
    plugin_provenance,
    resolved_algorithms,
    versions,
    warn_version_drift,
    weight_hashes,
)

KEYS = ["model", "reward", "algorithm", "budget", "metric"]
# the versions every table header names (citable.json names provenance.VERSIONED, a longer list)
PACKAGES = (
    "t2i-rl-bench",
    "torch",
    "torchmetrics",
    "open_clip_torch",
    "diffusers",
    "transformers",
    "numpy",
    "scipy",
    "snakemake",
)
CITABLE_FORMAT = 2  # results/citable.schema.json describes this format


# the study's own outputs (rewritten by design; not code, so they leave the commit stamp clean)
GENERATED = ("results/tables", "results/citable.json", "results/studies", "report", "README.md")


def _stats(cfg_or_stats: dict) -> dict:
    s = cfg_or_stats.get("statistics", cfg_or_stats)
    return {"interval": "t", "bootstrap_resamples": 2000, "seed": 0, **s}


def provenance(cfg: dict) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # the study's own outputs (tables, citable.json, the report) are rewritten by design
        dirty = bool(
            subprocess.run(
                [
                    "git",
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                    "--",
                    ".",
                    *(f":(exclude){p}" for p in GENERATED),
                ],
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    s = _stats(cfg)
    return {
        "study": cfg.get("study"),
        "commit": commit + ("+dirty" if dirty else ""),
        "config_hash": study.config_hash(cfg),
        "seeds": cfg["seeds"],
        "packages": versions(PACKAGES),  # python first, then each package
        "plugins": plugin_provenance(cfg),  # file plugins by SHA-256, installed ones by package version
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "interval": {
            "method": s["interval"],
            "confidence": s.get("confidence", 0.95),
            "description": describe_interval(s["interval"], s.get("confidence", 0.95)),
            "bootstrap_resamples": s["bootstrap_resamples"],
        },
    }


def hardware() -> dict:
    """The machine the tables were made on (runs record their own device-seconds)."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cuda_version"] = torch.version.cuda
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001  (hardware info is best effort)
        info["cuda"] = None
    return info


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
    """One row per run, budget and metric (seed-level, before aggregation). `shared` marks the
    budget-0 rows that are one measurement of the base model shared by all seeds."""
    rows = []
    for key in study.runs(cfg):
        run = runs_root / key.path
        path = run / name
        if not path.is_file():
            continue
        try:
            result = read_json(path)  # NaN where a non-finite number was written as null
            status = json.loads((run / "summary.json").read_text())["status"]
            result["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # a damaged run file loses that run's rows, not the study's tables: failed_runs lists it
            print(f"aggregate: skipped {path} ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        rows_in = [{**r, "budget": r.get("budget", r.get("generation"))} for r in result["rows"]]
        if "decay" in result:  # the self-consuming loop: one slope per run, filed at the last generation
            rows_in.append({"budget": rows_in[-1]["budget"], **result["decay"]})
        for r in rows_in:
            shared = bool(result.get("base_shared")) and r["budget"] == 0
            for metric, value in _numbers(r):
                rows.append(
                    {
                        "model": key.model,
                        "reward": key.reward,
                        "algorithm": key.algorithm,
                        "seed": key.seed,
                        "budget": r["budget"],
                        "metric": metric,
                        "value": value,
                        "status": status,
                        "shared": shared,
                    }
                )
    return pd.DataFrame(rows, columns=[*KEYS[:3], "seed", "budget", "metric", "value", "status", "shared"])


def _is_shared(group: pd.DataFrame, values: np.ndarray) -> bool:
    """One measurement repeated for every seed: flagged shared, or the base (budget 0) with
    identical values (a base measured per seed differs between seeds)."""
    flagged = "shared" in group and bool(group["shared"].fillna(False).all())
    return values.size > 1 and (flagged or (int(group["budget"].iloc[0]) == 0 and np.ptp(values) == 0))


def summarise(seed_rows: pd.DataFrame, stats_cfg: dict) -> pd.DataFrame:
    """Mean over seeds with the study's interval per (model, reward, algorithm, budget, metric);
    `better` and `scale_free` from the registry."""
    s = _stats(stats_cfg)
    out = []
    failed = failures.failed_seeds(seed_rows)  # diverged or failed seeds of each method (a kill is not one)
    for keys, group in seed_rows.groupby(KEYS, sort=True):
        values = group["value"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]  # censored / undefined seeds are counted apart
        diverged = failed.get(tuple(keys[:3]), 0)
        metric = lookup(keys[-1])
        scale_free = metric.scale_free if metric else True
        # a loss-scale-dependent quantity has no better side across methods: no direction shown
        better = direction(keys[-1]) or frontier.reading_direction(keys[-1]) or ""
        meta = {"better": better if scale_free else "", "scale_free": scale_free}
        if values.size == 0:
            out.append(
                {
                    **dict(zip(KEYS, keys)),
                    "mean": np.nan,
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "n_seeds": 0,
                    "diverged": diverged,
                    "shared": False,
                    **meta,
                }
            )
            continue
        shared = _is_shared(group, values)
        if shared:
            values = values[:1]
        if is_proportion(keys[-1]) and np.isin(values, (0.0, 1.0)).all():  # a rate: Wilson, inside [0, 1]
            ci = proportion_interval(values, s.get("confidence", 0.95))
        else:
            ci = interval(values, s["interval"], s.get("confidence", 0.95), s["bootstrap_resamples"], s["seed"])
        out.append(
            {
                **dict(zip(KEYS, keys)),
                "mean": ci.point,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "n_seeds": ci.n,
                "diverged": diverged,
                "shared": shared,
                **meta,
            }
        )
    # an empty summary keeps its columns (a study whose every run failed still writes its tables)
    return pd.DataFrame(
        out,
        columns=None
        if out
        else [*KEYS, "mean", "ci_low", "ci_high", "n_seeds", "diverged", "shared", "better", "scale_free"],
    )


def compared_metrics(seed_rows: pd.DataFrame, reward: str) -> list[str]:
    """What the pairwise comparison covers: the training reward and every gold metric present."""
    present = sorted(seed_rows["metric"].unique())
    return [f"reward/{reward}", *gold_keys(present)]


def improvement(
    seed_rows: pd.DataFrame, stats_cfg: dict, metrics: list[str] | None = None, analysis_cfg: dict | None = None
) -> pd.DataFrame:
    """Each ordered pair of methods at the final budget, per training reward and compared metric:
    the probability that X beats Y over seeds (rliable's definition, oriented by the registry's
    direction) with a bootstrap interval, and the difference of means with the study's interval
    and Welch's p. `p_holm`: Holm-corrected over the unordered pairs of one (model, reward,
    metric); `significant` when p_holm < 1 - confidence. Seeds shared by both methods are paired
    (`analysis.pairing`, bench/analysis.py); TOST against `analysis.equivalence_margin` and the
    family's minimum detectable difference after Holm (docs/study.md#statistics)."""
    s = _stats(stats_cfg)
    acfg = analysis.analysis_settings({"analysis": analysis_cfg or {}})
    out, alpha = [], 1 - s.get("confidence", 0.95)
    for (model, reward), part in seed_rows.groupby(["model", "reward"]):
        final = part[part["budget"] == part["budget"].max()]
        for spec in metrics or compared_metrics(part, reward):
            metric = spec.replace("{reward}", reward)
            sign = -1.0 if direction(metric) == "lower" else 1.0
            by_seed = {
                a: dict(zip(g["seed"], g["value"].to_numpy(dtype=float)))
                for a, g in final[final["metric"] == metric].groupby("algorithm")
            }
            values = {a: np.array([v for v in d.values() if np.isfinite(v)]) for a, d in by_seed.items()}
            level, reps, seed = s.get("confidence", 0.95), s["bootstrap_resamples"], s["seed"]
            family = []
            for x, vx in values.items():
                for y, vy in values.items():
                    if x == y:
                        continue
                    poi = probability_of_improvement_ci(sign * vx, sign * vy, level, reps, seed)
                    d = compare(by_seed[x], by_seed[y], s["interval"], level, reps, seed, acfg["pairing"])
                    family.append(
                        {
                            "model": model,
                            "reward": reward,
                            "metric": metric,
                            "better": direction(metric) or "",
                            "budget": int(final["budget"].max()),
                            "method": x,
                            "over": y,
                            "poi": poi.point,
                            "poi_low": poi.low,
                            "poi_high": poi.high,
                            "difference": d.effect,
                            "ci_low": d.low,
                            "ci_high": d.high,
                            "n_seeds": poi.n,
                            "p_value": d.p_value,
                            **analysis.pair_columns(d, analysis.margin_of(acfg, metric), alpha),
                        }
                    )
            if family:
                # one test per unordered pair: (x, y) and (y, x) share Welch's p
                pairs = {tuple(sorted((r["method"], r["over"]))): r["p_value"] for r in family}
                adjusted = dict(zip(pairs, holm(list(pairs.values()))))
                for r in family:
                    r["p_holm"] = adjusted[tuple(sorted((r["method"], r["over"])))]
                    r["significant"] = bool(np.isfinite(r["p_holm"]) and r["p_holm"] < alpha)
                power = analysis.family_power(family, alpha, acfg["power"])
                out += [{**r, **power} for r in family]
    return pd.DataFrame(out)


def normalised_scores(seed_rows: pd.DataFrame) -> dict[str, dict[tuple, np.ndarray]]:
    """Per method, per task (model, training reward): each seed's final gain over the base,
    divided by the range of that reward over all final runs and the base (min-max over the task,
    so every task weighs the same; 0 = no change). The scores of rliable's aggregates."""
    scores: dict[str, dict[tuple, np.ndarray]] = {}
    for (model, reward), part in seed_rows.groupby(["model", "reward"]):
        curve = part[part["metric"] == f"reward/{reward}"]
        if curve.empty:
            continue
        base = float(curve[curve["budget"] == 0]["value"].median())
        final = curve[curve["budget"] == curve["budget"].max()]
        ends = np.append(final["value"].to_numpy(dtype=float), base)
        span = float(np.ptp(ends[np.isfinite(ends)])) if np.isfinite(ends).any() else 0.0
        for algo, g in final.groupby("algorithm"):
            v = (g["value"].to_numpy(dtype=float) - base) / (span if span > 0 else 1.0)
            scores.setdefault(algo, {})[(model, reward)] = v[np.isfinite(v)]
    return scores


def across_rewards(seed_rows: pd.DataFrame, stats_cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """rliable's aggregates over training rewards (tasks): per method the IQM of the normalised
    final gain with a stratified-bootstrap interval, and the probability of improvement of each
    method over each other averaged over tasks with its interval; and the performance profiles."""
    s = _stats(stats_cfg)
    level = s.get("confidence", 0.95)
    scores = normalised_scores(seed_rows)
    tasks = sorted({t for per in scores.values() for t in per})
    rows, profile = [], []
    taus = np.linspace(-1.0, 1.0, 41)
    for algo, per in sorted(scores.items()):
        arrays = [per[t] for t in tasks if t in per and per[t].size]
        if not arrays:
            continue
        ci = stratified_bootstrap(arrays, aggregate_iqm, level, s["bootstrap_resamples"], s["seed"])
        rows.append(
            {
                "method": algo,
                "over": "",
                "statistic": "iqm_normalised_gain",
                "value": ci.point,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "tasks": len(arrays),
                "runs": ci.n,
            }
        )
        fractions = performance_profile(arrays, taus)
        profile += [{"method": algo, "tau": float(t), "fraction": float(f)} for t, f in zip(taus, fractions)]
    for x in sorted(scores):
        for y in sorted(scores):
            common = [t for t in tasks if t in scores[x] and t in scores[y] and scores[x][t].size and scores[y][t].size]
            if x == y or not common:
                continue
            ci = probability_of_improvement_tasks_ci(
                [scores[x][t] for t in common],
                [scores[y][t] for t in common],
                level,
                s["bootstrap_resamples"],
                s["seed"],
            )
            rows.append(
                {
                    "method": x,
                    "over": y,
                    "statistic": "probability_of_improvement",
                    "value": ci.point,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "tasks": len(common),
                    "runs": ci.n,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(profile)


def headline(
    table: pd.DataFrame,
    derived: pd.DataFrame,
    seconds_levels: pd.DataFrame,
    hack: pd.DataFrame,
    verdict: pd.DataFrame,
    stats_cfg: dict,
) -> pd.DataFrame:
    """One row per (model, training reward, method): held-out training-reward gain over the base
    at the final budget and at the common device-seconds level (both with intervals over seeds),
    the change of every gold metric, the compute used, the hacking flag and the verdicts."""
    s = _stats(stats_cfg)
    rows = []
    for (model, reward, algo), part in table.groupby(["model", "reward", "algorithm"]):
        final_budget = int(part["budget"].max())
        d = (
            derived[(derived["model"] == model) & (derived["reward"] == reward) & (derived["algorithm"] == algo)]
            if len(derived)
            else derived
        )

        def ci_of(key: str, frame: pd.DataFrame = d, final: int = final_budget) -> tuple[float, float, float, int]:
            # the seeds that reached the final budget only: a row never mixes budgets
            at = (frame["metric"] == key) & (frame["budget"] == final) if len(frame) else None
            v = frame[at]["value"].to_numpy(dtype=float) if len(frame) else np.array([])
            v = v[np.isfinite(v)]
            if v.size == 0:
                return np.nan, np.nan, np.nan, 0
            c = interval(v, s["interval"], s.get("confidence", 0.95), s["bootstrap_resamples"], s["seed"])
            return c.point, c.low, c.high, c.n

        g, glo, ghi, n = ci_of(f"change/reward/{reward}")
        sg, slo, shi, _ = ci_of(f"seconds/gain/reward/{reward}")
        lvl = (
            seconds_levels[(seconds_levels["model"] == model) & (seconds_levels["reward"] == reward)]
            if len(seconds_levels)
            else seconds_levels
        )
        secs = part[(part["metric"] == "device_seconds") & (part["budget"] == final_budget)]["mean"]
        row = {
            "model": model,
            "reward": reward,
            "method": algo,
            "n_seeds": n,
            "gain": g,
            "gain_low": glo,
            "gain_high": ghi,
            "seconds_level": float(lvl["seconds_level"].iloc[0]) if len(lvl) else np.nan,
            "gain_at_seconds": sg,
            "gain_at_seconds_low": slo,
            "gain_at_seconds_high": shi,
            "images": final_budget,
            "device_seconds": float(secs.iloc[0]) if len(secs) else np.nan,
        }
        for key in gold_keys(sorted(m[len("change/") :] for m in d["metric"].unique() if m.startswith("change/"))):
            c, lo, hi, _ = ci_of(f"change/{key}")
            row[f"change/{key}"], row[f"change/{key}_low"], row[f"change/{key}_high"] = c, lo, hi
        h = (
            hack[(hack["model"] == model) & (hack["reward"] == reward) & (hack["algorithm"] == algo)]
            if len(hack)
            else hack
        )
        row["hacked"] = " ".join(sorted(h[h["flagged"]]["gold_metric"])) if len(h) else ""
        row["not_finished"] = failures.unfinished_note(d)  # failed, killed or diverged seeds, marked
        v = (
            verdict[(verdict["model"] == model) & (verdict["reward"] == reward) & (verdict["method"] == algo)]
            if len(verdict)
            else verdict
        )
        row["verdicts"] = (
            "; ".join(f"{r.id}{'/' + r.over if r.over else ''}: {r.verdict}" for r in v.itertuples()) if len(v) else ""
        )
        rows.append(row)
    return pd.DataFrame(rows)


def with_optimiser_steps(head: pd.DataFrame, cfg: dict, runs_root: Path) -> pd.DataFrame:
    """The headline with `steps`: the optimiser steps a run took to its final budget (the sum of
    its log.jsonl's per-round `optimiser_steps` up to that many images), mean over seeds; NaN
    where no run left a log."""
    if head.empty:
        return head
    final = {(r.model, r.reward, r.method): r.images for r in head.itertuples()}
    steps: dict[tuple, list[int]] = {}
    for key in study.runs(cfg):
        budget = final.get((key.model, key.reward, key.algorithm))
        log = runs_root / key.path / "log.jsonl"
        if budget is None or not log.is_file():
            continue
        total = 0
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("images_seen", budget + 1) <= budget:
                total += int(row.get("optimiser_steps") or 0)
        steps.setdefault((key.model, key.reward, key.algorithm), []).append(total)
    mean = [float(np.mean(steps[k])) if k in steps else np.nan for k in zip(head.model, head.reward, head.method)]
    out = head.copy()
    out.insert(out.columns.get_loc("images") + 1, "steps", mean)
    return out


def headline_shown(head: pd.DataFrame) -> pd.DataFrame:
    """The headline as a paper shows it: 'mean [low, high]' cells, one column per gold metric."""

    def cell(r: dict, k: str) -> str:
        return fmt_interval(r[k], r[f"{k}_low"], r[f"{k}_high"])

    golds = [c for c in head.columns if c.startswith("change/") and not c.endswith(("_low", "_high"))]
    rows = []
    for r in head.to_dict("records"):
        rows.append(
            {
                "model": r["model"],
                "reward": r["reward"],
                "method": r["method"],
                "n": r["n_seeds"],
                "gain": cell(r, "gain"),
                "gain at equal device-s": cell(r, "gain_at_seconds"),
                "at device-s": _fmt(r["seconds_level"]),
                **{f"Δ {g[len('change/') :]}": cell(r, g) for g in golds},
                "images": r["images"],
                "opt. steps": _fmt(r.get("optimiser_steps", np.nan)),
                "lr x steps": _fmt(r.get("lr_x_steps", np.nan)),
                "CPU-s": _fmt(r.get("cpu_seconds", np.nan)),
                "device-s": _fmt(r["device_seconds"]),
                "hacked": _flag(r, "hacked", "none"),
                "not finished": _flag(r, "not_finished", "-", "⚠ "),
            }
        )
    return pd.DataFrame(rows)


def _flag(r: dict, key: str, none: str, mark: str = "") -> str:
    """A text column of the headline: `none` where empty, MISSING where the table lacks the column
    (a re-rendered older table)."""
    if key not in r:
        return MISSING
    v = r[key]
    return f"{mark}{v}" if isinstance(v, str) and v else none


# ---- writing ---------------------------------------------------------------------------------


def _header_lines(prov: dict, notes: list[str] = ()) -> list[str]:
    plugins = ", ".join(f"{k} {v}" for k, v in (prov.get("plugins") or {}).items())
    return [
        f"t2i-rl-bench results, study '{prov['study']}'",
        f"commit {prov['commit']}, config hash {prov['config_hash']}, seeds {prov['seeds']}, date {prov['date']}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in prov["packages"].items()),
        *([f"plugins: {plugins}"] if plugins else []),
        f"mean over seeds with a {prov['interval']['description']}; rows measured once for every seed "
        "(the base model) have n_seeds 1 and no interval",
        *notes,
    ]


def _comment(lines: list[str], comment: str) -> str:
    """Header lines as comments: '# line' (CSV), '% line' (LaTeX), '<!-- line -->' (Markdown)."""
    end = " -->" if comment == "<!--" else ""
    return "".join(f"{comment} {line}{end}\n" for line in lines)


def _header(prov: dict, comment: str, notes: list[str] = ()) -> str:
    return _comment(_header_lines(prov, notes), comment)


MISSING = "--"  # a value that does not exist (no interval, a method that never reached a level)
DIGITS = 3  # significant digits of every number a table shows (the CSV keeps 6)


def fmt_number(v: float, digits: int = DIGITS) -> str:
    """`digits` significant digits, trailing zeros kept (0.0310), whole numbers as integers,
    |v| >= 10^digits in whole units, |v| < 1e-4 in exponent form; MISSING when not finite."""
    v = float(v)
    if not np.isfinite(v):
        return MISSING
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    a = abs(v)
    if a >= 10**digits:
        return f"{v:.0f}"
    if a < 1e-4:
        return f"{v:.{digits - 1}e}"
    return f"{v:#.{digits}g}".rstrip(".")


def _fmt(v) -> str:
    """One cell: numbers by `fmt_number`, a missing value (None, NaN, 'nan') as MISSING."""
    if v is None or (isinstance(v, str) and v.strip().lower() == "nan"):
        return MISSING
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return fmt_number(v)
    return str(v)


def fmt_interval(m, lo, hi) -> str:
    """'mean [low, high]', or the mean alone where there is no interval (one measurement)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return _fmt(m)
    return f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """The human-readable columns: 'mean [low, high]' plus n and the registry's direction."""
    if {"mean", "ci_low", "ci_high"} <= set(table.columns):
        value = [fmt_interval(m, lo, hi) for m, lo, hi in zip(table["mean"], table["ci_low"], table["ci_high"])]
        cols = [c for c in KEYS if c in table.columns]
        shown = table[cols].assign(value=value, n_seeds=table["n_seeds"])
        if "better" in table:
            shown["better"] = table["better"].astype(object).fillna("")  # all empty: read as float
        if "scale_free" in table and not table["scale_free"].all():
            shown["comparable"] = np.where(table["scale_free"], "yes", "per method only")
        return shown
    return table


# ---- LaTeX: pdflatex with \usepackage{booktabs,longtable,array}, ASCII only -------------------

TEX_PACKAGES = "\\usepackage{booktabs,longtable,array}"
_TEX_CHARS = {
    "\\": "\\textbackslash{}",
    "_": "\\_",
    "%": "\\%",
    "&": "\\&",
    "#": "\\#",
    "$": "\\$",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "<": "$<$",
    "|": "$|$",
    ">": "$>$",
    "Δ": "$\\Delta$",
    "±": "$\\pm$",
    "×": "$\\times$",
    "≥": "$\\geq$",
    "≤": "$\\leq$",
    "→": "$\\to$",
    "↑": "$\\uparrow$",
    "↓": "$\\downarrow$",
    "−": "-",
    "–": "--",
    "—": "---",
    "σ": "$\\sigma$",
    "β": "$\\beta$",
    "η": "$\\eta$",
    "ξ": "$\\xi$",
}


def _tex(text: str) -> str:
    """Text for a LaTeX cell: special characters escaped, the few non-ASCII ones the tables use
    in math mode, anything else non-ASCII replaced by '?' (pdflatex stops on it)."""
    out = "".join(_TEX_CHARS.get(c, c if ord(c) < 128 else "?") for c in str(text))
    return out.replace("/", "/\\allowbreak{}")  # long metric names may break after a slash


def _tex_cell(v) -> str:
    return _tex(_fmt(v))


def _tex_caption(text: str) -> str:
    return "".join(_TEX_CHARS.get(c, c if ord(c) < 128 else "?") for c in str(text))


def _label(*parts: str) -> str:
    return "tab:" + "-".join("".join(c if c.isalnum() else "-" for c in str(p)) for p in parts)


CHARS_PER_LINE = 72  # a page's text width (6.5 in) in \small characters, with a margin


def _colspec(shown: pd.DataFrame) -> tuple[str, bool]:
    """'l'/'r' for short columns (numbers right), a ragged-right p{} column for long text, sized
    so the row fits CHARS_PER_LINE and no word (split at spaces and slashes) sticks out; and
    whether the table needs the smaller font to fit."""
    widths, numeric, words = [], [], []
    for c in shown.columns:
        cells = [_fmt(v) for v in shown[c]]
        widths.append(max([len(str(c))] + [len(x) for x in cells]))
        numeric.append(bool(cells) and all(_looks_numeric(x) for x in cells))
        words.append(max(len(w) for x in [str(c), *cells] for w in re.split(r"[ /]", x)))
    budget = CHARS_PER_LINE - 2 * len(widths)
    wrap = [i for i, w in enumerate(widths) if w > 20 and not numeric[i]]  # numbers never wrap
    fixed = sum(w for i, w in enumerate(widths) if i not in wrap)
    tight = budget - fixed < 18 * len(wrap) or (not wrap and fixed > budget)
    spare = max(budget - fixed, 18 * len(wrap))
    out = []
    for i, w in enumerate(widths):
        if i in wrap:
            share = max(min(spare * w / sum(widths[j] for j in wrap), w), 18, words[i] + 2)
            out.append(f">{{\\raggedright\\arraybackslash}}p{{{share * 0.5:.1f}em}}")
        else:
            out.append("r" if numeric[i] else "l")
    return "".join(out), tight


def _looks_numeric(text: str) -> bool:
    head = text.split(" [")[0]
    try:
        float(head)
        return True
    except ValueError:
        return head == MISSING


def _longtable(shown: pd.DataFrame, caption: str, label: str = "", spec: tuple[str, bool] | None = None) -> list[str]:
    head = " & ".join(_tex(c) for c in shown.columns) + " \\\\"
    cap = f"\\caption{{{_tex_caption(caption)}}}" + (f"\\label{{{label}}}" if label else "") + "\\\\"
    spec, tight = _colspec(shown) if spec is None else spec
    out = [
        "{" + ("\\footnotesize\\setlength{\\tabcolsep}{3pt}" if tight else "\\small\\setlength{\\tabcolsep}{4pt}"),
        f"\\begin{{longtable}}{{{spec}}}",
        cap,
        "\\toprule",
        head,
        "\\midrule",
        "\\endfirsthead",
        "\\toprule",
        head,
        "\\midrule",
        "\\endhead",
        "\\bottomrule",
        "\\endfoot",
    ]
    out += [" & ".join(_tex_cell(v) for v in row) + " \\\\" for row in shown.itertuples(index=False)]
    return out + ["\\end{longtable}}", ""]


def _without_repeated_base(part: pd.DataFrame) -> pd.DataFrame:
    """Long per-budget rows of one (model, reward): per metric the base (budget 0) once, as method
    'base', when every method shows the same base value, then each method's budgets; the metric
    named on its first row only."""
    groups = []
    for metric, m in part.groupby("metric", sort=True):
        m = m.sort_values(["algorithm", "budget"], kind="stable")
        base = m[m["budget"] == 0]
        if len(base) > 1 and base["value"].nunique() == 1:
            m = pd.concat([base.iloc[[0]].assign(algorithm="base"), m[m["budget"] != 0]])
        groups.append(m.assign(metric=[metric] + [""] * (len(m) - 1)))
    out = pd.concat(groups) if groups else part
    return out.rename(columns={"algorithm": "method"})


def _supplementary(shown: pd.DataFrame, name: str, model: str, reward: str) -> list[str]:
    part = shown.drop(columns=["model", "reward"])
    if {"metric", "algorithm", "budget", "value"} <= set(part.columns):
        part = part.sort_values(["metric", "algorithm", "budget"], kind="stable")
        part = _without_repeated_base(part)
        part = part[
            ["metric", "method", "budget", *[c for c in part.columns if c not in ("metric", "method", "budget")]]
        ]
    return _longtable(part, f"{name}: {model}, trained on {reward}", _label(name, model, reward))


def _head_cell(name: str) -> str:
    """A stacked header cell: '$\\Delta$' / family / measure, so narrow number columns stay narrow."""
    lines = [_tex(x) for x in name.split("\n") if x]
    return "\\begin{tabular}[b]{@{}c@{}}" + "\\\\".join(lines) + "\\end{tabular}"


def _stacked(m, lo, hi) -> str:
    """A main-table cell: the mean, and under it the interval's half-width (symmetric) or ends."""
    if not np.isfinite(m):
        return MISSING
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return _tex(_fmt(m))
    half = (hi - lo) / 2
    if np.isclose(m - lo, hi - m, rtol=0.02, atol=1e-12):
        below = f"$\\pm${_tex(fmt_number(half))}"
    else:
        below = f"[{_tex(fmt_number(lo))}, {_tex(fmt_number(hi))}]"
    return f"\\begin{{tabular}}[t]{{@{{}}r@{{}}}}{_tex(_fmt(m))}\\\\[-1pt]{{\\scriptsize {below}}}\\end{{tabular}}"


def headline_tex(head: pd.DataFrame, interval: str = "") -> list[str]:
    """One compact main table per (model, training reward), a page wide at most: per method the
    held-out training-reward gain, the change of every gold metric (each with its interval under
    it), images and optimiser steps (when the headline has them)."""
    golds = [c for c in head.columns if c.startswith("change/") and not c.endswith(("_low", "_high"))]
    steps = "steps" if "steps" in head.columns and np.isfinite(head["steps"].astype(float)).any() else None
    out = []
    for (model, reward), part in head.groupby(["model", "reward"], sort=True):
        cols = ["method", "gain"] + [g[len("change/") :] for g in golds] + ["images"] + (["steps"] if steps else [])
        header = [_head_cell("method"), _head_cell("reward\ngain")]
        for g in golds:
            family, _, measure = g[len("change/") :].rpartition("/")
            header.append(_head_cell("\n".join(["Δ", *([family + "/"] if family else []), measure])))
        header += [_head_cell("images")] + ([_head_cell("steps")] if steps else [])
        rows = []
        for r in part.to_dict("records"):
            cells = [_tex(r["method"]), _stacked(r["gain"], r["gain_low"], r["gain_high"])]
            cells += [_stacked(r[g], r[f"{g}_low"], r[f"{g}_high"]) for g in golds]
            cells += [_tex_cell(r["images"])] + ([_tex_cell(r[steps])] if steps else [])
            rows.append(" & ".join(cells) + " \\\\[2pt]")
        n = sorted({int(v) for v in part["n_seeds"] if np.isfinite(v)})
        caption = (
            f"{model}, trained on {reward}: held-out reward gain over the base and change (final - base) of each "
            f"gold metric at the final budget; mean over {'/'.join(map(str, n)) or '--'} seeds, under it the "
            f"{interval or 'interval over seeds'}."
        )
        out += [
            "\\begin{table}[tbp]",
            "\\centering\\small\\setlength{\\tabcolsep}{3pt}",
            f"\\caption{{{_tex_caption(caption)}}}\\label{{{_label('headline', model, reward)}}}",
            f"\\begin{{tabular}}{{l{'r' * (len(cols) - 1)}}}",
            "\\toprule",
            " & ".join(header) + " \\\\",
            "\\midrule",
            *rows,
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
            "",
        ]
    return out


def _md_cell(v) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def write_tables(
    table: pd.DataFrame, prov: dict, out: Path, name: str, notes: list[str] = (), shown: pd.DataFrame | None = None
) -> None:
    """CSV (all columns), Markdown and LaTeX (shown columns), each with the provenance header.
    LaTeX (needs \\usepackage{booktabs,longtable,array}): the headline as one compact main table
    per model x training reward; every other table as a supplementary longtable per model x
    training reward, the base row shown once."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.csv", _header(prov, "#", notes) + table.to_csv(index=False, float_format="%.6g"))
    _write_views(table, out, name, _header_lines(prov, notes), prov["interval"]["description"], shown)


# tables whose CSV and Markdown carry more than a page holds: the LaTeX view's columns, each with a
# short header and a fixed wrapped width in em (the mechanism table's diagnostics: clip fraction,
# mean |log ratio|, step-weight CV, ... stay in mechanisms.csv / .md)
TEX_COLUMNS = {
    "mechanisms": {
        "method": ("method", 5.5),
        "advantage": ("advantage", 6.5),
        "updates_per_round": ("updates", 3.5),
        "IS (ratios != 1 on later updates)": ("IS", 4.0),
        "clip": ("clip", 4.5),
        "step weights vary": ("step weights", 4.5),
        "KL / reference term": ("KL / ref.", 4.0),
        "SDE": ("SDE", 5.5),
        "lr": ("lr", 4.0),
        "optimiser_steps": ("steps", 3.0),
    }
}


def _write_views(
    table: pd.DataFrame, out: Path, name: str, header: list[str], interval: str, shown: pd.DataFrame | None = None
) -> None:
    """`name`.md and `name`.tex of a table (write_tables; `rerender` from a committed CSV)."""
    shown = _shown(table) if shown is None else shown
    md = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    md += "".join("| " + " | ".join(_md_cell(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    atomic_write_text(out / f"{name}.md", _comment(header, "<!--") + "\n" + md)
    tex = [_comment(header, "%") + f"% needs {TEX_PACKAGES}"]
    if {"gain", "gain_low", "gain_high", "method", "model", "reward"} <= set(table.columns) and len(table):
        tex += headline_tex(table, interval)
    elif {"model", "reward"} <= set(shown.columns) and len(shown):
        fixed = {c: v for c, v in TEX_COLUMNS.get(name, {}).items() if c in shown.columns}
        for (model, reward), part in shown.groupby(["model", "reward"], sort=True):
            if fixed:
                caption, label = f"{name}: {model}, trained on {reward}", _label(name, model, reward)
                spec = "".join(f">{{\\raggedright\\arraybackslash}}p{{{w:g}em}}" for _, w in fixed.values())
                narrow = part[list(fixed)].rename(columns={c: h for c, (h, _) in fixed.items()})
                tex += _longtable(narrow, caption, label, spec=(spec, True))
            else:
                tex += _supplementary(part, name, model, reward)
    else:
        tex += _longtable(shown, name, _label(name))
    atomic_write_text(out / f"{name}.tex", "\n".join(tex))


def evaluated_images(cfg: dict, runs_root: Path) -> int | None:
    """Images per checkpoint of the study's evaluation, from the first readable eval.json that
    has them (a failed or damaged run's file has none)."""
    for key in study.runs(cfg):
        try:
            n = json.loads((runs_root / key.path / "eval.json").read_text()).get("n_images")
        except (OSError, ValueError, AttributeError):
            continue
        if n is not None:
            return int(n)
    return None


def quality_note(cfg: dict, runs_root: Path) -> str:
    """FID/KID are only comparable at equal N and feature network: both, from the study."""
    ev = cfg.get("evaluation", {})
    n = evaluated_images(cfg, runs_root)
    return (
        f"FID/KID/CLIP score/diversity: N = {n} generated images per checkpoint "
        f"({ev.get('max_prompts')} held-out prompts x {ev.get('images_per_prompt')}) against as many reference "
        f"renders, feature network: the image tower of {ev.get('clip_model')}; compare only at equal N and network"
    )


def aggregate(cfg: dict, runs_root: Path, out: Path) -> pd.DataFrame:
    prov = provenance(cfg)
    s = _stats(cfg)
    rules = analysis.Rules.from_config(cfg)
    warn_version_drift(out / "eval.csv", "aggregate")  # the tables this run replaces
    failures.prune_tables(out)  # every table below is written fresh; one this study does not make is gone
    failures.write_failed_runs(cfg, runs_root, out, _header(prov, "#"))
    seed_rows = failures.mask_unfinished(collect(cfg, runs_root))  # a failed or killed run: in no mean
    qnote = quality_note(cfg, runs_root)
    table = summarise(seed_rows, s)
    write_tables(table, prov, out, "eval", [qnote])
    seed_rows.to_csv(out / "eval_per_seed.csv", index=False)
    calib_seeds = calibration.grid_per_seed(cfg, runs_root, seed_rows)
    calib, final = calibration.grid_table(calib_seeds, calibration.grid_budgets(cfg), calibration.curve_prefix(cfg))
    if len(calib):  # a learning-rate grid (config/calibration.yaml): the rule's choice per method
        rule = calibration.selection_rule(calibration.score_kind(cfg), calibration.curve_prefix(cfg))
        notes = [f"selection rule: {rule}", f"recommended final budget: {final}"]
        atomic_write_text(
            out / "calibration.csv", _header(prov, "#", notes) + calib.to_csv(index=False, float_format="%.6g")
        )
        atomic_write_text(  # every seed's row, so that a reading on fewer seeds is recomputed from the tables
            out / "calibration_per_seed.csv",
            _header(prov, "#", notes) + calib_seeds.to_csv(index=False, float_format="%.6g"),
        )
    all_tables = [table]
    recursive_rows = pd.DataFrame()
    if cfg.get("recursive", {}).get("enabled"):
        recursive_rows, rec_table = recursive_tables(cfg, runs_root, out, prov, qnote)
        if len(rec_table):
            all_tables.append(
                rec_table.assign(metric="recursive/" + rec_table["variant"] + "/" + rec_table["metric"]).drop(
                    columns="variant"
                )
            )
    poi = improvement(seed_rows, s, analysis_cfg=cfg.get("analysis"))
    if len(poi):
        atomic_write_text(
            out / "improvement.csv",
            _header(
                prov,
                "#",
                [
                    "pairs at the final budget; poi: probability of improvement (rliable) with a percentile bootstrap; "
                    "difference: mean(method) - mean(over) with the interval above; p_holm: the paired t-test by "
                    "seed where both methods ran the same seeds, else Welch's (column test), Holm-Bonferroni over the "
                    "pairs of one metric; mdd: the smallest true difference detected with the declared power after "
                    "Holm (first step, alpha / pairs), from the median sd of the pairs; p_tost: two one-sided tests "
                    "against the declared margin (analysis.equivalence_margin), equivalent when p_tost < alpha"
                ],
            )
            + poi.to_csv(index=False, float_format="%.6g"),
        )
    across, profile = across_rewards(seed_rows, s)
    if len(across):
        note = (
            "across training rewards (rliable): score = (final reward - base) / range of that reward over all "
            "final runs and the base; IQM and probability of improvement with stratified-bootstrap "
            f"{100 * s.get('confidence', 0.95):g}% percentile intervals"
        )
        atomic_write_text(
            out / "across_rewards.csv", _header(prov, "#", [note]) + across.to_csv(index=False, float_format="%.6g")
        )
        profile.to_csv(out / "performance_profile.csv", index=False)
    gold = analysis.gold_checks(seed_rows, rules)
    conv, conv_levels = analysis.convergence(seed_rows, gold, rules)
    secs, secs_levels = analysis.at_seconds(seed_rows)
    parts = [
        f
        for f in (gold, conv, secs, analysis.matched_quality(seed_rows, rules), analysis.collapse(seed_rows, rules))
        if len(f)
    ]
    derived_rows = pd.concat(parts) if parts else pd.DataFrame(columns=seed_rows.columns)
    frontier_rows = frontier.derived_rows(cfg, seed_rows)  # readings at the declared levels (bench/frontier.py)
    if len(frontier_rows):
        derived_rows = pd.concat([derived_rows, frontier_rows], ignore_index=True)
    derived_rows = failures.with_run_status(derived_rows, seed_rows)  # the eval table's diverged flag
    derived_rows = failures.with_unfinished(derived_rows, seed_rows)  # failed/killed runs counted, as NaN
    derived_table = summarise(derived_rows, s)
    derived_notes = [
        f"gold/pass: no gold metric worse than the base by more than {rules.describe_tolerance()} x its base value",
        f"convergence: target = base + {rules.target_fraction:g} x the reference improvement (runs passing the gold "
        "checks); rmst_* = mean over seeds of min(time to target, tau): a run that never reaches it counts tau "
        "(Kaplan-Meier restricted mean); reached_* = fraction of seeds that got there",
        "seconds/*: reward at the largest device-seconds level every finished run reached (linear interpolation)",
        f"matched/*: gold metrics where a run first reaches base + {rules.matched_fraction:g} x the smallest mean "
        "gain of the methods (no level, shown --, when a method did not improve: not comparable)",
        f"collapse/*: diversity's distance above its floor (Vendi 1, distance 0) fell by {rules.collapse_drop:g}",
    ]
    write_tables(derived_table, prov, out, "derived", derived_notes)
    derived_rows.to_csv(out / "derived_per_seed.csv", index=False)
    levels = conv_levels.merge(secs_levels, on=["model", "reward"], how="outer") if len(conv_levels) else secs_levels
    if len(levels):
        atomic_write_text(out / "levels.csv", _header(prov, "#", derived_notes[1:3]) + levels.to_csv(index=False))
    hack = analysis.hacking(gold, rules, s["interval"])
    if len(hack):
        atomic_write_text(
            out / "hacking.csv",
            _header(
                prov,
                "#",
                [
                    "flagged: the proxy (held-out training reward) rose and the gold metric worsened, both with "
                    "intervals over seeds that exclude 0, the worsening larger than "
                    f"{rules.describe_tolerance()} x the base's value; "
                    "runs_failing_gold_check: seeds whose gold metric worsened by more than that"
                ],
            )
            + hack.to_csv(index=False, float_format="%.6g"),
        )
    all_tables.append(derived_table)
    probe_rows = pd.DataFrame()
    if cfg.get("probe", {}).get("enabled"):
        probe_rows = failures.mask_unfinished(collect(cfg, runs_root, "probe.json"))
        probe_table = summarise(probe_rows, s)
        k = cfg["probe"].get("minibatches")
        # per-step statistics and the off-policy probe in tables of their own (docs/mechanisms.md#the-gradient-probe)
        parts = {
            "probe_steps": probe_table["metric"].str.startswith("step_"),
            "probe_offpolicy": probe_table["metric"].str.startswith("update"),
        }
        for name, mask, note in (
            ("probe_steps", parts["probe_steps"], "step_<stat>/<s>: per denoising step s (the sampler's index)"),
            ("probe_offpolicy", parts["probe_offpolicy"], "update<u>/*: after the u-th update of the probe's round"),
        ):
            if mask.any():
                write_tables(probe_table[mask], prov, out, name, [note + " (docs/mechanisms.md#the-gradient-probe)"])
        write_tables(
            probe_table[~(parts["probe_steps"] | parts["probe_offpolicy"])],
            prov,
            out,
            "probe",
            [
                f"gradient SNR = ||mean g||^2 / tr Cov(g) over K = {k} minibatch gradients: pure noise gives 1/K = "
                f"{1 / k:.3g} (its noise floor); snr_unbiased subtracts it (0 = no signal)",
                "trace_cov, mean_sq_norm, norm_variance scale with each loss: shown per method, never ranked across "
                "methods (comparable = per method only)",
                "proj_snr: the cross-fitted SNR of the gradient projected on the other half's mean (mean / sd per "
                "minibatch, 0 = no signal; proj_snr_low/high its exact interval from one probe); per-step "
                "statistics in probe_steps.csv, the off-policy probe in probe_offpolicy.csv "
                "(docs/mechanisms.md#the-gradient-probe)",
            ],
        )
        probe_rows.to_csv(out / "probe_per_seed.csv", index=False)
        all_tables.append(probe_table.assign(metric="probe/" + probe_table["metric"]))
    verdict = verdicts.evaluate(cfg, verdicts.Tables(seed_rows, probe_rows, derived_rows, recursive_rows))
    vnote = (
        f"rules declared in the config (verdicts:); effect = mean(method) - mean(over) with the "
        f"{prov['interval']['description']}; p_holm: the paired t-test by seed where both ran the same seeds, else "
        "Welch's (column test), Holm-Bonferroni over the findings' lines (implementation checks apart); supported/"
        f"contradicted when p_holm < {1 - s.get('confidence', 0.95):.2g} on the registry's better/worse side; "
        "the intervals shown are per line, not adjusted, so an interval may exclude 0 where the corrected "
        "test does not reject"
    )
    frontier.write(cfg, seed_rows, s, out, lambda notes: _header(prov, "#", notes))  # bench/frontier.py
    runs = mechanisms.per_run(cfg, runs_root)  # what each method had on, and what acted (bench/mechanisms.py)
    mech = mechanisms.table(runs)
    calibrated = (cfg.get("analysis") or {}).get("learning_rates") == "calibrated"
    unbracketed = (cfg.get("analysis") or {}).get("unbracketed_rates") or ()
    named = mechanisms.confounds(mech, verdicts.primary_reward(cfg), calibrated, unbracketed)
    accepted = verdicts.acceptance(cfg, poi, named, verdict=verdict, frontier_pairs=frontier.read_pairs(out))
    if len(verdict):
        notes = [*verdicts.header_notes(cfg, poi), f"acceptance ({accepted['outcome']}): {accepted['sentence']}"]
        write_verdicts(verdict, prov, out, vnote, notes)
    head = with_optimiser_steps(headline(table, derived_rows, secs_levels, hack, verdict, s), cfg, runs_root)
    if len(mech):
        write_tables(mech, prov, out, "mechanisms", [*mechanisms.NOTES, *mechanisms.inactive(mech)])
    if len(head):
        head = head.merge(mechanisms.headline_columns(runs), on=["model", "reward", "method"], how="left")
        write_tables(
            head,
            prov,
            out,
            "headline",
            [
                "gain: held-out training reward - base at the final budget; gain_at_seconds: the same at the largest "
                "device-seconds level every finished run reached (seconds_level); change/*: final - base",
                qnote,
            ],
            shown=headline_shown(head),
        )
    table = pd.concat(all_tables)
    write_citable(cfg, prov, table, seed_rows, probe_rows, runs_root, out, derived_rows)
    return table


def recursive_tables(
    cfg: dict, runs_root: Path, out: Path, prov: dict, qnote: str = ""
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The self-consuming loop (bench/recursive.py), one variant per `recursive.variants` entry:
    recursive.csv holds every measure per variant, method and generation (0 = the run's final
    model), recursive_decay.csv each measure's decay rate (least-squares slope per generation, one
    per seed) per variant and method, both as mean over seeds with the study's interval;
    recursive_per_seed.csv the seed-level rows. Returns the first variant's seed rows (the ones the
    verdicts read) and the summary of every variant (with a `variant` column)."""
    s = _stats(cfg)
    variants = study.recursive_variants(cfg)
    per_seed, summaries = [], []
    for name in variants:
        rows = collect(cfg, runs_root, f"recursive/{name}.json")
        if rows.empty:
            continue
        per_seed.append(rows.assign(variant=name))
        summaries.append(summarise(rows, s).assign(variant=name))
    if not summaries:
        return pd.DataFrame(), pd.DataFrame()
    seed_rows, table = pd.concat(per_seed), pd.concat(summaries)
    seed_rows.to_csv(out / "recursive_per_seed.csv", index=False)
    decay = table["metric"].str.startswith(("decay/", "collapse/"))  # per loop: slopes and the collapse rule
    settings = "; ".join(
        f"{n}: {v['mode']}, real fraction {v['real_fraction']:g}, select_top {v['select_top']:g}"
        for n, v in variants.items()
    )
    first, shared = next(iter(variants)), next(iter(variants.values()))
    common = (
        f"{shared['generations']} generations of {shared['images_per_generation']} samples and "
        f"{shared['finetune_steps']} fine-tuning steps each; variants: {settings}"
    )

    def shown(part: pd.DataFrame, with_generation: bool) -> pd.DataFrame:
        value = [fmt_interval(m, lo, hi) for m, lo, hi in zip(part["mean"], part["ci_low"], part["ci_high"])]
        cols = ["variant", "model", "reward", "algorithm"] + (["budget"] if with_generation else []) + ["metric"]
        return (
            part[cols]
            .rename(columns={"budget": "generation"})
            .assign(value=value, n_seeds=part["n_seeds"], better=part["better"])
        )

    gen = table[~decay]
    write_tables(
        gen.rename(columns={"budget": "generation"}),
        prov,
        out,
        "recursive",
        [common, "generation 0 = each run's final model before the loop", qnote],
        shown=shown(gen, True),
    )
    slopes = table[decay].drop(columns="budget")
    write_tables(
        slopes,
        prov,
        out,
        "recursive_decay",
        [
            common,
            "decay/<measure>: the least-squares slope of the measure over generations 0..G, one per "
            "seed (units of the measure per generation); the registry's direction of the measure says which "
            f"sign is better; interval over seeds: {prov['interval']['description']}",
        ],
        shown=shown(slopes.assign(budget=0), False),
    )
    return seed_rows[seed_rows["variant"] == first].drop(columns="variant"), table


def write_verdicts(verdict: pd.DataFrame, prov: dict, out: Path, note: str, notes: list[str] = ()) -> None:
    atomic_write_text(
        out / "verdicts.csv", _header(prov, "#", [note, *notes]) + verdict.to_csv(index=False, float_format="%.6g")
    )
    _write_verdict_views(verdict, out, _header_lines(prov, [note, *notes]))


def _write_verdict_views(verdict: pd.DataFrame, out: Path, header: list[str]) -> None:
    """verdicts.md and verdicts.tex (write_verdicts; `rerender` from a committed verdicts.csv)."""
    text = lambda v: v if isinstance(v, str) else ""  # noqa: E731  (an empty CSV cell reads as NaN)
    lines = [
        "| claim | model / reward | vs | verdict | effect [interval] | n | p (Holm) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in verdict.itertuples():
        eff = fmt_interval(getattr(r, "effect", np.nan), r.ci_low, r.ci_high)
        n_method, n_over = getattr(r, "n_method", np.nan), getattr(r, "n_over", np.nan)
        n = (
            MISSING
            if not np.isfinite(n_method)
            else (f"{int(n_method)} vs {int(n_over)}" if np.isfinite(n_over) and n_over else f"{int(n_method)}")
        )
        lines.append(
            f"| {r.claim} | {r.model} / {r.reward} | {text(r.over)} | **{r.verdict}** | {eff} | {n} | "
            f"{_fmt(r.p_holm)} | {_md_cell(text(r.note))} |"
        )
    atomic_write_text(out / "verdicts.md", _comment(header, "<!--") + "\n" + "\n".join(lines) + "\n")
    shown = pd.DataFrame(
        {
            "claim": verdict["claim"],
            **(
                {"model / reward": verdict["model"] + " / " + verdict["reward"]}
                if verdict["model"].nunique() > 1
                else {"reward": verdict["reward"]}
            ),
            "vs": [text(v) for v in verdict["over"]],
            "verdict": verdict["verdict"],
            "effect [interval]": [
                fmt_interval(e, lo, hi) for e, lo, hi in zip(verdict["effect"], verdict["ci_low"], verdict["ci_high"])
            ],
            "p (Holm)": [_fmt(v) for v in verdict["p_holm"]],
        }
    )
    tex = [
        _comment(header, "%") + f"% needs {TEX_PACKAGES}",
        *_longtable(shown, "What the study says about each claim", _label("verdicts")),
    ]
    atomic_write_text(out / "verdicts.tex", "\n".join(tex))


def write_citable(
    cfg: dict,
    prov: dict,
    table: pd.DataFrame,
    seed_rows: pd.DataFrame,
    probe_rows: pd.DataFrame,
    runs_root: Path,
    out: Path,
    derived_rows: pd.DataFrame | None = None,
) -> None:
    """results/citable.json (format CITABLE_FORMAT, described by results/citable.schema.json):
    provenance, versions, hardware, weight hashes, every method's resolved settings, the summary
    of every table row and the per-seed value of every measured and derived quantity."""
    num = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731  (JSON has no NaN)
    per_seed: dict[str, dict] = {}
    for frame, prefix in ((seed_rows, ""), (probe_rows, "probe/"), (derived_rows, "")):
        if frame is None or frame.empty:
            continue
        for keys, g in frame.groupby(["model", "reward", "algorithm", "budget", "metric"]):
            if keys[-1].startswith(("credit_share/", "step_")):  # per-step lists: in probe_per_seed.csv
                continue
            per_seed["/".join(map(str, keys[:-1])) + f"/{prefix}{keys[-1]}"] = {
                str(int(sd)): num(v) for sd, v in zip(g["seed"], g["value"].astype(float))
            }
    ev, probe = cfg.get("evaluation", {}), cfg.get("probe", {})
    n_images = evaluated_images(cfg, runs_root)
    citable = {
        "format": CITABLE_FORMAT,
        "schema": "citable.schema.json",
        "provenance": prov,
        "versions": versions(),
        "weights": weight_hashes(cfg),
        "methods": resolved_algorithms(cfg),
        "statistics": {
            **prov["interval"],
            "seed": _stats(cfg)["seed"],
            "multiple_comparisons": "Holm-Bonferroni (pairs of one metric; all verdict lines)",
        },
        "evaluation": {
            "prompts": ev.get("prompts"),
            "max_prompts": ev.get("max_prompts"),
            "images_per_prompt": ev.get("images_per_prompt"),
            "n_images": n_images,
            "seed": ev.get("seed"),
            "feature_network": ev.get("clip_model"),
            "rewards": ev.get("rewards"),
        },
        "probe": {**probe, "noise_floor_snr": 1 / probe["minibatches"] if probe.get("minibatches") else None},
        "sampling": cfg.get("sampling"),
        "train": cfg.get("train"),
        "algorithms": cfg.get("algorithms"),
        "verdict_rules": cfg.get("verdicts"),
        "hardware": hardware(),
        "results": {
            "/".join(str(r[k]) for k in KEYS): {
                "mean": num(r["mean"]),
                "ci_low": num(r["ci_low"]),
                "ci_high": num(r["ci_high"]),
                "n_seeds": int(r["n_seeds"]),
                **({"better": r["better"]} if isinstance(r.get("better"), str) and r["better"] else {}),
            }
            for r in table.to_dict("records")
            if not str(r["metric"]).split("/")[-1].isdigit()
        },
        "per_seed": per_seed,
    }
    citable_path = out.parent / "citable.json" if out.name == "tables" else out / "citable.json"
    atomic_write_text(
        citable_path,
        dumps_json(json.loads(json.dumps(citable, default=lambda o: o.item() if hasattr(o, "item") else str(o))))
        + "\n",
    )


# ---- re-rendering committed tables ---------------------------------------------------------------

RERENDERED = ("eval", "derived", "probe", "probe_steps", "probe_offpolicy", "mechanisms", "headline", "verdicts")


def _read_csv(path: Path) -> tuple[list[str], pd.DataFrame]:
    """A table's CSV: its '# ' provenance header lines (verbatim, without '# ') and its rows."""
    text = path.read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line[2:] if line.startswith("# ") else line[1:])
    return header, pd.read_csv(path, skiprows=len(header))


def _interval_of(header: list[str], path: Path) -> str:
    """The interval's description from the header line 'mean over seeds with a <description>; ...'."""
    for line in header:
        m = re.match(r"mean over seeds with an? (.+?); rows measured once", line)
        if m:
            return m.group(1)
    raise ValueError(f"{path}: no 'mean over seeds with a ...' line in its header; not a table this harness wrote")


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rerender(folder: Path, commit: str | None = None) -> list[Path]:
    """Rewrite the .md and .tex of a study's committed tables from their CSVs with the current
    writers (for a study whose runs are gone, so `aggregate` cannot run again). The CSVs are only
    read: their numbers and headers stay as they are. Each .md/.tex keeps the CSV's provenance
    header and adds one line naming the commit of the writer that re-rendered it; a column the
    older CSV lacks shows MISSING. Returns the files written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such tables folder")
    commit = commit or _git_commit()
    written = []
    for name in RERENDERED:
        path = folder / f"{name}.csv"
        if not path.exists():
            continue
        header, table = _read_csv(path)
        interval = _interval_of(header, path)
        header = [
            *header,
            f"{name}.md and {name}.tex re-rendered from {name}.csv (numbers and header above unchanged) by the "
            f"table writer of t2i-rl-bench commit {commit} (t2i_rl_bench.tables rerender)",
        ]
        if name == "verdicts":
            _write_verdict_views(table, folder, header)
        elif name == "headline":
            _write_views(table, folder, name, header, interval, shown=headline_shown(table))
        else:
            _write_views(table, folder, name, header, interval)
        written += [folder / f"{name}.md", folder / f"{name}.tex"]
    if not written:
        raise FileNotFoundError(f"{folder}: none of {', '.join(n + '.csv' for n in RERENDERED)}")
    return written


if __name__ == "__main__":  # python -m t2i_rl_bench.tables rerender <tables folder>...
    import argparse

    parser = argparse.ArgumentParser(prog="python -m t2i_rl_bench.tables")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rerender", help="rewrite a study's .md/.tex tables from its committed CSVs")
    p.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    for f in args.folders:
        for path in rerender(f):
            print(path)
