"""The unseen-seed replication check (docs/study.md#replication-on-unseen-seeds).

A study's verdicts and significant pairwise differences are re-read on a second run of the same
design on seeds it never used. The check, one line per finding of the original study:

- every verdict line that is *supported* or *contradicted* (an implementation check included):
  the replication's effect has the same sign (it need not be significant there);
- every Holm-significant pairwise difference (improvement.csv: held-out rewards and gold
  metrics at the final budget; frontier_pairs.csv: the frontier readings): the same sign;
- every pair declared *equivalent* within its margin: the replication's difference lies inside
  the same margin.

A finding whose replication value is missing (the replication did not measure it) reads
`not measured`, never `replicated`. The outcome is written as replication.csv / replication.md
in a folder of its own, so that re-aggregating either study does not remove it.

    python -m t2i_rl_bench.replication --study results/tables \\
        --replication results/studies/replication/tables --out results/replication
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from t2i_rl_bench.io import atomic_write_text

VERDICT_KEYS = ["id", "model", "reward", "method", "over"]
PAIR_KEYS = ["model", "reward", "metric", "method", "over"]
FRONTIER_KEYS = ["model", "reward", "reading", "metric", "level", "method", "over"]
COLUMNS = ["source", "finding", "model", "reward", "study", "study_effect", "replication_effect", "outcome"]


def _read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / f"{name}.csv"
    return pd.read_csv(path, comment="#") if path.is_file() else pd.DataFrame()


def _sign_outcome(study_effect: float, repl: float) -> str:
    if not np.isfinite(repl):
        return "not measured"
    return "replicated" if np.sign(repl) == np.sign(study_effect) and repl != 0 else "not replicated"


def _margin_outcome(margin: float, repl: float) -> str:
    if not np.isfinite(repl):
        return "not measured"
    return "replicated" if abs(repl) < margin else "not replicated"


def _lookup(frame: pd.DataFrame, keys: list[str], row: pd.Series, column: str) -> float:
    if frame.empty or not set(keys) <= set(frame.columns):
        return float("nan")
    match = frame
    for k in keys:
        match = match[match[k].astype(str) == str(row[k])]
    values = pd.to_numeric(match[column], errors="coerce").dropna() if column in match else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else float("nan")


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    """improvement.csv at each model x reward's final budget (the comparison the headline reads)."""
    if frame.empty:
        return frame
    last = frame.groupby(["model", "reward"])["budget"].transform("max")
    return frame[frame["budget"] == last]


def compare(study: str | Path, replication: str | Path) -> pd.DataFrame:
    """One row per finding of the study's tables (folder `study`) re-read in the replication's."""
    study, replication = Path(study), Path(replication)
    rows = []
    verdicts, rep_verdicts = _read(study, "verdicts"), _read(replication, "verdicts")
    for _, r in verdicts.iterrows() if not verdicts.empty else ():
        if r["verdict"] not in ("supported", "contradicted", "equivalent"):
            continue
        repl = _lookup(rep_verdicts, VERDICT_KEYS, r, "effect")
        if r["verdict"] == "equivalent":
            outcome = _margin_outcome(float(r["margin"]), repl)
        else:
            outcome = _sign_outcome(float(r["effect"]), repl)
        rows.append(
            {
                "source": "verdict",
                "finding": f"{r['id']}: {r['method']} vs {r['over']} ({r.get('kind', 'finding')})",
                "model": r["model"],
                "reward": r["reward"],
                "study": r["verdict"],
                "study_effect": float(r["effect"]),
                "replication_effect": repl,
                "outcome": outcome,
            }
        )
    pairs, rep_pairs = _final(_read(study, "improvement")), _final(_read(replication, "improvement"))
    for _, r in pairs.iterrows() if not pairs.empty else ():
        if not (bool(r["significant"]) or bool(r.get("equivalent", False))) or r["method"] > r["over"]:
            continue  # each pair once (both orders are in the table)
        repl = _lookup(rep_pairs, PAIR_KEYS, r, "difference")
        if bool(r["significant"]):
            status, outcome = "significant", _sign_outcome(float(r["difference"]), repl)
        else:
            margin = float(r["margin"])
            status = f"equivalent within {margin:g}"
            outcome = _margin_outcome(margin, repl)
        rows.append(
            {
                "source": "pairwise",
                "finding": f"{r['metric']}: {r['method']} - {r['over']}",
                "model": r["model"],
                "reward": r["reward"],
                "study": status,
                "study_effect": float(r["difference"]),
                "replication_effect": repl,
                "outcome": outcome,
            }
        )
    frontier, rep_frontier = _read(study, "frontier_pairs"), _read(replication, "frontier_pairs")
    for _, r in frontier.iterrows() if not frontier.empty else ():
        if not bool(r["significant"]) or r["method"] > r["over"]:
            continue
        repl = _lookup(rep_frontier, FRONTIER_KEYS, r, "difference")
        rows.append(
            {
                "source": "frontier",
                "finding": f"{r['reading']} {r['metric']} at {r['level']:g}: {r['method']} - {r['over']}",
                "model": r["model"],
                "reward": r["reward"],
                "study": "significant",
                "study_effect": float(r["difference"]),
                "replication_effect": repl,
                "outcome": _sign_outcome(float(r["difference"]), repl),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def render(table: pd.DataFrame, study: str, replication: str) -> str:
    """The Markdown view: a one-line summary, then one row per finding."""
    n = len(table)
    ok = int((table["outcome"] == "replicated").sum()) if n else 0
    lines = [
        "# Replication on unseen seeds",
        "",
        f"Study tables: `{study}`; replication tables: `{replication}` (the same design on seeds the study never "
        "used, docs/study.md#replication-on-unseen-seeds).",
        "",
        f"**{ok} of {n} findings replicated** (the same sign; an equivalence: inside the same margin)."
        if n
        else "**The study has no supported, contradicted, equivalent or significant finding to replicate.**",
        "",
    ]
    if n:
        lines += ["| source | finding | model | reward | study | effect (study) | effect (replication) | outcome |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for _, r in table.iterrows():
            repl = f"{r['replication_effect']:.3g}" if np.isfinite(r["replication_effect"]) else "--"
            lines.append(
                f"| {r['source']} | {r['finding']} | {r['model']} | {r['reward']} | {r['study']} | "
                f"{r['study_effect']:.3g} | {repl} | {r['outcome']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i_rl_bench.replication", description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True, help="the study's tables folder")
    parser.add_argument("--replication", required=True, help="the replication's tables folder")
    parser.add_argument("--out", required=True, help="folder for replication.csv and replication.md")
    args = parser.parse_args(argv)
    for name in ("study", "replication"):
        if not (Path(getattr(args, name)) / "verdicts.csv").is_file():
            parser.error(f"--{name} {getattr(args, name)}: no verdicts.csv there (run and aggregate that study first)")
    table = compare(args.study, args.replication)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "replication.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "replication.md", render(table, args.study, args.replication))
    print(render(table, args.study, args.replication).split("\n")[4])
    return 0


if __name__ == "__main__":
    sys.exit(main())
