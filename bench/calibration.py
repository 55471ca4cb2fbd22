"""Learning-rate calibration: one protocol, applied equally to every method
(docs/study.md#calibration).

A study calibrates when it runs one method under several labels that differ only in their own
learning rate (`algorithms.<label>: {plugin: <method>, lr: ...}`, config/calibration.yaml). Each
run has one score (`analysis.calibration_score`): `training`, its mean training reward over all its
rounds (fast and durable learning both count; a rate that learns and then collapses loses), or
`evaluation`, the mean of its evaluation reward over the calibration's budgets (the same, read at
the study's evaluation sampler, one for every method, and on the evaluation's prompts; a preset
that scores this way evaluates on the training prompts, config/calibration_ode.yaml, so no rate is
chosen on the prompts a study reports). For each method the rule takes, among the rates whose
score (mean over the calibration seeds) lies within one standard error of the best rate's score
(the one-standard-error rule, Breiman et al. 1984), the lowest: a tie within noise goes to the
gentler rate, never to the last decimal of one seed. The chosen rate is *bracketed* when the grid
has a rate on either side of it; one at an edge of the grid is flagged, and the grid must be
extended on that side before the rate is used. The recommended final budget is the first
calibration budget after every method's peak: each chosen rate's held-out reward (mean over the
seeds) peaks at some budget, and the study must train past the latest of those peaks; None when
a curve peaks at the calibration's last budget (train the calibration longer). Both rules read
only the calibration study's own seeds (never the study's) and treat every method alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from t2i_rl_bench import study

SCORES = {
    "training": "mean training reward over all its rounds",
    "evaluation": "mean evaluation reward over the calibration's budgets",
}


def selection_rule(score: str = "training", prompts: str = "heldout") -> str:
    """The rule as the calibration table's header states it."""
    return (
        f"per method, the lowest learning rate whose {SCORES[score]} (mean over the calibration seeds) is within "
        "one standard error (over those seeds) of the best rate's; bracketed: a grid rate lies on each side of the "
        "chosen one (else extend the grid on the flagged side); recommended final budget: the first calibration "
        f"budget after the latest budget at which a chosen rate's evaluation reward ({prompts} prompts) peaks"
    )


SELECTION_RULE = selection_rule()  # the committed calibrations' rule


@dataclass(frozen=True)
class GridPoint:
    label: str  # the config label (a run folder)
    method: str  # the registered algorithm it runs
    lr: float


def lr_grid(cfg: dict) -> dict[str, list[GridPoint]]:
    """Methods that the study runs at two or more learning rates, each with its grid points
    (labels without their own `lr` run at `train.lr`); in a study that declares a calibration
    score (`analysis.calibration_score`), every method, so that a calibration that trains the
    chosen rates longer (config/calibration_long.yaml) reads its final budget."""
    by_method: dict[str, list[GridPoint]] = {}
    for label, settings in cfg["algorithms"].items():
        settings = settings or {}
        lr = float(settings.get("lr", cfg["train"].get("lr", 3e-4)))
        method = settings.get("plugin", label)
        by_method.setdefault(method, []).append(GridPoint(label, method, lr))
    declared = "calibration_score" in (cfg.get("analysis") or {})
    return {
        m: sorted(pts, key=lambda p: p.lr) for m, pts in by_method.items() if declared or len({p.lr for p in pts}) > 1
    }


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


def score_kind(cfg: dict) -> str:
    return str(cfg.get("analysis", {}).get("calibration_score", "training"))


def curve_prefix(cfg: dict) -> str:
    """The evaluation curve's column prefix: the evaluation's prompt set (`heldout_512`, `train_512`)."""
    return str(cfg.get("evaluation", {}).get("prompts", "heldout"))


def curve_columns(columns) -> list[str]:
    """The evaluation curve's columns of a calibration table, in budget order."""
    found = [c for c in columns if re.fullmatch(r"(heldout|train)_\d+", str(c))]
    return sorted(found, key=lambda c: int(c.rsplit("_", 1)[1]))


def calibrate(cfg: dict, runs_root: Path, seed_rows: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """One row per grid point: mean training reward, the evaluation reward at each budget (mean over
    the calibration seeds; columns named by the evaluation's prompt set), the rule's score and its
    standard error, and whether the rule chose it; plus the recommended final budget (None without a
    grid)."""
    return grid_table(grid_per_seed(cfg, runs_root, seed_rows), grid_budgets(cfg), curve_prefix(cfg))


def grid_budgets(cfg: dict) -> list[int]:
    return sorted(int(b) for b in cfg["train"]["budgets"])


def grid_per_seed(cfg: dict, runs_root: Path, seed_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point and seed: its mean training reward, its evaluation curve and the rule's
    score (the aggregate writes it as calibration_per_seed.csv, so a reading on fewer seeds can be
    recomputed from the tables: `grid_table` on its rows)."""
    grid = lr_grid(cfg)
    if not grid:
        return pd.DataFrame()
    kind = score_kind(cfg)
    if kind not in SCORES:
        raise ValueError(f"analysis.calibration_score: {kind!r} is not one of {sorted(SCORES)}")
    prefix = curve_prefix(cfg)
    budgets = grid_budgets(cfg)
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
                **{f"{prefix}_{b}": float(held.get(b, np.nan)) for b in [0, *budgets]},
            }
        )
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        return per_seed
    if kind == "training":
        per_seed["score"] = per_seed["mean_train_reward"]
    else:  # the mean over the trained budgets (budget 0 is the base, the same for every rate)
        per_seed["score"] = per_seed[[f"{prefix}_{b}" for b in budgets]].to_numpy(dtype=float).mean(axis=1)
    return per_seed


def grid_table(per_seed: pd.DataFrame, budgets: list[int], prefix: str) -> tuple[pd.DataFrame, int | None]:
    """`calibrate`'s table from the per-seed rows of `grid_per_seed` (all of them, or some seeds')."""
    if per_seed.empty:
        return per_seed, None
    keys = ["model", "reward", "method", "label", "lr"]
    table = per_seed.drop(columns="seed").groupby(keys, as_index=False).mean(numeric_only=True)

    def se(column: str) -> np.ndarray:
        spread = per_seed.groupby(keys)[column].agg(lambda v: v.std(ddof=1) / np.sqrt(v.notna().sum()))
        return table.set_index(keys).index.map(spread).to_numpy(dtype=float)

    table["train_reward_se"] = se("mean_train_reward")
    table["score_se"] = se("score")
    table["n_seeds"] = table.set_index(keys).index.map(per_seed.groupby(keys)["seed"].nunique()).to_numpy()
    table["chosen"] = False
    table["edge"] = ""
    for _, part in table.groupby(["model", "reward", "method"]):
        label = choose(part, "score", "score_se")
        if label is None:
            continue
        i = part.index[part["label"] == label][0]
        table.loc[i, "chosen"] = True
        lrs = part["lr"].to_numpy(dtype=float)
        lr = float(table.loc[i, "lr"])
        if len(set(lrs)) == 1:  # one rate: no bracket here (its grid is another calibration's)
            table.loc[i, "edge"] = "single rate"
        else:
            table.loc[i, "edge"] = "lowest" if lr <= lrs.min() else ("highest" if lr >= lrs.max() else "")
    table["bracketed"] = table["chosen"] & (table["edge"] == "")
    table = table.sort_values(["model", "reward", "method", "lr"]).reset_index(drop=True)
    return table, final_budget(table, budgets, prefix)


def choose(part: pd.DataFrame, score: str = "mean_train_reward", se_column: str = "train_reward_se") -> str | None:
    """The one-standard-error rule on one method's grid points (columns label, lr, the score and
    its standard error): the lowest rate within one standard error of the best (the best's own se;
    NaN with one seed: the best itself)."""
    scored = part[part[score].notna()]
    if scored.empty:
        return None
    best = scored.loc[scored[score].idxmax()]
    se = float(best[se_column]) if np.isfinite(best[se_column]) else 0.0
    close = scored[scored[score] >= best[score] - se]
    return str(close.sort_values("lr").iloc[0]["label"])


def final_budget(table: pd.DataFrame, budgets: list[int], prefix: str = "heldout") -> int | None:
    """The first calibration budget after the latest peak of the chosen rates' evaluation curves;
    None when some curve peaks at the last budget (it has not been passed) or there is none."""
    chosen = table[table["chosen"]]
    peaks = []
    for _, row in chosen.iterrows():
        curve = row[[f"{prefix}_{b}" for b in budgets]].to_numpy(dtype=float)
        if np.isfinite(curve).any():
            peaks.append(int(np.nanargmax(curve)))
    if not peaks or max(peaks) + 1 >= len(budgets):
        return None
    return budgets[max(peaks) + 1]
