import numpy as np
import pandas as pd
import pytest

from t2i_rl_bench import tables

STATS = {"confidence": 0.95, "bootstrap_resamples": 500, "seed": 0}


def _seed_rows(values: dict[str, list[float]], metric="reward/r", budget=64) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": "m",
                "reward": "r",
                "algorithm": a,
                "seed": s,
                "budget": budget,
                "metric": metric,
                "value": v,
                "status": "finished",
            }
            for a, vs in values.items()
            for s, v in enumerate(vs)
        ]
    )


def test_improvement_is_significant_only_with_enough_separated_seeds_after_holm():
    many = tables.improvement(
        _seed_rows({"a": [1, 1.1, 1.2, 1.3, 1.4, 1.5], "b": [0, 0.1, 0.2, 0.3, 0.4, 0.5]}), STATS, ["reward/{reward}"]
    )
    a_over_b = many[(many.method == "a") & (many.over == "b")].iloc[0]
    assert a_over_b.poi == 1.0 and a_over_b.significant and a_over_b.difference == pytest.approx(1.0)
    b_over_a = many[(many.method == "b") & (many.over == "a")].iloc[0]
    assert b_over_a.poi == 0.0 and b_over_a.significant  # significant, in a's favour
    # paired by seed (the same seeds): differences +0.1, -0.1, +0.1 are noise
    close = tables.improvement(_seed_rows({"a": [1.0, 1.3, 0.8], "b": [0.9, 1.4, 0.7]}), STATS, ["reward/{reward}"])
    assert not close["significant"].any() and (close["test"] == "paired t").all()
    # three methods: the same separation is corrected over 3 pairs (p_holm >= p)
    three = tables.improvement(
        _seed_rows({"a": [1.0, 1.2, 1.1], "b": [0.8, 0.9, 1.0], "c": [0.0, 0.1, 0.2]}), STATS, ["reward/{reward}"]
    )
    assert (three["p_holm"] >= three["p_value"] - 1e-12).all()


def test_the_registry_direction_orients_lower_is_better_metrics():
    out = tables.improvement(
        _seed_rows({"a": [10, 11, 12, 13, 14], "b": [20, 21, 22, 23, 24]}, metric="quality/fid"), STATS, ["quality/fid"]
    )
    row = out[(out.method == "a") & (out.over == "b")].iloc[0]
    assert row.poi == 1.0 and row.better == "lower" and row.difference == -10.0


def test_compared_metrics_come_from_the_registry():
    rows = pd.concat(
        [
            _seed_rows({"a": [1.0]}, metric=m)
            for m in ("reward/r", "quality/fid", "attribute/mean", "device_seconds", "credit_share/3")
        ]
    )
    assert tables.compared_metrics(rows, "r") == ["reward/r", "attribute/mean", "quality/fid"]


def test_the_shared_base_row_has_one_measurement_and_no_interval():
    rows = pd.concat([_seed_rows({"a": [0.5, 0.5, 0.5]}, budget=0), _seed_rows({"a": [0.6, 0.7, 0.8]}, budget=64)])
    table = tables.summarise(rows, STATS).set_index("budget")
    assert table.loc[0, "n_seeds"] == 1 and np.isnan(table.loc[0, "ci_low"]) and table.loc[0, "shared"]
    assert table.loc[64, "n_seeds"] == 3 and table.loc[64, "ci_low"] < 0.7 < table.loc[64, "ci_high"]
    # the default interval is Student-t: mean +- t_{0.975, 2} s / sqrt(3)
    half = 4.302653 * 0.1 / np.sqrt(3)
    assert table.loc[64, "ci_high"] == pytest.approx(0.7 + half, rel=1e-5)


def test_aggregates_across_rewards_are_stratified_and_normalised():
    rows = []
    for reward, scale in (("r1", 1.0), ("r2", 100.0)):
        for algo, gain in (("a", 1.0), ("b", 0.5)):
            for seed in range(3):
                for budget, v in ((0, 0.0), (64, scale * (gain + 0.01 * seed))):
                    rows.append(
                        {
                            "model": "m",
                            "reward": reward,
                            "algorithm": algo,
                            "seed": seed,
                            "budget": budget,
                            "metric": f"reward/{reward}",
                            "value": v,
                            "status": "finished",
                        }
                    )
    across, profile = tables.across_rewards(pd.DataFrame(rows), STATS)
    iqm = across[across.statistic == "iqm_normalised_gain"].set_index("method")["value"]
    assert iqm["a"] > iqm["b"] > 0 and iqm["a"] <= 1.0  # the reward's scale (x100) does not matter
    poi = across[(across.statistic == "probability_of_improvement") & (across.method == "a")].iloc[0]
    assert poi.value == 1.0 and poi.tasks == 2
    assert set(profile["method"]) == {"a", "b"} and profile["fraction"].between(0, 1).all()


def test_tables_carry_provenance_in_every_format(tmp_path):
    rows = _seed_rows({"a": [1.0, 2.0, 3.0]})
    table = tables.summarise(rows, STATS)
    assert np.isclose(table.iloc[0]["mean"], 2.0) and table.iloc[0]["ci_low"] <= 2.0 <= table.iloc[0]["ci_high"]
    prov = tables.provenance({"study": "t", "seeds": [0, 1, 2]})
    assert prov["commit"] and prov["config_hash"] and prov["packages"]["torch"] != "absent"
    tables.write_tables(table, prov, tmp_path, "eval")
    for ext, comment in (("csv", "#"), ("md", "<!--"), ("tex", "%")):
        text = (tmp_path / f"eval.{ext}").read_text()
        assert text.startswith(f"{comment} t2i-rl-bench results") and prov["config_hash"] in text
    tex = (tmp_path / "eval.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\begin{longtable}" in tex
    assert "95% Student-t interval over seeds" in (tmp_path / "eval.csv").read_text()
    back = pd.read_csv(tmp_path / "eval.csv", comment="#")
    assert list(back.columns[:5]) == tables.KEYS and back.iloc[0]["n_seeds"] == 3


def test_summarise_skips_censored_seeds_and_counts_the_rest():
    rows = _seed_rows({"a": [1.0, float("nan"), 3.0]})
    row = tables.summarise(rows, STATS).iloc[0]
    assert row["n_seeds"] == 2 and np.isclose(row["mean"], 2.0)


def test_the_commit_stamp_is_dirty_for_changed_code_not_for_rewritten_outputs(tmp_path, monkeypatch):
    import subprocess

    def git(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True, capture_output=True
        )

    (tmp_path / "results" / "tables").mkdir(parents=True)
    (tmp_path / "report").mkdir()
    for name in ("code.py", "results/tables/eval.csv", "results/citable.json", "report/index.html"):
        (tmp_path / name).write_text("v1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    monkeypatch.chdir(tmp_path)
    for name in ("results/tables/eval.csv", "results/citable.json", "report/index.html"):
        (tmp_path / name).write_text("v2")
    assert not tables.provenance({"study": "t", "seeds": [0]})["commit"].endswith("+dirty")
    (tmp_path / "code.py").write_text("v2")
    assert tables.provenance({"study": "t", "seeds": [0]})["commit"].endswith("+dirty")


def test_installed_versions_that_differ_from_a_tables_are_named(tmp_path, capsys):
    from t2i_rl_bench import provenance

    prov = tables.provenance({"study": "t", "seeds": [0, 1, 2]})
    table = tables.summarise(_seed_rows({"a": [1.0, 2.0, 3.0]}), STATS)
    tables.write_tables(table, prov, tmp_path, "eval")
    for ext in ("csv", "md", "tex"):  # every format's header parses back to what was recorded
        assert provenance.recorded_versions(tmp_path / f"eval.{ext}") == prov["packages"]
    assert provenance.warn_version_drift(tmp_path / "eval.csv", "aggregate") == []
    older = dict(prov["packages"], numpy="0.0.1")
    (tmp_path / "eval.csv").write_text(tables._header({**prov, "packages": older}, "#") + "x\n1\n")
    drift = provenance.warn_version_drift(tmp_path / "eval.csv", "aggregate")
    assert drift == [f"numpy 0.0.1 -> {prov['packages']['numpy']}"]
    assert "numpy 0.0.1" in capsys.readouterr().err


def test_the_recursive_collapse_rate_gets_an_interval_inside_the_unit_interval():
    # one of three seeds' loops collapsed: a Student-t interval would be 0.333 [-1.10, 1.77]
    row = tables.summarise(_seed_rows({"a": [1.0, 0.0, 0.0]}, metric="collapse/loop_collapsed"), STATS).iloc[0]
    assert row["mean"] == pytest.approx(1 / 3) and 0.0 <= row["ci_low"] < 1 / 3 < row["ci_high"] <= 1.0
