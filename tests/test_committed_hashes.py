"""Every committed table names the config hash that `python -m t2i_rl_bench validate <config>`
prints today, so a reader who quotes a table can check that a config in the repository is the one
that made it (docs/measurements.md#the-tables-formats)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from t2i_rl_bench import study

ROOT = Path(__file__).resolve().parents[1]
# Tables whose runs were not kept on the machine that committed them: re-aggregating them needs the
# runs again (~45 and ~29 min), so their headers keep the hash of the code version named beside it.
NOT_REAGGREGATED = {"calibration", "horizon"}


def committed_tables() -> list[tuple[str, Path, Path]]:
    found = []
    for config in sorted((ROOT / "config").glob("*.yaml")):
        if config.name == "schema.yaml":
            continue
        name = study.read_yaml(config).get("study", "default")
        folder = ROOT / "results" / ("tables" if name == "default" else f"studies/{name}/tables")
        if (folder / "headline.md").exists():
            found.append((name, config, folder / "headline.md"))
    return found


def header_hash(table: Path) -> str:
    match = re.search(r"config hash ([0-9a-f]{16})", table.read_text().splitlines()[1])
    assert match, table
    return match.group(1)


def test_the_committed_tables_are_found():
    names = {name for name, _, _ in committed_tables()}
    assert {
        "default",
        "power",
        "controlled_power",
        "long",
        "long_power",
        "long_credit",
        "two_rewards",
    } <= names and NOT_REAGGREGATED <= names


@pytest.mark.parametrize("name,config,table", committed_tables(), ids=lambda v: getattr(v, "name", str(v)))
def test_a_committed_tables_config_hash_is_its_configs_hash_today(name, config, table):
    today = study.config_hash(study.load(config, check_paths=False))
    if name in NOT_REAGGREGATED:
        assert header_hash(table) != today, f"{name} matches again: take it off NOT_REAGGREGATED"
    else:
        assert header_hash(table) == today, f"{table} was made from another config (or schema): re-aggregate it"


def per_seed(name: str) -> pd.DataFrame:
    """A study's committed per-seed evaluation cells of its trained checkpoints, timing aside."""
    folder = ROOT / "results" / ("tables" if name == "default" else f"studies/{name}/tables")
    frame = pd.read_csv(folder / "eval_per_seed.csv", comment="#")
    return frame[(frame["budget"] > 0) & (frame["metric"] != "device_seconds")]


def assert_same_evaluations(shared: pd.DataFrame) -> None:
    """Merged cells (`value_x`, `value_y`) of two studies' runs: the reward, FID/KID and attribute cells
    equal to every digit, the CLIP-feature cells within float rounding (a first call's rounding)."""
    exact = shared["metric"].str.startswith(("reward/", "quality/fid", "quality/kid", "attribute/"))
    assert exact.sum() > len(shared) / 2
    assert (shared.loc[exact, "value_x"] == shared.loc[exact, "value_y"]).all()
    assert (shared["value_x"] - shared["value_y"]).abs().max() < 1e-6


def test_the_long_runs_first_512_images_are_the_shorter_studies_runs():
    """A budget only saves a checkpoint, so config/long_power.yaml's runs evaluated at 128, 256 and
    512 images are the power study's (and, for PCPO at 3e-5, the learning-rate control's) runs on
    the same seeds: every reward and FID cell equal to every digit, the CLIP-feature cells within
    float rounding (docs/study.md#the-long-run-with-seeds)."""

    def early(name: str) -> pd.DataFrame:
        frame = per_seed(name)
        return frame[frame["budget"].isin([128, 256, 512])]

    long = early("long_power")
    keys = ["algorithm", "seed", "budget", "metric"]
    shared = pd.concat(
        [
            long[long["algorithm"] != "pcpo-lr3e-5"].merge(early("power"), on=keys),
            long[long["algorithm"] == "pcpo-lr3e-5"].merge(early("controlled_power"), on=keys),
        ]
    )
    assert len(shared) == len(long) == 4 * 8 * 3 * long["metric"].nunique()
    assert_same_evaluations(shared)


def test_the_8192_image_runs_first_4096_images_are_the_long_runs():
    """config/long_8192.yaml trains two of long_power's arms on two of its seeds past 4096 images:
    every evaluation at 128-4096 images is long_power's (rewards, FID/KID and attribute cells to every
    digit, the CLIP-feature cells within float rounding; docs/study.md#the-3e-5-curves-past-4096-images)."""

    longer = per_seed("long_8192")
    keys = ["algorithm", "seed", "budget", "metric"]
    shared = longer.merge(per_seed("long_power"), on=keys)
    assert len(shared) == len(longer[longer["budget"] <= 4096]) == 2 * 2 * 8 * longer["metric"].nunique()
    assert longer["budget"].max() == 8192
    assert_same_evaluations(shared)


def test_the_8192_image_table_in_the_docs_is_the_committed_tables():
    """docs/study.md#the-3e-5-curves-past-4096-images quotes each arm's mean gain and FID change by
    budget: recomputed here from the committed per-seed table, to the digits it prints."""
    text = (ROOT / "docs" / "study.md").read_text()
    section = text[text.index("### The 3e-5 curves past 4096 images") :]
    rows = [line for line in section.splitlines()[:40] if line.startswith("| ")]
    budgets = [int(b) for b in re.findall(r"\d+", rows[0])]
    frame = pd.read_csv(ROOT / "results" / "studies" / "long_8192" / "tables" / "eval_per_seed.csv", comment="#")
    labels = {"DDPO-IS": "ddpo_is", "PCPO": "pcpo-lr3e-5"}
    checked = 0
    for row in rows[1:]:
        name, *cells = [c.strip() for c in row.strip("|").split("|")]
        algorithm = labels[name.split(" ")[0].rstrip(":")]
        metric = "quality/fid" if "FID" in name else "reward/shape_iou"
        values = frame[(frame["algorithm"] == algorithm) & (frame["metric"] == metric)]
        values = values.pivot(index="seed", columns="budget", values="value")
        change = values.sub(values[0], axis=0).mean()
        for budget, cell in zip(budgets, cells):
            digits = len(cell.split(".")[1])
            assert f"{change[budget]:+.{digits}f}" == cell, (name, budget)
            checked += 1
    assert checked == 4 * len(budgets) == 20


def test_the_16384_image_runs_continue_the_committed_shorter_runs():
    """config/long_16384.yaml continues long_8192's DDPO-IS and PCPO runs and long_power's LOOP runs
    from their saved states: every evaluation up to the shorter run's horizon equals the committed
    one (reward, FID/KID and attribute cells to every digit, CLIP-feature cells within float rounding;
    docs/study.md#the-3e-5-curves-to-16384-images)."""

    longer = per_seed("long_16384")
    assert longer["budget"].max() == 16384
    keys = ["algorithm", "seed", "budget", "metric"]
    sources = {"long_8192": ["ddpo_is", "pcpo-lr3e-5"], "long_power": ["loop"]}
    for name, algorithms in sources.items():
        shorter = per_seed(name)
        shorter = shorter[shorter["algorithm"].isin(algorithms) & shorter["seed"].isin(longer["seed"].unique())]
        shared = longer.merge(shorter, on=keys)
        assert (
            len(shared)
            == len(shorter)
            == 2 * len(algorithms) * shorter["budget"].nunique() * longer["metric"].nunique()
        )
        assert_same_evaluations(shared)


def test_the_dancegrpo_noise_level_study_is_the_committed_default_study():
    """config/dancegrpo_eta.yaml changed DanceGRPO's arm alone, and the default study has since taken that arm
    (docs/study.md#the-default-study-with-dancegrpo-at-its-own-noise-level): every evaluation cell of the two is
    equal; against the default's runs as they were (config/gradient.yaml's), the five other methods' cells are
    equal and DanceGRPO's are new runs."""
    default = per_seed("default")
    eta = per_seed("dancegrpo_eta")
    keys = ["algorithm", "seed", "budget", "metric"]
    shared = eta.merge(default, on=keys)
    assert len(shared) == len(eta) == len(default) == 6 * 8 * 6 * eta["metric"].nunique()
    assert_same_evaluations(shared)
    before = per_seed("gradient")
    others = eta[eta["algorithm"] != "dancegrpo"]
    shared = others.merge(before, on=keys)
    assert len(shared) == len(others) == 5 * 8 * 6 * others["metric"].nunique()
    assert_same_evaluations(shared)
    ours = eta[(eta["algorithm"] == "dancegrpo") & (eta["metric"] == "reward/shape_iou")].merge(before, on=keys)
    assert len(ours) == 8 * 6 and (ours["value_x"] != ours["value_y"]).all()  # its own arm is new runs
