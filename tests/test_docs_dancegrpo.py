"""docs/study.md#dancegrpos-noise-level: its calibration table is the committed tables'. Each cell (a mean
over seeds of the training reward or of the evaluation score at one rate) and each reading's choice are
recomputed here, by the calibration's own rule (bench/calibration.py), from calibration_dancegrpo's per-seed
rows (eta 0.3) and the eta-0.7 calibrations' tables (calibration_ode: seeds 100-101; calibration_ode4: four)."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from committed import docs_section, final_pairs, pcpo_gain_holm_without_dancegrpos_line
from scipy import stats

from t2i_rl_bench import calibration

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "results" / "studies"
RATES = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)


def rate(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


SCORES = {"training reward": ("mean_train_reward", "train_reward_se"), "evaluation score": ("score", "score_se")}


def _read(study: str, name: str) -> pd.DataFrame:
    frame = pd.read_csv(TABLES / study / "tables" / name, comment="#")
    return frame[frame["method"] == "dancegrpo"].reset_index(drop=True)


NOISE_LEVEL = "### DanceGRPO's noise level"
NOISE_LEVEL_STUDY = "## The default study with DanceGRPO at its own noise level"


def _paired(arm: tuple[str, str], against: tuple[str, str]) -> tuple[float, float, float]:
    """Mean and 95% t interval over seeds of the 512-image held-out shape_iou gain, arm minus `against`, each
    given as (study, the arm's label there)."""

    def gain(study: str, label: str) -> pd.Series:
        f = pd.read_csv(TABLES / study / "tables" / "eval_per_seed.csv", comment="#")
        f = f[(f["algorithm"] == label) & (f["metric"] == "reward/shape_iou")]
        f = f.pivot_table(index="seed", columns="budget", values="value")
        return f[512] - f[0]

    d = gain(*arm) - gain(*against)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def _grids() -> dict[tuple[float, str], pd.DataFrame]:
    """(eta, seeds) -> DanceGRPO's calibration table at that noise level on those seeds."""
    per_seed = _read("calibration_dancegrpo", "calibration_per_seed.csv")
    budgets, prefix = [128, 256, 384, 512, 768], "train"
    two = per_seed[per_seed["seed"].isin([100, 101])].reset_index(drop=True)
    return {
        (0.7, "100-101"): _read("calibration_ode", "calibration.csv"),
        (0.3, "100-101"): calibration.grid_table(two, budgets, prefix)[0],
        (0.7, "100-103"): _read("calibration_ode4", "calibration.csv"),
        (0.3, "100-103"): calibration.grid_table(per_seed, budgets, prefix)[0],
    }


def calibration_table() -> str:
    """The docs table, as markdown: one row per score, noise level and seed set; the chosen rate in bold."""
    lines = [
        "| score | eta | seeds | " + " | ".join(rate(r) for r in RATES) + " | chosen |",
        "|---" * (len(RATES) + 4) + "|",
    ]
    for name, (score, se) in SCORES.items():
        for (eta, seeds), table in _grids().items():
            chosen = calibration.choose(table, score, se)
            by_lr = table.set_index("lr")
            pick = float(by_lr.index[table["label"] == chosen][0])
            cells = [("--" if lr not in by_lr.index else f"{by_lr.loc[lr, score]:.4f}") for lr in RATES]
            cells = [f"**{c}**" if lr == pick else c for lr, c in zip(RATES, cells)]
            lrs = sorted(by_lr.index)
            edge = "lowest edge" if pick == lrs[0] else ("highest edge" if pick == lrs[-1] else "bracketed")
            lines.append(f"| {name} | {eta:g} | {seeds} | " + " | ".join(cells) + f" | {rate(pick)}, {edge} |")
    return "\n".join(lines)


def test_the_dancegrpo_calibration_table_is_the_committed_tables():
    assert " ".join(calibration_table().split()) in docs_section(NOISE_LEVEL)


def test_every_reading_at_eta_0_3_brackets_and_every_reading_at_0_7_but_one_does_not():
    """The finding the section states, read from the same tables: at 0.3 no rule on either seed set chooses an
    edge; at 0.7 three of the four readings choose the grid's lowest rate (the evaluation rule on seeds 100-101
    chose 1e-4, and the same rule on four seeds undid it)."""
    edges = {
        (key, name): calibration.choose(table, *SCORES[name]) == table.sort_values("lr")["label"].iloc[0]
        for key, table in _grids().items()
        for name in SCORES
    }
    assert not any(v for (key, _), v in edges.items() if key[0] == 0.3)
    assert sum(v for (key, _), v in edges.items() if key[0] == 0.7) == 3


def test_the_dancegrpo_evaluation_score_against_the_other_methods():
    """The section's bullet: at 0.3 DanceGRPO's score is at most 0.005 over the base at any rate and seed set; the
    five other methods' best scores on seeds 100-101 (calibration_ode) are 0.004 to 0.015 above the base."""
    section = docs_section(NOISE_LEVEL)
    ode = pd.read_csv(TABLES / "calibration_ode" / "tables" / "calibration.csv", comment="#")
    base = float(ode["train_0"].iloc[0])
    assert f"over the base ({base:.4f})" in section
    ours = max(float(t["score"].max()) for (eta, _), t in _grids().items() if eta == 0.3)
    assert 0.004 < ours - base <= 0.005
    best = ode[ode["method"] != "dancegrpo"].groupby("method")["score"].max() - base
    assert f"are {best.min():.3f} to {best.max():.3f} above it" in section


BEFORE = TABLES / "gradient" / "tables"
# DanceGRPO's arms across the studies: (row label, noise level, rate, tables folder, the arm's label there)
ARMS = (
    # the default study as committed before 2026-12-08: its runs are config/gradient.yaml's (tests/test_config.py)
    ("the default study's before 2026-12-08", "0.7", "3e-6", BEFORE, "dancegrpo"),
    ("ode_rates'", "0.7", "1e-4", TABLES / "ode_rates" / "tables", "dancegrpo-lr1e-4"),
    ("dancegrpo_eta's", "0.3", "1e-4", TABLES / "dancegrpo_eta" / "tables", "dancegrpo"),
    (
        "dancegrpo_noise's (independent initial noise)",
        "0.3",
        "1e-4",
        TABLES / "dancegrpo_noise" / "tables",
        "dancegrpo-own-noise",
    ),
    ("dancegrpo_sde's (Flow-GRPO's SDE)", "0.7", "1e-4", TABLES / "dancegrpo_sde" / "tables", "dancegrpo-flowgrpo-sde"),
)
# headline column -> (docs header, decimals)
CHANGES = {
    "gain": ("held-out gain", 4),
    "change/quality/fid": ("FID change", 2),
    "change/quality/clip_score": ("CLIP-score change", 2),
    "change/diversity/vendi": ("Vendi change", 4),
}


def _cell(row: pd.Series, column: str, decimals: int) -> str:
    return f"{row[column]:+.{decimals}f} [{row[column + '_low']:.{decimals}f}, {row[column + '_high']:.{decimals}f}]"


def arms_table() -> str:
    """DanceGRPO's arms at 512 images, seeds 0-7, each cell the mean change with its 95% interval over seeds."""
    lines = [
        "| DanceGRPO arm | eta | rate | " + " | ".join(h for h, _ in CHANGES.values()) + " |",
        "|---" * (len(CHANGES) + 3) + "|",
    ]
    for label, eta, lr, tables, method in ARMS:
        frame = pd.read_csv(tables / "headline.csv", comment="#")
        row = frame[(frame["method"] == method) & (frame["reward"] == "shape_iou")].iloc[0]
        cells = [_cell(row, column, decimals) for column, (_, decimals) in CHANGES.items()]
        lines.append(f"| {label} | {eta} | {lr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_dancegrpo_arms_table_is_the_committed_tables():
    assert " ".join(arms_table().split()) in docs_section(NOISE_LEVEL_STUDY)


def _significant(tables: Path, name: str) -> set[tuple[str, ...]]:
    """(metric or reading, level, lower method, higher method) of every Holm-significant pair of a table."""
    frame = pd.read_csv(tables / name, comment="#")
    frame = frame[frame["p_holm"] < 0.05]
    low = frame[frame["difference"] < 0]
    level = low["level"].astype(str) if "level" in low.columns else pd.Series("", index=low.index)
    what = low["reading"] + " " + low["metric"] if "reading" in low.columns else low["metric"]
    return set(zip(what, level, low["method"], low["over"]))


def test_the_dancegrpo_noise_level_studys_bullets():
    """Every number and finding the section's bullets state, read from the committed tables."""
    text = docs_section(NOISE_LEVEL_STUDY)
    default, eta = BEFORE, TABLES / "dancegrpo_eta" / "tables"
    head = pd.read_csv(eta / "headline.csv", comment="#").set_index("method")["gain"]
    others = head.drop("dancegrpo")
    assert f"against +{others.min():.3f} to +{others.max():.3f} for the other five methods" in text
    mean, low, high = _paired(("dancegrpo_noise", "dancegrpo-own-noise"), ("dancegrpo_eta", "dancegrpo"))
    assert f"is {mean:+.4f} [{low:.4f}, {high:.4f}]" in text
    # held-out reward and gold metrics: who is Holm-significantly below whom
    reward = {k for k in _significant(eta, "improvement.csv") if k[0] == "reward/shape_iou"}
    assert reward == {("reward/shape_iou", "", "dancegrpo", "prdp")}
    p = pd.read_csv(eta / "improvement.csv", comment="#")
    p = p[(p["metric"] == "reward/shape_iou") & (p["method"] == "dancegrpo") & (p["over"] == "prdp")]["p_holm"].iloc[0]
    assert f"gains less than PRDP alone (Holm p {p:.3f})" in text
    before = {k[2:] for k in _significant(default, "improvement.csv") if k[0] == "reward/shape_iou"}
    assert before == {("dancegrpo", "pcpo"), ("dancegrpo", "prdp")}
    assert any(k[0].startswith("attribute/") and "dancegrpo" in k for k in _significant(default, "improvement.csv"))
    assert not any(k[0].startswith("attribute/") for k in _significant(eta, "improvement.csv"))
    frontier = _significant(eta, "frontier_pairs.csv")
    assert {k[2:] for k in frontier} == {("dancegrpo", "pcpo"), ("dancegrpo", "prdp"), ("ddpo_is", "pcpo")}
    assert len(frontier) == 3 * 4  # at every declared level
    pairs = pd.read_csv(eta / "frontier_pairs.csv", comment="#")
    pairs = pairs[(pairs["reading"] == "gain_at_drift") & (pairs["method"] == "ddpo_is") & (pairs["over"] == "pcpo")]
    assert len(pairs) == 4 and set(pairs["p_holm"].round(3)) == {0.036}
    # the minimum detectable difference and the median paired sd it reads, before and now
    mdd = {k: float(final_pairs(v, "shape_iou")["mdd"].iloc[0]) for k, v in (("default", default), ("eta", eta))}
    spread = final_pairs(eta, "shape_iou")["difference"].abs().max()
    assert (
        f"grows from {mdd['default']:.4f} to {mdd['eta']:.4f} against a spread of the method means of {spread:.4f}"
        in text
    )
    sd = {k: paired_sds(v) for k, v in (("default", default), ("eta", eta))}
    assert f"goes from {sd['default'].median():.4f} to {sd['eta'].median():.4f}" in text
    grew = sd["eta"] - sd["default"]
    assert int((grew[[k for k in grew.index if "dancegrpo" in k]] > 0).sum()) == 4
    assert "as four of DanceGRPO's five pairs are noisier at 0.3" in text
    assert (grew[[k for k in grew.index if "dancegrpo" not in k]].abs() < 1e-12).all()
    # the headline line and its Holm family: the default before had no value on prdp_frontier vs DanceGRPO
    lines = pd.read_csv(eta / "verdicts.csv", comment="#")
    findings = lines[lines["kind"] == "finding"]
    before = pcpo_gain_holm_without_dancegrpos_line(lines)
    line = lines[lines["id"] == "pcpo_gain"].iloc[0]
    assert f"same raw p as in the default study ({line['p_value']:.4f})" in text
    assert line["verdict"] == "inconclusive" and before < 0.05 <= line["p_holm"]
    assert f"Holm p {line['p_holm']:.4f}, inconclusive, against {before:.4f}, supported, there" in text
    tested = int(findings["p_holm"].notna().sum())
    assert f"has {tested} tested lines instead of {tested - 1}" in text
    statistics_section = docs_section("## Statistics")
    assert (
        f"`pcpo_gain` read {before:.4f} in the default study committed before 2026-12-08 and reads {line['p_holm']:.4f}"
        in (statistics_section)
    )


def paired_sds(tables: Path) -> pd.Series:
    """The sd over seeds of each pair's per-seed difference of the 512-image held-out shape_iou."""
    cells = pd.read_csv(tables / "eval_per_seed.csv", comment="#")
    cells = cells[(cells["metric"] == "reward/shape_iou") & (cells["budget"] == 512)]
    wide = cells.pivot(index="seed", columns="algorithm", values="value")
    pairs = itertools.combinations(sorted(wide.columns), 2)
    return pd.Series({(a, b): float((wide[a] - wide[b]).std(ddof=1)) for a, b in pairs})


def test_the_sampler_ablation_bullet():
    """The declared reading of config/dancegrpo_sde.yaml: the paired difference per seed of the 512-image held-out
    gain, DanceGRPO with Flow-GRPO's SDE minus DanceGRPO's own at 0.3, with its 95% t interval (it excludes zero)."""
    text = docs_section(NOISE_LEVEL_STUDY)
    mean, low, high = _paired(("dancegrpo_sde", "dancegrpo-flowgrpo-sde"), ("dancegrpo_eta", "dancegrpo"))
    assert low > 0
    assert f"paired difference to DanceGRPO's own SDE is {mean:+.4f} [{low:.4f}, {high:.4f}]" in text
    head = pd.read_csv(ROOT / "results" / "tables" / "headline.csv", comment="#").set_index("method")
    sde = pd.read_csv(TABLES / "dancegrpo_sde" / "tables" / "headline.csv", comment="#").set_index("method")
    assert sde.loc["dancegrpo-flowgrpo-sde", "gain"] >= head.loc[["reinforce", "ddpo_is", "loop"], "gain"].max()
    assert f"Flow-GRPO's std `0.7 sqrt(t / (1 - t))` is {0.7 * (0.9 / 0.1) ** 0.5:.1f} at t = 0.9" in text


def test_the_replication_bullet():
    """dancegrpo_eta's findings on seeds 30-37: the replication tool's count and kinds, DanceGRPO's gain there."""
    text = docs_section(NOISE_LEVEL_STUDY)
    rows = pd.read_csv(TABLES / "dancegrpo_eta" / "replication" / "replication.csv", comment="#")
    done = int((rows["outcome"] == "replicated").sum())
    assert f"reads **{done} of {len(rows)}** findings replicated" in text and done == len(rows)
    kinds = rows["source"].value_counts().to_dict()
    assert kinds["verdict"] == 1 and kinds["frontier"] == 12 and kinds["pairwise"] == 4
    assert (rows["study"] == "equivalent within 0.01").sum() == 3
    head = pd.read_csv(TABLES / "dancegrpo_eta_replication" / "tables" / "headline.csv", comment="#")
    row = head.set_index("method").loc["dancegrpo"]
    assert f"gains nothing there ({row['gain']:+.4f} [{row['gain_low']:.4f}, {row['gain_high']:.4f}])" in text
    assert row["gain_low"] < 0 < row["gain_high"]
    verdicts = pd.read_csv(TABLES / "dancegrpo_eta_replication" / "tables" / "verdicts.csv", comment="#")
    assert verdicts.set_index("id").loc["pcpo_gain", "verdict"] == "inconclusive"
