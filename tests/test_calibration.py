"""The learning-rate calibration rule (bench/calibration.py) on run folders with known answers."""

import json

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
    assert final == 64  # (0.58 + 0.6) / 2 at 64 > (0.55 + 0.59) / 2 at 128


def test_a_study_without_a_grid_has_no_calibration(tmp_path):
    cfg = _cfg()
    cfg["algorithms"] = {"a": {}, "b": {}}
    table, final = calibration.calibrate(cfg, tmp_path, pd.DataFrame())
    assert table.empty and final is None
