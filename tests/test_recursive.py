import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from presets import as_declared_before_dancegrpos_noise_level

from t2i_rl_bench import report, study, tables
from t2i_rl_bench.metrics.collapse import decay_rate
from t2i_rl_bench.metrics.statistics import interval
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.recursive import (
    DECAY_METRICS,
    RecursiveSettings,
    finetune,
    generation_block,
    real_count,
    recursive_run,
    training_set,
)
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import train

ROOT = Path(__file__).resolve().parent.parent
JUDGE = ROOT / "results" / "models" / "clip16"
EVALUATION = {"prompts": "heldout", "max_prompts": 3, "images_per_prompt": 2, "seed": 7, "clip_model": str(JUDGE)}


# ---- the data each generation trains on -------------------------------------------------------


def _blocks(generations: int, n: int = 4, n_real: int = 2) -> list:
    real = torch.full((n_real, 3, 2, 2), -1.0)
    return [
        generation_block(torch.full((n, 3, 2, 2), float(g)), [f"g{g}"] * n, g, real, ["real"] * n_real)
        for g in range(1, generations + 1)
    ]


def test_replace_trains_on_the_newest_generation_only_and_accumulate_on_all_so_far():
    blocks = _blocks(3)
    replace, accumulate = training_set(blocks, "replace"), training_set(blocks, "accumulate")
    # replace: generation 3's samples and the real set, nothing older
    assert len(replace) == 6 and set(replace.generation[~replace.real]) == {3}
    assert torch.equal(replace.images[:4], torch.full((4, 3, 2, 2), 3.0))
    # accumulate: every generation's samples, oldest first, each with the real set
    assert len(accumulate) == 18
    assert list(accumulate.generation[~accumulate.real]) == [1] * 4 + [2] * 4 + [3] * 4
    assert accumulate.captions[:6] == ("g1",) * 4 + ("real",) * 2
    # the real share is the same in both modes: the mode is the only difference
    assert replace.real.mean() == accumulate.real.mean() == pytest.approx(1 / 3)
    # at the first generation the two modes train on the same data
    first_r, first_a = training_set(blocks[:1], "replace"), training_set(blocks[:1], "accumulate")
    assert torch.equal(first_r.images, first_a.images) and first_r.captions == first_a.captions
    with pytest.raises(ValueError):
        training_set(blocks, "mix")


@pytest.mark.parametrize(("n", "fraction", "expected"), [(64, 0.0, 0), (64, 0.5, 64), (60, 0.25, 20), (10, 0.9, 90)])
def test_real_count_makes_the_real_fraction_of_a_block(n, fraction, expected):
    assert real_count(n, fraction) == expected
    if expected:
        assert expected / (n + expected) == pytest.approx(fraction)


def test_settings_reject_an_unknown_mode_and_an_all_real_loop_and_ignore_section_keys():
    with pytest.raises(ValueError):
        RecursiveSettings(mode="mix")
    with pytest.raises(ValueError):
        RecursiveSettings(real_fraction=1.0)
    s = RecursiveSettings.from_dict({"enabled": True, "variants": [], "mode": "accumulate", "generations": 6})
    assert s.mode == "accumulate" and s.generations == 6


# ---- the decay rate and its interval over seeds ------------------------------------------------


def test_decay_rate_is_the_least_squares_slope():
    g = np.arange(6)
    assert decay_rate(g, 3.0 - 0.25 * g) == pytest.approx(-0.25)
    assert decay_rate(g, np.where(g == 2, np.nan, 1.0 + 2.0 * g)) == pytest.approx(2.0)  # NaN left out
    assert decay_rate(g, np.polyval([0.5, -1.0, 2.0], g)) == pytest.approx(
        np.polyfit(g, np.polyval([0.5, -1.0, 2.0], g), 1)[0]
    )
    assert np.isnan(decay_rate([0], [1.0]))


def test_the_slope_interval_over_seeds_covers_a_known_slope():
    rng = np.random.default_rng(0)
    g, true, level = np.arange(6), -0.3, 0.95
    covered, excludes_zero = 0, 0
    studies = 2000
    for _ in range(studies):
        # 3 seeds, each its own offset and noise per generation (like FID of a run along the loop)
        slopes = [decay_rate(g, rng.normal(20, 2) + true * g + rng.normal(0, 0.4, g.size)) for _ in range(3)]
        ci = interval(slopes, "t", level)
        covered += ci.low <= true <= ci.high
        excludes_zero += ci.high < 0
    assert 0.93 <= covered / studies <= 0.97  # Student-t over seeds: nominal coverage
    assert excludes_zero / studies > 0.7  # and it sees a slope of this size with 3 seeds (power ~0.78)


# ---- the preset ------------------------------------------------------------------------------


def test_recursive_preset_follows_the_protocol_and_trains_as_the_default_study():
    cfg = study.load(ROOT / "config" / "recursive.yaml", check_paths=False)
    # the two-reward study: the loop trains on attribute_match, the default study's second reward
    # until it became that study's shape_iou half (docs/study.md#the-two-reward-study); as declared
    # then, with DanceGRPO at Flow-GRPO's noise level (its committed runs)
    default = as_declared_before_dancegrpos_noise_level("two_rewards.yaml")
    variants = study.recursive_variants(cfg)
    assert cfg["recursive"]["enabled"] and cfg["recursive"]["generations"] >= 5
    combos = {(v["mode"], v["real_fraction"] > 0) for v in variants.values()}
    assert combos == {("replace", False), ("replace", True), ("accumulate", False), ("accumulate", True)}
    assert {v["real_fraction"] for v in variants.values()} >= {0.0}
    for name, v in variants.items():
        RecursiveSettings.from_dict(v)  # every variant is a valid settings object
        assert v["name"] == name
    # the default study's model, sampler and training: the loop starts from runs trained exactly
    # as the default study trains them (its calibrated learning rates included)
    assert cfg["models"] == default["models"] and cfg["sampling"] == default["sampling"]
    assert all((s or {}).get("drop_last_step") for s in cfg["algorithms"].values())
    for key in study.runs(cfg):
        assert key in study.runs(default)
        assert study.run_spec(cfg, key) == study.run_spec(default, key)
    assert cfg["evaluation"] == default["evaluation"]


def test_variant_names_must_be_unique_and_default_to_the_shared_settings():
    cfg = study.load(ROOT / "config" / "recursive.yaml", check_paths=False)
    plain = {k: v for k, v in cfg.items()}
    plain["recursive"] = {"enabled": True, "mode": "accumulate", "real_fraction": 0.25}
    assert list(study.recursive_variants(study.validate(plain, check_paths=False))) == ["accumulate-real0.25"]
    twice = {**plain, "recursive": {"enabled": True, "variants": [{"name": "a"}, {"name": "a", "mode": "replace"}]}}
    with pytest.raises(study.ConfigError, match="recursive.variants"):
        study.validate(twice, check_paths=False)
    with pytest.raises(study.ConfigError, match="recursive"):
        study.validate({**plain, "recursive": {"real_fraction": 1.0}}, check_paths=False)


# ---- tables and report from loop files with known slopes --------------------------------------


def test_recursive_tables_give_each_variants_decay_with_an_interval_and_the_report_plots_them(tmp_path):
    cfg = study.load(ROOT / "config" / "recursive.yaml", check_paths=False)
    cfg = study.validate({**cfg, "seeds": [0, 1, 2], "algorithms": {"reinforce": {}, "pcpo": {}}}, check_paths=False)
    runs_root, out = tmp_path / "runs", tmp_path / "tables"
    out.mkdir()
    slopes = {("reinforce", "replace-real0"): -2.0, ("pcpo", "replace-real0"): -1.0}
    rng = np.random.default_rng(1)
    for key in study.runs(cfg):
        run = runs_root / key.path
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "finished"}))
        for variant in study.recursive_variants(cfg):
            slope = slopes.get((key.algorithm, variant), 0.0)
            noise = rng.normal(0, 0.5)  # each seed's own slope scatters around the method's
            rows = [
                {"generation": g, "quality/fid": 30 + (slope + noise) * g, "prdc/recall": 0.9 - 0.01 * g}
                for g in range(6)
            ]
            decay = {f"decay/{m}": decay_rate(range(6), [r[m] for r in rows]) for m in ("quality/fid", "prdc/recall")}
            (run / "recursive").mkdir(exist_ok=True)
            (run / "recursive" / f"{variant}.json").write_text(json.dumps({"rows": rows, "decay": decay}))
    prov = tables.provenance(cfg)
    first, summary = tables.recursive_tables(cfg, runs_root, out, prov)
    assert set(first["metric"]) >= {"decay/quality/fid"} and len(summary["variant"].unique()) == 4
    decay = pd.read_csv(out / "recursive_decay.csv", comment="#")
    row = decay[
        (decay.variant == "replace-real0") & (decay.algorithm == "reinforce") & (decay.metric == "decay/quality/fid")
    ].iloc[0]
    assert row.n_seeds == 3 and row.ci_low < row["mean"] < row.ci_high and row.better == "lower"
    assert row.ci_low <= -2.0 + 3 * 0.5 and row.ci_high >= -2.0 - 3 * 0.5
    recall = decay[decay.metric == "decay/prdc/recall"]
    assert np.allclose(recall["mean"], -0.01) and (recall["better"] == "higher").all()
    assert any(
        "decay/<measure>" in line and "Student-t" in line
        for line in (out / "recursive_decay.csv").read_text().splitlines()
    )
    per_gen = pd.read_csv(out / "recursive.csv", comment="#")
    assert sorted(per_gen["generation"].unique()) == list(range(6))
    eval_table = pd.DataFrame(
        [
            {
                "model": "dit16-flow",
                "reward": "attribute_match",
                "algorithm": "reinforce",
                "budget": 0,
                "metric": "quality/fid",
                "mean": 25.0,
            }
        ]
    )
    html = report.recursive_section(out, eval_table)
    assert "self-consuming loop" in html and html.count("<img") == 1 and "accumulate-real0.5" in html


# ---- the loop itself, on a tiny model ----------------------------------------------------------


def _trained_run(tiny_model, folder: Path) -> Path:
    """A tiny REINFORCE run of one round (4 images), its final checkpoint the loop's start."""
    spec = RunSpec(
        model_path=str(tiny_model),
        algorithm="reinforce",
        reward="attribute_match",
        num_steps=3,
        images_per_round=4,
        group_size=2,
        budgets=[4],
    )
    train(spec, folder)
    return folder


def test_self_consuming_loop_measures_every_generation_and_reproduces(tiny_model, tmp_path):
    run = _trained_run(tiny_model, tmp_path / "run")
    run_cfg = RunSpec.read(run)
    settings = RecursiveSettings(
        name="acc",
        mode="accumulate",
        generations=2,
        images_per_generation=6,
        select_top=0.5,
        real_fraction=0.5,
        finetune_steps=2,
        batch_size=4,
    )
    out = recursive_run(run, run_cfg, settings, EVALUATION)
    assert out["start"] == "checkpoint 4" and (run / "recursive" / "acc.json").is_file()
    assert [r["generation"] for r in out["rows"]] == [0, 1, 2]
    # 3 selected samples + 3 real scenes per generation; accumulate keeps generation 1's
    assert [r["train_images"] for r in out["rows"][1:]] == [6, 12]
    assert all(r["real_share"] == 0.5 for r in out["rows"][1:])
    for metric in DECAY_METRICS:
        assert np.isfinite(out["decay"][f"decay/{metric}"]), metric
    assert out["rows"][0]["quality/fid"] != out["rows"][2]["quality/fid"]  # the fine-tunes changed the model
    again = recursive_run(run, run_cfg, settings, EVALUATION)
    assert again["rows"] == out["rows"]
    replace = recursive_run(
        run, run_cfg, RecursiveSettings(**{**settings.__dict__, "name": "rep", "mode": "replace"}), EVALUATION
    )
    assert [r["train_images"] for r in replace["rows"][1:]] == [6, 6]
    assert replace["rows"][1] == out["rows"][1]  # generation 1: the same data in both modes


def test_the_evaluation_sampler_makes_the_loop_independent_of_the_runs_training_sampler(tiny_model, tmp_path):
    """sampler 'training' draws and measures with the run's own sampler (its eta); 'evaluation' with
    the study's evaluation sampler, the same for every run: two runs that differ only in their
    training eta then give the same loop, value for value."""
    run = _trained_run(tiny_model, tmp_path / "run")
    settings = dict(generations=1, images_per_generation=4, finetune_steps=1, batch_size=4)
    evaluation = {**EVALUATION, "eta": 0.0}
    loops = {
        (sampler, eta): recursive_run(
            run,
            dataclasses.replace(RunSpec.read(run), eta=eta),
            RecursiveSettings(name=f"{sampler}-{eta}", sampler=sampler, **settings),
            evaluation,
        )["rows"]
        for sampler in ("training", "evaluation")
        for eta in (0.3, 1.0)
    }
    assert loops[("evaluation", 0.3)] == loops[("evaluation", 1.0)]
    assert loops[("training", 0.3)][0] != loops[("training", 1.0)][0]
    with pytest.raises(ValueError, match="sampler"):
        RecursiveSettings(sampler="ode")


def test_finetune_fits_its_data(tiny_model):
    policy = Policy.load(tiny_model)
    images = torch.rand(1, 3, 16, 16).expand(8, 3, 16, 16).contiguous()
    captions = ["a red circle"] * 8
    g = torch.Generator().manual_seed(0)
    first = finetune(policy, images, captions, steps=3, batch_size=8, lr=1e-3, generator=g)
    later = finetune(policy, images, captions, steps=60, batch_size=8, lr=1e-3, generator=g)
    assert later < first


@pytest.mark.slow
def test_the_loop_end_to_end_gives_slopes_the_collapse_rule_and_pcpos_collapse_verdict(tiny_model, tmp_path):
    """Two methods x two seeds, the fully synthetic loop and one with real data, 2 generations on
    the tiny model: every loop file carries its slopes and the collapse rule's 0/1; the tables give
    the slopes and the collapse rate with an interval over seeds; the declared pcpo_collapse claim
    gets a verdict from them (not 'not run')."""
    from t2i_rl_bench import verdicts
    from t2i_rl_bench.metrics.collapse import COLLAPSE_FID_SLOPE, calibrated_threshold, loop_collapsed

    cfg = study.load(ROOT / "config" / "recursive.yaml", check_paths=False)
    loop = {"enabled": True, "generations": 2, "images_per_generation": 4, "finetune_steps": 2, "batch_size": 4}
    variants = [{"name": "replace-real0", "real_fraction": 0.0}, {"name": "replace-real0.5", "real_fraction": 0.5}]
    cfg = study.validate(
        {
            **cfg,
            "seeds": [0, 1],
            "algorithms": {"pcpo": {}, "ddpo_is": {}},
            "recursive": {**loop, "variants": variants},
        },
        check_paths=False,
    )
    runs_root, out = tmp_path / "runs", tmp_path / "tables"
    out.mkdir()
    for key in study.runs(cfg):
        run = runs_root / key.path
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "finished"}))
        spec = RunSpec(
            model_path=str(tiny_model),
            algorithm=key.algorithm,
            reward="attribute_match",
            seed=key.seed,
            num_steps=3,
            images_per_round=4,
            group_size=2,
            budgets=[4],
        )
        for v in study.recursive_variants(cfg).values():
            res = recursive_run(run, spec, RecursiveSettings.from_dict(v), EVALUATION)
            fid = res["decay"]["decay/quality/fid"]
            assert res["start"] == "base" and np.isfinite(fid)
            assert res["decay"]["collapse/loop_collapsed"] == float(fid > COLLAPSE_FID_SLOPE)
    first, summary = tables.recursive_tables(cfg, runs_root, out, tables.provenance(cfg))
    decay = pd.read_csv(out / "recursive_decay.csv", comment="#")
    rate = decay[decay.metric == "collapse/loop_collapsed"]
    assert len(rate) == 4 and (rate.n_seeds == 2).all() and rate["mean"].between(0, 1).all()
    assert (decay[decay.metric == "decay/quality/fid"].ci_low.notna()).all()
    eval_rows = pd.DataFrame(
        [
            {"model": "dit16-flow", "reward": "attribute_match", "algorithm": a, "seed": s, "budget": 0}
            | {"metric": "reward/attribute_match", "value": 0.5, "status": "finished"}
            for a in ("pcpo", "ddpo_is")
            for s in (0, 1)
        ]
    )
    empty = pd.DataFrame(columns=eval_rows.columns)
    lines = verdicts.evaluate(cfg, verdicts.Tables(eval_rows, empty, empty, first))
    line = lines[lines["id"] == "pcpo_collapse"].iloc[0]
    assert line.verdict in ("supported", "contradicted", "inconclusive") and line.n_method == 2
    # the rule's calibration: half the smallest fully synthetic slope, above every real-data slope
    assert calibrated_threshold([9.5, 15.0], [0.06, 0.12]) == (4.75, True)
    assert calibrated_threshold([0.1], [0.2]) == (0.05, False)
    assert np.isnan(loop_collapsed(float("nan")))
