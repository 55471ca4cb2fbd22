"""Learning-rate calibration: one protocol, applied equally to every method.

A study calibrates when it runs one method under several labels that differ only in their own
learning rate (`algorithms.<label>: {plugin: <method>, lr: ...}`, config/calibration.yaml). For
each such method the rule picks the rate whose run has the highest mean training reward over all
its rounds (fast and durable learning both count; a rate that learns and then collapses loses).
The study's recommended final budget is the budget at which the held-out training reward of the
chosen rates, averaged over the methods, is highest: where the curves bend. Both rules read only
the calibration study's own seeds (never the default study's) and treat every method alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from t2i_rl_bench import study

SELECTION_RULE = (
    "per method, the learning rate with the highest mean training reward over all its rounds (mean over "
    "the calibration seeds); recommended final budget: the budget at which the held-out training reward "
    "of the chosen rates, averaged over the methods, is highest"
)


@dataclass(frozen=True)
class GridPoint:
    label: str  # the config label (a run folder)
    method: str  # the registered algorithm it runs
    lr: float


def lr_grid(cfg: dict) -> dict[str, list[GridPoint]]:
    """Methods that the study runs at two or more learning rates, each with its grid points
    (labels without their own `lr` run at `train.lr`)."""
    by_method: dict[str, list[GridPoint]] = {}
    for label, settings in cfg["algorithms"].items():
        settings = settings or {}
        lr = float(settings.get("lr", cfg["train"].get("lr", 3e-4)))
        method = settings.get("plugin", label)
        by_method.setdefault(method, []).append(GridPoint(label, method, lr))
    return {m: sorted(pts, key=lambda p: p.lr) for m, pts in by_method.items() if len({p.lr for p in pts}) > 1}


def training_reward(run_dir: Path) -> float:
    """Mean of the per-round training reward (log.jsonl's reward_mean) over the run's rounds."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return float("nan")
    values = [json.loads(line).get("reward_mean") for line in log.read_text().splitlines() if line.strip()]
    finite = [v for v in values if isinstance(v, int | float) and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def training_curve(run_dir: Path) -> pd.DataFrame:
    """images_seen and reward_mean per round."""
    log = run_dir / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return pd.DataFrame(
        [(r["images_seen"], r.get("reward_mean")) for r in rows if "images_seen" in r],
        columns=["images_seen", "reward_mean"],
    )


def calibrate(cfg: dict, runs_root: Path, seed_rows: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """One row per grid point: mean training reward, held-out training reward at each budget (mean
    over the calibration seeds), and whether the rule chose it; plus the recommended final budget
    (None without a grid)."""
    grid = lr_grid(cfg)
    if not grid:
        return pd.DataFrame(), None
    budgets = sorted(int(b) for b in cfg["train"]["budgets"])
    rows = []
    for key in study.runs(cfg):
        point = next((p for pts in grid.values() for p in pts if p.label == key.algorithm), None)
        if point is None:
            continue
        held = seed_rows[
            (seed_rows["algorithm"] == key.algorithm)
            & (seed_rows["seed"] == key.seed)
            & (seed_rows["reward"] == key.reward)
            & (seed_rows["metric"] == f"reward/{key.reward}")
        ].set_index("budget")["value"]
        rows.append(
            {
                "model": key.model,
                "reward": key.reward,
                "method": point.method,
                "label": point.label,
                "lr": point.lr,
                "seed": key.seed,
                "mean_train_reward": training_reward(runs_root / key.path),
                **{f"heldout_{b}": float(held.get(b, np.nan)) for b in [0, *budgets]},
            }
        )
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        return per_seed, None
    table = (
        per_seed.drop(columns="seed")
        .groupby(["model", "reward", "method", "label", "lr"], as_index=False)
        .mean(numeric_only=True)
    )
    table["chosen"] = False
    for _, part in table.groupby(["model", "reward", "method"]):
        if part["mean_train_reward"].notna().any():
            table.loc[part["mean_train_reward"].idxmax(), "chosen"] = True
    chosen = table[table["chosen"]]
    curve = chosen[[f"heldout_{b}" for b in budgets]].mean()
    final = budgets[int(np.nanargmax(curve.to_numpy()))] if curve.notna().any() else None
    return table.sort_values(["model", "reward", "method", "lr"]).reset_index(drop=True), final
