"""docs/study.md#the-committed-study: every number the section types, recomputed from the committed tables of
the default study, the two-reward study and its unseen-seed replication."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from committed import docs_section, final_pairs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "results" / "tables"
TWO = ROOT / "results" / "studies" / "two_rewards" / "tables"
NAMES = {
    "reinforce": "REINFORCE",
    "ddpo_is": "DDPO-IS",
    "loop": "LOOP",
    "pcpo": "PCPO",
    "prdp": "PRDP",
    "dancegrpo": "DanceGRPO",
}


def section() -> str:
    return docs_section("## The committed study")


def table(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv", comment="#")


def unordered(rows: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(pair) for pair in zip(rows["method"], rows["over"])}


def test_the_gains():
    head = table(DEFAULT, "headline").set_index("method")
    gains = ", ".join(
        f"{name} {head.loc[m, 'gain']:.4f} [{head.loc[m, 'gain_low']:.4f}, {head.loc[m, 'gain_high']:.4f}]"
        for m, name in NAMES.items()
    )
    assert f"Held-out gain at 512 images (160 images, ODE): {gains}." in section()
    assert "Five methods gain on shape_iou; DanceGRPO's gain is not told from zero." in section()
    assert head["gain"].idxmin() == "dancegrpo"
    assert [m for m in NAMES if head.loc[m, "gain_low"] <= 0] == ["dancegrpo"]


def test_the_acceptance_reading():
    text = section()
    verdicts = (DEFAULT / "verdicts.md").read_text()
    assert "acceptance (difference)" in verdicts and "with no named confound" in verdicts
    frontier = table(DEFAULT, "frontier_pairs")
    significant = frontier[(frontier["p_holm"] < 0.05) & (frontier["reward"] == "shape_iou")]
    drift = frontier[frontier["reading"] == "gain_at_drift"]
    levels = drift.groupby("metric")["level"].nunique().sum()  # the declared drift levels
    assert set(significant["reading"]) == {"gain_at_drift"}
    assert unordered(significant) == {
        frozenset(p) for p in (("dancegrpo", "pcpo"), ("dancegrpo", "prdp"), ("ddpo_is", "pcpo"))
    }
    assert len(significant) == 3 * levels == 12  # every pair at every declared drift level
    headline = significant[(significant["method"] == "ddpo_is") & (significant["over"] == "pcpo")]
    assert (
        set(headline["p_holm"].round(3)) == {0.036} and "(Holm p 0.036 over 15 pairs, one number at every level" in text
    )
    assert headline["difference"].nunique() == 1
    final = final_pairs(DEFAULT, "shape_iou")
    assert unordered(final[final["p_holm"] < 0.05]) == {frozenset(("dancegrpo", "prdp"))}
    p = final[(final["method"] == "dancegrpo") & (final["over"] == "prdp")]["p_holm"].iloc[0]
    assert f"DanceGRPO gains less held-out reward than PRDP (Holm p {p:.3f})" in text
    gold = table(DEFAULT, "improvement")
    gold = gold[~gold["metric"].str.startswith("reward/") & (gold["p_holm"] < 0.05)]
    assert gold.empty and "No gold-metric pair is Holm-significant." in text


def test_the_power_reading():
    text = section()
    final = final_pairs(DEFAULT, "shape_iou")
    mdd, spread = float(final["mdd"].iloc[0]), float(final["difference"].abs().max())
    assert (
        f"is {mdd:.4f}, against a spread of the method means of {spread:.4f}: {mdd / spread:.2f} of the spread" in text
    )
    equivalent = unordered(final[final["equivalent"].astype(bool)])
    assert equivalent == {frozenset(p) for p in (("reinforce", "ddpo_is"), ("reinforce", "loop"), ("ddpo_is", "loop"))}
    assert "REINFORCE, DDPO-IS and LOOP are equivalent within 0.01 (three pairs)" in text
    different = unordered(final[final["p_holm"] < 0.05])
    assert different == {frozenset(("dancegrpo", "prdp"))} and not different & equivalent
    assert "of the other twelve pairs one differs after Holm (DanceGRPO below PRDP) and none is equivalent" in text


def test_the_second_reward_and_the_aggregates():
    text = section()
    final = final_pairs(TWO, "attribute_match")
    assert len(final) == 30 and final["equivalent"].astype(bool).all() and (final["margin"] == 0.01).all()
    mdd, spread = float(final["mdd"].iloc[0]), float(final["difference"].abs().max())
    assert f"15 of 15, TOST p <= {final['p_tost'].max():.3f}" in text
    assert f"minimum detectable difference {mdd:.4f} against a spread of {spread:.4f}" in text
    head = table(TWO, "headline").set_index(["reward", "method"]).loc[("attribute_match", "dancegrpo")]
    assert f"DanceGRPO at 0.3 included ({head['gain']:+.4f} [{head['gain_low']:.4f}, {head['gain_high']:.4f}])" in text
    across = table(TWO, "across_rewards")
    iqm = across[across["statistic"] == "iqm_normalised_gain"].set_index("method")
    top, bottom = iqm.loc[iqm["value"].idxmax()], iqm.loc[iqm["value"].idxmin()]
    assert (iqm["value"].idxmax(), iqm["value"].idxmin()) == ("pcpo", "dancegrpo")
    cell = f"{top['value']:.3f} [{top['ci_low']:.3f}, {top['ci_high']:.3f}]"
    assert f"PCPO has the highest interquartile mean of the normalised gain ({cell})" in text
    assert f"DanceGRPO the lowest ({bottom['value']:.3f} [{bottom['ci_low']:.3f}, {bottom['ci_high']:.3f}])" in text
    assert list(iqm.index[iqm["ci_low"] <= 0]) == ["dancegrpo"]
    poi = across[across["statistic"] == "probability_of_improvement"]
    clear = poi[poi["ci_low"] > 0.5]
    assert list(zip(clear["method"], clear["over"])) == [("prdp", "ddpo_is")]
    row = clear.iloc[0]
    assert f"PRDP over DDPO-IS, {row['value']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]" in text


def test_the_headline_line_in_both_families():
    text = section()
    lines = {
        f: table(f, "verdicts").set_index(["id", "reward"]).loc[("pcpo_gain", "shape_iou")] for f in (DEFAULT, TWO)
    }
    assert all(line["verdict"] == "inconclusive" for line in lines.values())
    assert (
        f"(Holm p {lines[DEFAULT]['p_holm']:.4f} in the default, {lines[TWO]['p_holm']:.2g} in the two-reward study"
        in text
    )


def test_the_replication_bullet():
    text = section()
    rows = pd.read_csv(ROOT / "results" / "replication" / "replication.csv")
    done = int((rows["outcome"] == "replicated").sum())
    assert done == len(rows) and f"reads **{done} of {len(rows)}** findings replicated" in text
    kinds = rows["source"].value_counts().to_dict()
    assert f"the two implementation checks, {kinds['pairwise']} pairwise findings" in text and kinds["verdict"] == 2
    assert f"and {kinds['frontier']} frontier differences" in text
    equivalent = rows[rows["study"] == "equivalent within 0.01"]["reward"].value_counts().to_dict()
    assert equivalent == {"shape_iou": 3, "attribute_match": 15}
    head = rows[rows["finding"] == "gain_at_drift quality/fid at 2: ddpo_is - pcpo"].iloc[0]
    assert f"is {head['study_effect']:.4f} on seeds 0-7 and {head['replication_effect']:.4f} on seeds 30-37" in text
