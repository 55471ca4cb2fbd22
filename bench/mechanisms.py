"""The mechanism table: per method, which of the mechanisms that tell the RL methods apart are on
in the study's runs (read from each run's resolved settings: run_config.json and the algorithm's
recipe and loss settings in summary.json), and whether each was *active* in training (read from
the run's log.jsonl). A mechanism that is on but never acts (a clip range nothing reaches, an
importance ratio that stays 1, a KL term that stays 0) cannot explain a difference between
methods, and a study whose methods all have the same active mechanisms compares one method with
itself (docs/study.md#the-mechanism-table).

Rows: one per (model, training reward, method), over its seeds. Columns, on / active:

- advantage: the recipe's baseline (per_prompt tracker, group, leave-one-out, none = raw rewards)
- updates: optimiser steps per round (updates_per_round x inner_epochs); importance sampling is
  on when a round takes more than one step (its later steps see ratios != 1), active when the
  mean |log rho| on those later steps is above float noise (`logratio_abs_later`)
- clip: the loss's clip range; active when the clipped fraction is > 0 in the log (`clipfrac`)
- step weighting: per-step loss multipliers (PCPO); active when they differ between trained steps
  (coefficient of variation > 1e-3, computed from the run's sampler and settings)
- KL / reference: a reference-policy term (PRDP's implied reward, Flow-GRPO's kl_beta); active
  when |log p - log p_ref| (`ref_logratio_abs`) or the KL (`kl_ref`) is > 0
- SDE: the sampler's variant and noise level; on when eta > 0
- trained steps: sampler steps trained per sample (`trained_steps_per_sample`) of the schedule
- lr, optimiser steps per run (summed over the log), lr x steps, CPU seconds of the training
  process (`seconds_cpu` per round, summed; wall-clock seconds on a shared machine vary with the
  neighbours' load, CPU time much less).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from t2i_rl_bench import study

NOISE = 1e-9  # |log rho| below this is float rounding, not a moved policy
VARIES = 1e-3  # coefficient of variation above which per-step weights count as non-constant


def _log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue  # a line cut short by a kill: the others still count
    return lines


def _mean(lines: list[dict], key: str) -> float:
    values = [float(x[key]) for x in lines if isinstance(x.get(key), int | float) and np.isfinite(x[key])]
    return float(np.mean(values)) if values else float("nan")


def _total(lines: list[dict], key: str) -> float:
    values = [float(x[key]) for x in lines if isinstance(x.get(key), int | float)]
    return float(np.sum(values)) if values else float("nan")


_WEIGHTS: dict[str, float] = {}


def step_weight_cv(spec_dict: dict) -> float:
    """Coefficient of variation of the algorithm's per-step loss multipliers over the steps it
    trains (PCPO's `multipliers`), from the run's resolved settings; 0 for an algorithm without
    any; NaN when the model cannot be opened here."""
    key = json.dumps({k: v for k, v in spec_dict.items() if k != "prompts"}, sort_keys=True, default=str)
    if key in _WEIGHTS:
        return _WEIGHTS[key]
    try:
        from t2i_rl_bench.factory import open_algorithm, open_sampler
        from t2i_rl_bench.models.policy import Policy
        from t2i_rl_bench.spec import RunSpec

        spec = RunSpec.from_dict(spec_dict)
        algorithm = open_algorithm(spec)
        sampler = open_sampler(spec, Policy.load(spec.model_path, **spec.model_options), algorithm)
        algorithm.setup(sampler)
        m = getattr(algorithm, "multipliers", None)
        if m is None:
            cv = 0.0
        else:
            w = np.asarray(m, dtype=float)
            if algorithm.recipe.drop_last_step:
                w = w[:-1]
            cv = float(np.std(w) / abs(np.mean(w))) if w.size and np.mean(w) else 0.0
    except Exception:  # noqa: BLE001  (a diagnostic: a model not here leaves the cell unknown)
        cv = float("nan")
    _WEIGHTS[key] = cv
    return cv


def run_row(run: Path) -> dict[str, Any] | None:
    """One run's mechanisms (settings) and their activity (log), or None without its files."""
    try:
        spec = json.loads((run / "run_config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    settings = summary.get("settings") or {}
    lines = _log(run)
    updates = int(settings.get("updates_per_round", 1)) * int(settings.get("inner_epochs", 1))
    clip = settings.get("clip_range")
    beta = settings.get("beta") if "beta" in settings else settings.get("kl_beta")
    steps = _total(lines, "optimiser_steps")
    weight_cv = step_weight_cv(spec) if "credit" in settings else 0.0
    window = spec.get("sde_window") or spec.get("sde_window_range")
    later = _mean(lines, "logratio_abs_later")
    ref = max(_mean(lines, "ref_logratio_abs"), _mean(lines, "kl_ref"), key=lambda v: -1 if np.isnan(v) else v)
    return {
        "status": summary.get("status"),
        "advantage": settings.get("advantages", ""),
        "tracker_min_count": settings.get("tracker_min_count"),
        "group_size": settings.get("group_size") or spec.get("group_size"),
        "updates_per_round": updates,
        "importance_sampling": updates > 1,
        "is_active": float(later > NOISE) if np.isfinite(later) else float("nan"),  # NaN: not logged
        "logratio_abs_later": later,
        "clip_range": clip if clip is not None else float("nan"),
        "clip_active": float(_mean(lines, "clipfrac") > 0) if np.isfinite(_mean(lines, "clipfrac")) else float("nan"),
        "clipfrac": _mean(lines, "clipfrac"),
        "step_weighting": settings.get("credit", "none"),
        "step_weight_cv": weight_cv,
        "step_weight_active": bool(np.isfinite(weight_cv) and weight_cv > VARIES),
        "kl_reference": float(beta) if beta else 0.0,
        "kl_active": (float(ref > NOISE) if np.isfinite(ref) else float("nan")) if beta else 0.0,
        "ref_logratio_abs": ref,
        "sde": f"{spec.get('flow_variant') or 'ddim'} eta {spec.get('eta')}" + (f" window {window}" if window else ""),
        "sde_active": bool(spec.get("eta") and float(spec["eta"]) > 0),
        "trained_steps": _mean(lines, "trained_steps_per_sample"),
        "sampler_steps": spec.get("num_steps"),
        "lr": float(spec.get("lr", float("nan"))),
        "optimiser_steps": steps,
        "lr_x_steps": float(spec.get("lr", float("nan"))) * steps,
        "cpu_seconds": _total(lines, "seconds_cpu"),
        "wall_seconds": summary.get("device_seconds", float("nan")),
        "images": summary.get("images_seen"),
    }


def per_run(cfg: dict, runs_root: Path) -> pd.DataFrame:
    """One row per run of the study that has its files."""
    rows = []
    for key in study.runs(cfg):
        row = run_row(runs_root / key.path)
        if row is not None:
            rows.append({"model": key.model, "reward": key.reward, "algorithm": key.algorithm, "seed": key.seed, **row})
    return pd.DataFrame(rows)


ON_OFF = (
    ("importance_sampling", "is_active", "IS (ratios != 1 on later updates)"),
    ("clip_range", "clip_active", "clip"),
    ("step_weighting", "step_weight_active", "step weights vary"),
    ("kl_reference", "kl_active", "KL / reference term"),
    ("sde", "sde_active", "SDE"),
)


def _is_on(setting: str, value: Any) -> bool:
    if setting == "importance_sampling":
        return bool(value)
    if setting == "step_weighting":
        return value not in ("none", None, "")
    if setting in ("clip_range", "kl_reference"):
        return bool(np.isfinite(value) and value > 0)
    return True


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (model, reward, method): each mechanism's setting and on how many seeds it was active;
    the optimisation columns as means over seeds."""
    if runs.empty:
        return runs
    out = []
    for (model, reward, algo), part in runs.groupby(["model", "reward", "algorithm"], sort=True):
        first = part.iloc[0]
        n = len(part)
        row: dict[str, Any] = {"model": model, "reward": reward, "method": algo, "n_runs": n}
        row["advantage"] = first["advantage"] + (
            f" (min_count {int(first['tracker_min_count'])})"
            if first["advantage"] == "per_prompt" and pd.notna(first["tracker_min_count"])
            else ""
        )
        row["updates_per_round"] = int(first["updates_per_round"])
        for setting, active, name in ON_OFF:
            value = first[setting]
            on = _is_on(setting, value)
            shown = {"importance_sampling": "on" if on else "off"}.get(setting, value)
            if setting in ("clip_range", "kl_reference") and not on:
                shown = "off"
            known = pd.to_numeric(part[active], errors="coerce").dropna()
            if not on:
                row[name] = "off"
            elif known.empty:
                row[name] = f"{shown}; not logged"
            else:
                row[name] = f"{shown}; active {int(known.sum())}/{len(known)}"
        row["trained steps"] = f"{first['trained_steps']:.3g} of {first['sampler_steps']}"
        for col in ("lr", "optimiser_steps", "lr_x_steps", "cpu_seconds", "wall_seconds", "clipfrac"):
            row[col] = float(pd.to_numeric(part[col], errors="coerce").mean())
        row["logratio_abs_later"] = float(pd.to_numeric(part["logratio_abs_later"], errors="coerce").mean())
        row["step_weight_cv"] = float(pd.to_numeric(part["step_weight_cv"], errors="coerce").mean())
        row["ref_logratio_abs"] = float(pd.to_numeric(part["ref_logratio_abs"], errors="coerce").mean())
        out.append(row)
    return pd.DataFrame(out)


def inactive(mech: pd.DataFrame) -> list[str]:
    """Mechanisms that are on but were not active on every seed: each a sentence for the report
    (such a mechanism cannot explain a difference between methods)."""
    notes = []
    for r in mech.to_dict("records"):
        for _, _, name in ON_OFF:
            cell = str(r.get(name, "off"))
            if cell == "off" or "active" not in cell:
                continue
            k, n = cell.rsplit("active ", 1)[1].split("/")
            if int(k) < int(n):
                notes.append(f"{r['method']} ({r['reward']}): {name} is on but active on {k} of {n} seeds")
    return notes


NOTES = [
    "on: the run's resolved settings (run_config.json, summary.json); active k/n: on k of n seeds the training log "
    "shows the mechanism acting: clipped fraction > 0; mean |log rho| on a round's later optimiser steps > 1e-9; "
    "per-step weights with a coefficient of variation > 1e-3; |log p - log p_ref| (or the KL) > 1e-9; eta > 0",
    "optimiser_steps: per run, summed over the log; lr_x_steps: lr x optimiser_steps; cpu_seconds: the training "
    "process's CPU time (time.process_time, all threads), wall_seconds: its wall-clock time",
]


def headline_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (model, reward, method): mean optimiser steps, lr x steps and CPU seconds per run (the
    headline's optimisation columns)."""
    if runs.empty:
        return pd.DataFrame(columns=["model", "reward", "method", "optimiser_steps", "lr_x_steps", "cpu_seconds"])
    cols = ["optimiser_steps", "lr_x_steps", "cpu_seconds"]
    frame = runs[["model", "reward", "algorithm", *cols]].copy()
    frame[cols] = frame[cols].apply(pd.to_numeric, errors="coerce")
    return (
        frame.groupby(["model", "reward", "algorithm"], as_index=False)[cols]
        .mean()
        .rename(columns={"algorithm": "method"})
    )


SHOWN = [
    "method",
    "advantage",
    "updates_per_round",
    *[name for _, _, name in ON_OFF],
    "trained steps",
    "lr",
    "optimiser_steps",
    "lr_x_steps",
    "cpu_seconds",
]


def section(tables: Path) -> str:
    """The report's section: the mechanism table per (model, reward) with its notes; '' when the
    study wrote none."""
    import html

    path = Path(tables) / "mechanisms.csv"
    if not path.is_file():
        return ""
    text = path.read_text().splitlines()
    notes = [line[2:] for line in text if line.startswith("# ") and ("active" in line or "optimiser_steps" in line)]
    frame = pd.read_csv(path, comment="#")
    parts = [
        "<h2>Mechanisms: what each method had on, and what acted</h2>",
        *(f"<p><small>{html.escape(n)}</small></p>" for n in notes),
    ]
    for (model, reward), part in frame.groupby(["model", "reward"]):
        cols = [c for c in SHOWN if c in part.columns]
        parts.append(f"<h3>{html.escape(str(model))} / {html.escape(str(reward))}</h3>")
        parts.append(part[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
    return "\n".join(parts)


def confounds(
    mech: pd.DataFrame, reward: str, rates_calibrated: bool = False, unbracketed: Iterable[str] = ()
) -> dict[tuple[str, str], str]:
    """Pairs of methods (sorted) on `reward` for which a mechanism that both have on acted on
    every seed of one and on no seed of the other: a difference between them may come from that
    mechanism's activity, not from the methods' design (the acceptance rule's named confounds).
    Unless the study declares its learning rates calibrated (`analysis.learning_rates`), a pair
    trained at different rates also names the learning rate: the difference may be the rate's
    (docs/study.md#calibration); with calibrated rates, so does a pair with a method in
    `unbracketed` (its chosen rate sits at an edge of the calibration grid)."""
    out: dict[tuple[str, str], str] = {}
    if mech is None or mech.empty:
        return out
    part = mech[mech["reward"] == reward].set_index("method")
    edge = {str(m) for m in unbracketed}
    if "lr" in part:
        lrs = pd.to_numeric(part["lr"], errors="coerce")
        methods = sorted(str(m) for m in part.index)
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                la, lb = float(lrs.get(a, float("nan"))), float(lrs.get(b, float("nan")))
                if not (la == la and lb == lb) or np.isclose(la, lb, rtol=1e-6, atol=0):
                    continue
                if not rates_calibrated:
                    why = "rates not declared calibrated"
                elif edge & {a, b}:
                    why = " and ".join(sorted(edge & {a, b})) + "'s rate not bracketed by the calibration"
                else:
                    continue
                out[(a, b)] = f"learning rate ({a} {la:g}, {b} {lb:g}; {why})"
    state: dict[str, dict[str, str]] = {}
    for method, row in part.iterrows():
        state[str(method)] = {}
        for _, _, name in ON_OFF:
            cell = str(row.get(name, "off"))
            if "active " in cell:
                k, n = cell.rsplit("active ", 1)[1].split("/")
                state[str(method)][name] = "all" if int(k) == int(n) and int(n) else ("none" if int(k) == 0 else "some")
    methods = sorted(state)
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            split = [
                name for name in state[a] if name in state[b] and {state[a][name], state[b][name]} == {"all", "none"}
            ]
            if split:
                named = "; ".join(f"{name} active in {a if state[a][name] == 'all' else b} only" for name in split)
                out[(a, b)] = f"{out[(a, b)]}; {named}" if (a, b) in out else named
    return out
