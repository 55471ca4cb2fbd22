"""The long-horizon tables of docs/study.md are the committed tables: each cell (a mean held-out
gain at a budget, the FID and CLIP-score change at the last budget, the gain within an FID drift
of 2) is recomputed from the study's per-seed and derived tables to the digits the docs print, and
the bold cell of a row is its highest gain."""

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDY = (ROOT / "docs" / "study.md").read_text()

# docs section -> (study folder, the row label's method name and rate -> the study's algorithm label)
SECTIONS = {
    "### The long run\n": (
        "long",
        {
            "PCPO (1e-4)": "pcpo",
            "DDPO-IS (3e-5)": "ddpo_is",
            "REINFORCE (3e-5)": "reinforce",
            "LOOP (3e-5)": "loop",
            "PRDP (1e-4)": "prdp",
            "DanceGRPO (3e-6)": "dancegrpo",
        },
    ),
    "### The long run with seeds\n": (
        "long_power",
        {"PCPO (1e-4)": "pcpo", "PCPO (3e-5)": "pcpo-lr3e-5", "DDPO-IS (3e-5)": "ddpo_is", "LOOP (3e-5)": "loop"},
    ),
    "### The 3e-5 curves to 16384 images\n": (
        "long_16384",
        {
            "REINFORCE (3e-5)": "reinforce",
            "DDPO-IS (3e-5)": "ddpo_is",
            "LOOP (3e-5)": "loop",
            "PCPO (3e-5)": "pcpo-lr3e-5",
            "PRDP (1e-4)": "prdp",
        },
    ),
}


def _table(section: str, first: tuple[str, ...] = ("method (rate)", "arm (rate)")) -> list[list[str]]:
    text = STUDY[STUDY.index(section) :].split("\n### ", 1)[0]
    tables = [t.split("\n\n", 1)[0] for t in text.split("\n\n| ")[1:]]
    lines = next(t for t in tables if t.startswith(first)).splitlines()
    rows = [[c.strip() for c in ("| " + lines[0]).strip().strip("|").split("|")]]
    rows += [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    return rows


def _changes(study: str, metric: str) -> pd.DataFrame:
    frame = pd.read_csv(ROOT / "results" / "studies" / study / "tables" / "eval_per_seed.csv", comment="#")
    values = frame[frame["metric"] == metric].pivot_table(index=["algorithm", "seed"], columns="budget", values="value")
    return values.sub(values[0], axis=0).groupby(level=0).mean()


def _same(value: float, cell: str) -> bool:
    cell = cell.strip("*")
    digits = len(cell.split(".")[1])
    sign = "+" if cell.startswith(("+", "-")) else ""
    return f"{value:{sign}.{digits}f}" == cell


@pytest.mark.parametrize("section", list(SECTIONS))
def test_a_long_run_table_in_the_docs_is_the_committed_tables(section):
    study, labels = SECTIONS[section]
    header, *rows = _table(section)
    gain = _changes(study, "reward/shape_iou")
    fid, clip = _changes(study, "quality/fid"), _changes(study, "quality/clip_score")
    last = int(gain.columns.max())
    derived = pd.read_csv(ROOT / "results" / "studies" / study / "tables" / "derived.csv", comment="#")
    checked = 0
    assert {r[0] for r in rows} == set(labels)
    for row in rows:
        algorithm = labels[row[0]]
        budget_cells = [(int(h), c) for h, c in zip(header[1:], row[1:]) if h.isdigit()]
        for budget, cell in budget_cells:
            assert _same(gain.loc[algorithm, budget], cell), (row[0], budget, cell)
            checked += 1
        bold = [budget for budget, cell in budget_cells if cell.startswith("**")]
        assert bold == [max(budget_cells, key=lambda bc: float(bc[1].strip("*")))[0]], row[0]
        for name, cell in zip(header[1:], row[1:]):
            if name == "FID change":
                assert _same(fid.loc[algorithm, last], cell), (row[0], name)
            elif name == "CLIP-score change":
                assert _same(clip.loc[algorithm, last], cell), (row[0], name)
            elif name == "gain within FID drift 2":
                mask = (derived["algorithm"] == algorithm) & (
                    derived["metric"] == "frontier/gain_at_drift/quality/fid/2"
                )
                assert _same(float(derived.loc[mask, "mean"].iloc[0]), cell), (row[0], name)
            else:
                assert name.isdigit(), name
                continue
            checked += 1
    assert checked == len(rows) * (len(header) - 1)


def test_the_declared_peak_reading_of_the_16384_image_runs_is_the_committed_tables():
    """docs/study.md#the-3e-5-curves-to-16384-images: per arm, each seed's highest held-out gain and
    its budget, "passed its peak" (both seeds highest before the last budget, the preset's declared
    rule), the mean's highest gain and its budget, the mean at the last budget and the FID change at
    the mean's peak; recomputed from the per-seed table."""
    section = "### The 3e-5 curves to 16384 images\n"
    study, labels = SECTIONS[section]
    header, *rows = _table(section, first=("arm |",))
    assert header[3] == "passed its peak"
    gain = _changes(study, "reward/shape_iou")
    fid = _changes(study, "quality/fid")
    frame = pd.read_csv(ROOT / "results" / "studies" / study / "tables" / "eval_per_seed.csv", comment="#")
    values = frame[frame["metric"] == "reward/shape_iou"].pivot_table(
        index=["algorithm", "seed"], columns="budget", values="value"
    )
    per_seed = values.sub(values[0], axis=0).drop(columns=0)
    last = int(per_seed.columns.max())
    assert {r[0] for r in rows} == set(labels)
    for name, seed2, seed3, passed, mean_cell, fid_cell in rows:
        algorithm = labels[name]
        peaks = []
        for seed, cell in ((2, seed2), (3, seed3)):
            curve = per_seed.loc[(algorithm, seed)]
            assert cell == f"{curve.max():+.4f} ({curve.idxmax()})", (name, seed)
            peaks.append(curve.idxmax())
        assert passed == ("yes" if max(peaks) < last else "no"), name
        mean = gain.loc[algorithm].drop(0)
        assert mean_cell == f"{mean.max():+.4f} ({mean.idxmax()}), {mean[last]:+.4f}", name
        assert _same(fid.loc[algorithm, mean.idxmax()], fid_cell), name


def test_the_evaluation_draw_check_of_the_16384_image_runs():
    """evaluation_seeds.csv (docs/study.md#the-3e-5-curves-to-16384-images): its rows under the study's
    own evaluation seed are the committed per-seed cells, to every digit, and the docs' numbers (PCPO
    seed 2 highest at 16384 under every other draw, its 14336-16384 differences, its five-draw means,
    DDPO-IS's five-draw means, the range of the per-checkpoint standard deviations) are recomputed."""
    study = ROOT / "results" / "studies" / "long_16384"
    draws = pd.read_csv(study / "evaluation_seeds.csv", comment="#")
    committed = pd.read_csv(study / "tables" / "eval_per_seed.csv", comment="#")
    committed = committed[committed["metric"] == "reward/shape_iou"]
    own = draws[draws["evaluation_seed"] == 1234].merge(committed, on=["algorithm", "seed", "budget"])
    assert len(own) == 12 and (own["shape_iou"] == own["value"]).all()
    base = draws[draws["budget"] == 0].set_index(["algorithm", "seed", "evaluation_seed"])["shape_iou"]
    draws = draws[draws["budget"] > 0].copy()
    draws["gain"] = (
        draws["shape_iou"] - base.loc[list(zip(draws["algorithm"], draws["seed"], draws["evaluation_seed"]))].values
    )
    gains = draws.pivot_table(index=["algorithm", "seed", "evaluation_seed"], columns="budget", values="gain")
    text = " ".join(STUDY[STUDY.index("- **PCPO's pass is the evaluation's draw**") :].split("\n\n")[0].split())

    pcpo = gains.loc[("pcpo-lr3e-5", 2)]
    others = pcpo.drop(index=1234)
    assert (others.idxmax(axis=1) == 16384).all() and len(others) == 4
    assert "highest at 16384 under each of the four other seeds" in text
    step = pcpo[14336] - pcpo[16384]
    other_steps = step.drop(index=1234)
    assert f"+{step[1234]:.4f} under the study's seed, and {other_steps.min():.4f} to {other_steps.max():.4f}" in text
    means = ", ".join(f"+{v:.4f}" for v in pcpo.mean())
    assert f"are {means.rsplit(', ', 1)[0]} and {means.rsplit(', ', 1)[1]}: still rising" in text
    ddpo = gains.loc[("ddpo_is", 2)]
    assert ddpo.idxmax(axis=1).nunique() == 3
    assert "(mean " + ", ".join(f"+{v:.4f}" for v in ddpo.mean()) + ": flat)" in text
    sds = gains.groupby(level=[0, 1]).std()
    assert f"standard deviation of {sds.min().min():.4f} to {sds.max().max():.4f}" in text
