import pandas as pd

from t2i_rl_bench import replication


def _verdicts(effect: float, verdict: str = "supported") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": "pcpo_fid",
                "model": "m",
                "reward": "r",
                "method": "pcpo",
                "over": "ddpo_is",
                "effect": effect,
                "margin": 0.25,
                "verdict": verdict,
                "kind": "finding",
            }
        ]
    )


def _pairs(difference: float, significant: bool, equivalent: bool = False) -> pd.DataFrame:
    rows = []
    for method, over, sign in (("a", "b", 1.0), ("b", "a", -1.0)):  # both orders, as improvement.csv holds them
        for budget in (64, 512):  # only the final budget is read
            rows.append(
                {
                    "model": "m",
                    "reward": "r",
                    "metric": "reward/r",
                    "budget": budget,
                    "method": method,
                    "over": over,
                    "difference": sign * difference if budget == 512 else -9.0,
                    "significant": significant if budget == 512 else True,
                    "equivalent": equivalent,
                    "margin": 0.01,
                }
            )
    return pd.DataFrame(rows)


def _write(folder, verdicts: pd.DataFrame, pairs: pd.DataFrame):
    folder.mkdir()
    verdicts.to_csv(folder / "verdicts.csv", index=False)
    pairs.to_csv(folder / "improvement.csv", index=False)
    return folder


def test_a_finding_replicates_only_with_the_same_sign(tmp_path):
    study = _write(tmp_path / "s", _verdicts(-2.0), _pairs(0.03, True))
    same = _write(tmp_path / "same", _verdicts(-0.5, "inconclusive"), _pairs(0.001, False))
    flipped = _write(tmp_path / "flip", _verdicts(0.5, "inconclusive"), _pairs(-0.001, False))
    ok = replication.compare(study, same)
    assert list(ok["source"]) == ["verdict", "pairwise"]  # the significant pair once, at the final budget
    assert (ok["outcome"] == "replicated").all()
    assert (replication.compare(study, flipped)["outcome"] == "not replicated").all()


def test_an_equivalence_replicates_only_inside_its_margin_and_a_missing_value_is_not_measured(tmp_path):
    study = _write(tmp_path / "s", _verdicts(0.0, "inconclusive"), _pairs(0.002, False, equivalent=True))
    inside = _write(tmp_path / "in", _verdicts(0.0, "inconclusive"), _pairs(-0.009, False))
    outside = _write(tmp_path / "out", _verdicts(0.0, "inconclusive"), _pairs(0.02, True))
    empty = _write(tmp_path / "none", _verdicts(0.0).iloc[:0], _pairs(0.0, False).iloc[:0])
    assert list(replication.compare(study, inside)["outcome"]) == ["replicated"]
    assert list(replication.compare(study, outside)["outcome"]) == ["not replicated"]
    assert list(replication.compare(study, empty)["outcome"]) == ["not measured"]
    assert "1 of 1 findings replicated" in replication.render(replication.compare(study, inside), "s", "in")
