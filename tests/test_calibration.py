"""The learning-rate calibration rule (bench/calibration.py) on run folders with known answers."""

import json
from pathlib import Path

import pandas as pd
import pytest

from t2i_rl_bench import calibration, study


def _cfg():
    return {
        "seeds": [100, 101],
        "models": {"m": {}},
        "rewards": ["r"],
        "train": {"lr": 3e-4, "budgets": [64, 128]},
        "algorithms": {
            "a-slow": {"plugin": "a", "lr": 1e-4},
            "a-fast": {"plugin": "a", "lr": 1e-3},
            "b-slow": {"plugin": "b", "lr": 1e-4},
            "b": {},  # runs at train.lr
            "c": {},  # one rate only: not part of the grid
        },
    }


def _write_runs(tmp_path, train_reward, heldout):
    """train_reward[label] = per-round rewards; heldout[label] = {budget: value} (same for both seeds)."""
    cfg = _cfg()
    rows = []
    for key in study.runs(cfg):
        run = tmp_path / key.path
        run.mkdir(parents=True)
        lines = [
            json.dumps({"images_seen": 32 * (i + 1), "reward_mean": r})
            for i, r in enumerate(train_reward[key.algorithm])
        ]
        (run / "log.jsonl").write_text("\n".join(lines) + "\n")
        for budget, value in heldout[key.algorithm].items():
            rows.append(
                {
                    "model": key.model,
                    "reward": key.reward,
                    "algorithm": key.algorithm,
                    "seed": key.seed,
                    "budget": budget,
                    "metric": "reward/r",
                    "value": value,
                }
            )
    return cfg, pd.DataFrame(rows)


def test_the_grid_is_the_methods_run_at_several_rates():
    grid = calibration.lr_grid(_cfg())
    assert sorted(grid) == ["a", "b"]
    assert [(p.label, p.lr) for p in grid["b"]] == [("b-slow", 1e-4), ("b", 3e-4)]


def test_the_rate_with_the_highest_mean_training_reward_is_chosen_and_the_best_budget_recommended(tmp_path):
    train = {
        "a-slow": [0.5, 0.55, 0.6, 0.65],  # mean 0.575
        "a-fast": [0.5, 0.9, 0.3, 0.2],  # learns, then collapses: mean 0.475
        "b-slow": [0.5, 0.5, 0.5, 0.5],
        "b": [0.5, 0.6, 0.6, 0.6],
        "c": [0.9, 0.9, 0.9, 0.9],
    }
    held = {
        "a-slow": {0: 0.5, 64: 0.58, 128: 0.55},
        "a-fast": {0: 0.5, 64: 0.7, 128: 0.2},
        "b-slow": {0: 0.5, 64: 0.5, 128: 0.5},
        "b": {0: 0.5, 64: 0.6, 128: 0.59},
        "c": {0: 0.5, 64: 0.9, 128: 0.95},  # outside the grid: never counted
    }
    cfg, seed_rows = _write_runs(tmp_path, train, held)
    table, final = calibration.calibrate(cfg, tmp_path, seed_rows)
    chosen = table[table["chosen"]].set_index("method")["label"].to_dict()
    assert chosen == {"a": "a-slow", "b": "b"}
    assert table.set_index("label").loc["a-fast", "mean_train_reward"] == pytest.approx(0.475)
    assert table.set_index("label").loc["b", "heldout_128"] == pytest.approx(0.59)
    # both chosen curves peak at 64: the study must train past it, to the next budget
    assert final == 128
    # a-slow is the lowest rate of a's grid: flagged, not bracketed; b's 3e-4 is the highest of b's
    t = table.set_index("label")
    assert t.loc["a-slow", "edge"] == "lowest" and not t.loc["a-slow", "bracketed"]
    assert t.loc["b", "edge"] == "highest"


def test_a_study_without_a_grid_has_no_calibration(tmp_path):
    cfg = _cfg()
    cfg["algorithms"] = {"a": {}, "b": {}}
    table, final = calibration.calibrate(cfg, tmp_path, pd.DataFrame())
    assert table.empty and final is None


def _part(scores: dict[float, tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"label": f"x-{lr:g}", "lr": lr, "mean_train_reward": m, "train_reward_se": se}
            for lr, (m, se) in scores.items()
        ]
    )


def test_one_standard_error_rule_takes_the_gentler_rate_on_a_tie_and_flags_edges():
    # 3e-4 is best by 0.0003, within its se 0.002: the rule takes 1e-4 (the old rule's 0.8734 vs 0.8730 case)
    tie = _part({1e-5: (0.85, 0.002), 1e-4: (0.8730, 0.002), 3e-4: (0.8733, 0.002), 1e-3: (0.70, 0.01)})
    assert calibration.choose(tie) == "x-0.0001"
    # a clear winner stays the winner, whatever its rate
    clear = _part({1e-5: (0.85, 0.002), 1e-4: (0.86, 0.002), 3e-4: (0.89, 0.002), 1e-3: (0.70, 0.01)})
    assert calibration.choose(clear) == "x-0.0003"
    # one seed (no se): the best itself
    one = _part({1e-4: (0.87, float("nan")), 3e-4: (0.871, float("nan"))})
    assert calibration.choose(one) == "x-0.0003"


def test_no_final_budget_while_a_curve_still_peaks_at_the_last_budget():
    table = pd.DataFrame(
        [
            {"chosen": True, "heldout_64": 0.6, "heldout_128": 0.7},  # still rising at 128
            {"chosen": True, "heldout_64": 0.7, "heldout_128": 0.6},
        ]
    )
    assert calibration.final_budget(table, [64, 128]) is None
    table.loc[0, "heldout_128"] = 0.5
    assert calibration.final_budget(table, [64, 128]) == 128


def test_the_evaluation_score_sees_what_a_flat_training_reward_does_not(tmp_path):
    """analysis.calibration_score: evaluation scores each run by the mean of its evaluation curve
    over the trained budgets (not budget 0); a training reward flat across rates (DanceGRPO's on
    its own SDE) sends the training rule to the lowest rate, the evaluation rule to the rate whose
    evaluation rises; the columns are named by the evaluation's prompt set."""
    flat = [0.5, 0.5, 0.5, 0.5]
    train = {"a-slow": flat, "a-fast": flat, "b-slow": flat, "b": flat, "c": flat}
    held = {
        "a-slow": {0: 0.5, 64: 0.50, 128: 0.52},  # mean over 64, 128: 0.51
        "a-fast": {0: 0.5, 64: 0.60, 128: 0.58},  # 0.59
        "b-slow": {0: 0.5, 64: 0.55, 128: 0.55},
        "b": {0: 0.5, 64: 0.55, 128: 0.55},  # a tie: the gentler rate
        "c": {0: 0.5, 64: 0.9, 128: 0.9},
    }
    cfg, seed_rows = _write_runs(tmp_path, train, held)
    by_training, _ = calibration.calibrate(cfg, tmp_path, seed_rows)
    assert by_training[by_training["chosen"]].set_index("method")["label"].to_dict() == {"a": "a-slow", "b": "b-slow"}
    cfg["analysis"] = {"calibration_score": "evaluation"}
    cfg["evaluation"] = {"prompts": "train"}
    table, final = calibration.calibrate(cfg, tmp_path, seed_rows)
    # declared, the study's one-rate method (c) is its own, unbracketed, grid point
    assert table[table["chosen"]].set_index("method")["label"].to_dict() == {"a": "a-fast", "b": "b-slow", "c": "c"}
    t = table.set_index("label")
    assert t.loc["a-fast", "score"] == pytest.approx(0.59) and t.loc["a-slow", "score"] == pytest.approx(0.51)
    assert t.loc["a-fast", "score_se"] == pytest.approx(0.0)  # both seeds equal
    assert calibration.curve_columns(table.columns) == ["train_0", "train_64", "train_128"]
    assert final == 128  # a-fast peaks at 64, b-slow ties at 64 (its first maximum)
    assert "mean evaluation reward" in calibration.selection_rule("evaluation", "train")
    cfg["analysis"] = {"calibration_score": "held-out"}
    with pytest.raises(ValueError, match="calibration_score"):
        calibration.calibrate(cfg, tmp_path, seed_rows)


def test_a_declared_calibration_at_one_rate_per_method_reads_its_final_budget(tmp_path):
    """A study that declares a calibration score runs each method's chosen rate longer: every
    method is its own grid point, chosen, flagged as a single rate (never bracketed), and the
    final budget is the first after the latest peak of their curves."""
    train = {k: [0.5, 0.5] for k in ("a-slow", "a-fast", "b-slow", "b", "c")}
    held = {
        "a-slow": {0: 0.5, 64: 0.6, 128: 0.55},
        "a-fast": {0: 0.5, 64: 0.6, 128: 0.55},
        "b-slow": {0: 0.5, 64: 0.6, 128: 0.55},
        "b": {0: 0.5, 64: 0.6, 128: 0.55},
        "c": {0: 0.5, 64: 0.7, 128: 0.65},
    }
    cfg, seed_rows = _write_runs(tmp_path, train, held)
    cfg["algorithms"] = {"a-slow": {"plugin": "a", "lr": 1e-4}, "c": {}}
    seed_rows = seed_rows[seed_rows["algorithm"].isin(["a-slow", "c"])]
    assert calibration.lr_grid(cfg) == {}  # undeclared: no grid, no calibration table
    cfg["analysis"] = {"calibration_score": "evaluation"}
    table, final = calibration.calibrate(cfg, tmp_path, seed_rows)
    assert set(table["label"]) == {"a-slow", "c"} and table["chosen"].all()
    assert (table["edge"] == "single rate").all() and not table["bracketed"].any()
    assert final == 128  # both curves peak at 64


def test_only_a_study_that_declares_a_score_reads_single_rates_as_a_grid():
    """Validation fills the schema's defaults, so the declaration must survive it: a validated study
    that runs each method at one rate has no grid (no calibration table, no report section), a
    study with two rates of a method has that method's grid, and one that declares a score has
    every method's."""
    root = Path(__file__).resolve().parents[1] / "config"
    assert calibration.lr_grid(study.load(root / "ode_rates.yaml", check_paths=False)) == {}
    assert calibration.lr_grid(study.load(root / "config.yaml", check_paths=False)) == {}
    controlled = calibration.lr_grid(study.load(root / "controlled.yaml", check_paths=False))
    assert {m: [p.lr for p in pts] for m, pts in controlled.items()} == {"ddpo_is": [3e-5, 1e-4], "pcpo": [3e-5, 1e-4]}
    long = study.load(root / "calibration_long.yaml", check_paths=False)
    assert len(calibration.lr_grid(long)) == len(long["algorithms"]) == 6
    assert calibration.score_kind(study.load(root / "config.yaml", check_paths=False)) == "training"


def test_a_reading_on_fewer_seeds_is_recomputed_from_the_per_seed_rows(tmp_path):
    """grid_per_seed's rows (the aggregate's calibration_per_seed.csv) give calibrate's table on all seeds, and on
    one seed the table of a calibration of that seed alone: a choice that the seeds change is read from the tables."""
    train = {label: [0.5, 0.6, 0.6, 0.6] for label in ("a-slow", "a-fast", "b-slow", "b", "c")}
    held = {label: {0: 0.5, 64: 0.6, 128: 0.6} for label in train}
    cfg, seed_rows = _write_runs(tmp_path, train, held)
    fast = next(k for k in study.runs(cfg) if k.algorithm == "a-fast" and k.seed == 101)
    lines = [json.dumps({"images_seen": 32 * (i + 1), "reward_mean": r}) for i, r in enumerate([0.9] * 4)]
    (tmp_path / fast.path / "log.jsonl").write_text("\n".join(lines) + "\n")  # a-fast wins on seed 101 alone
    budgets, prefix = [64, 128], calibration.curve_prefix(cfg)
    per_seed = calibration.grid_per_seed(cfg, tmp_path, seed_rows)
    assert sorted(per_seed["seed"]) == [100] * 4 + [101] * 4
    full, _ = calibration.calibrate(cfg, tmp_path, seed_rows)
    pd.testing.assert_frame_equal(calibration.grid_table(per_seed, budgets, prefix)[0], full)
    for seed, winner in ((100, "a-slow"), (101, "a-fast")):
        alone, _ = calibration.calibrate({**cfg, "seeds": [seed]}, tmp_path, seed_rows)
        subset, _ = calibration.grid_table(per_seed[per_seed["seed"] == seed].reset_index(drop=True), budgets, prefix)
        pd.testing.assert_frame_equal(subset, alone)
        assert calibration.choose(subset[subset["method"] == "a"]) == winner
