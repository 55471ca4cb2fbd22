"""Config helpers shared by the preset tests."""

from __future__ import annotations

from pathlib import Path

from t2i_rl_bench import study

ROOT = Path(__file__).resolve().parents[1]


def as_declared_before_dancegrpos_noise_level(name: str) -> dict:
    """config/<name> as it was before 2026-12-08, when DanceGRPO sampled its SDE at sampling.eta 0.7 (Flow-GRPO's
    noise level) at the edge rate 3e-6, declared unbracketed (docs/study.md#dancegrpos-noise-level). The presets
    declared on the default study before then keep those committed DanceGRPO runs; every other arm is today's."""
    cfg = study.load(ROOT / "config" / name, check_paths=False)
    assert cfg["algorithms"]["dancegrpo"] == {"drop_last_step": True, "lr": 1e-4, "eta": 0.3}
    assert not cfg["analysis"].get("unbracketed_rates")
    cfg["algorithms"] = {**cfg["algorithms"], "dancegrpo": {"drop_last_step": True, "lr": 3e-6}}
    cfg["analysis"] = {**cfg["analysis"], "unbracketed_rates": ["dancegrpo"]}
    return cfg
