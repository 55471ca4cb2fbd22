import numpy as np
import pandas as pd

from bench import tables

STATS = {"confidence": 0.95, "bootstrap_resamples": 500, "seed": 0}


def _seed_rows(values: dict[str, list[float]], metric="reward/r", budget=64) -> pd.DataFrame:
    return pd.DataFrame([{"model": "m", "reward": "r", "algorithm": a, "seed": s, "budget": budget,
                          "metric": metric, "value": v, "status": "finished"}
                         for a, vs in values.items() for s, v in enumerate(vs)])


def test_improvement_is_significant_only_with_enough_separated_seeds():
    many = tables.improvement(_seed_rows({"a": [1, 1.1, 1.2, 1.3, 1.4, 1.5], "b": [0, 0.1, 0.2, 0.3, 0.4, 0.5]}),
                              STATS, ["reward/{reward}"])
    a_over_b = many[(many.method == "a") & (many.over == "b")].iloc[0]
    assert a_over_b.poi == 1.0 and a_over_b.significant
    b_over_a = many[(many.method == "b") & (many.over == "a")].iloc[0]
    assert b_over_a.poi == 0.0 and b_over_a.significant  # significant, in a's favour
    few = tables.improvement(_seed_rows({"a": [1.0, 1.1], "b": [0.0, 0.1]}), STATS, ["reward/{reward}"])
    assert few.iloc[0].poi in (0.0, 1.0) and not few["significant"].any()  # 2 seeds cannot be significant


def test_lower_is_better_metrics_are_flipped():
    out = tables.improvement(_seed_rows({"a": [10, 11, 12, 13, 14], "b": [20, 21, 22, 23, 24]}, metric="quality/fid"),
                             STATS, ["-quality/fid"])
    assert out[(out.method == "a") & (out.over == "b")].iloc[0].poi == 1.0


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
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    back = pd.read_csv(tmp_path / "eval.csv", comment="#")
    assert list(back.columns[:5]) == tables.KEYS and back.iloc[0]["n_seeds"] == 3


def test_summarise_skips_censored_seeds_and_counts_the_rest():
    rows = _seed_rows({"a": [1.0, float("nan"), 3.0]})
    row = tables.summarise(rows, STATS).iloc[0]
    assert row["n_seeds"] == 2 and np.isclose(row["mean"], 2.0)


def test_the_commit_stamp_is_dirty_for_changed_code_not_for_rewritten_outputs(tmp_path, monkeypatch):
    import subprocess

    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa: E731
                                    check=True, capture_output=True)
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
