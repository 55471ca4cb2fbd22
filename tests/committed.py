"""Readers of the committed tables and docs, shared by the tests that recompute the docs' and the README's numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from t2i_rl_bench.metrics import statistics

ROOT = Path(__file__).resolve().parents[1]


def docs_section(heading: str) -> str:
    """A docs/study.md section (from its heading to the next one of its level), whitespace collapsed."""
    level = heading.split(" ", 1)[0]
    text = (ROOT / "docs" / "study.md").read_text()
    return " ".join(text.split(heading + "\n", 1)[1].split(f"\n{level} ", 1)[0].split())


def final_pairs(folder: Path, reward: str) -> pd.DataFrame:
    """A study's pairwise rows of held-out `reward` at its final budget (improvement.csv)."""
    rows = pd.read_csv(folder / "improvement.csv", comment="#")
    rows = rows[(rows["reward"] == reward) & (rows["metric"] == f"reward/{reward}")]
    return rows[rows["budget"] == rows["budget"].max()]


def pcpo_gain_holm_without_dancegrpos_line(verdicts: pd.DataFrame) -> float:
    """pcpo_gain's Holm p over a verdict table's findings without prdp_frontier vs DanceGRPO, the line that had
    no value while DanceGRPO sampled at 0.7 (docs/study.md#statistics): the default's Holm family before."""
    findings = verdicts[verdicts["kind"] == "finding"]
    kept = findings[~((findings["id"] == "prdp_frontier") & (findings["over"] == "dancegrpo"))]
    ids = list(zip(kept["id"], kept["reward"]))
    return float(statistics.holm(kept["p_value"].to_numpy())[ids.index(("pcpo_gain", "shape_iou"))])
