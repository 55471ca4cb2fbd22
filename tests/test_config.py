import copy
import dataclasses
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from presets import as_declared_before_dancegrpos_noise_level as _as_declared_before_dancegrpos_noise_level

from t2i_rl_bench import study
from t2i_rl_bench.spec import RunSpec

ROOT = Path(__file__).resolve().parent.parent


def _base():
    return yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())


@pytest.mark.parametrize("preset", ["config.yaml", "quick.yaml", "calibration.yaml"])
def test_presets_validate_and_fill_defaults(preset):
    cfg = study.load(ROOT / "config" / preset)
    assert cfg["statistics"]["confidence"] == 0.95
    assert cfg["sampling"]["logp_reduce"] == "mean"
    assert len(study.runs(cfg)) == len(cfg["models"]) * len(cfg["rewards"]) * len(cfg["algorithms"]) * len(cfg["seeds"])


@pytest.mark.parametrize(
    "edit, key",
    [
        (
            lambda c: c["algorithms"].update({"no_such_algo": {}}),
            r"algorithms\.no_such_algo.*known algorithms: .*reinforce",
        ),
        (lambda c: c.update(rewards=["no_such_reward"]), r"rewards\[0\].*unknown reward"),
        (lambda c: c.update(seeds=[]), r"'seeds'"),
        (lambda c: c.update(seeds=[1, 1]), r"'seeds'.*non-unique"),
        (lambda c: c["train"].update(budgets=[32, 16]), r"train\.budgets.*strictly increasing"),
        (lambda c: c["train"].update(budgets=[20]), r"train\.budgets.*multiple"),
        (lambda c: c.update(algorithms={}), r"'algorithms'"),
        (lambda c: c["algorithms"].update(reinforce={"clip_rnage": 1}), r"algorithms\.reinforce.*clip_rnage"),
        (lambda c: c["sampling"].update(eta=0), r"sampling\.eta"),
        (lambda c: c.update(unknown_key=1), r"unknown_key"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(edit, key):
    cfg = copy.deepcopy(_base())
    edit(cfg)
    with pytest.raises(study.ConfigError, match=key):
        study.validate(cfg)


def test_a_missing_real_model_is_refused_naming_key_and_path(tmp_path):
    cfg = _base()
    cfg["models"] = {"sd15": {"family": "sd", "path": str(tmp_path / "nowhere")}}
    with pytest.raises(study.ConfigError, match=r"models\.sd15\.path.*nowhere"):
        study.validate(cfg)


def test_run_spec_carries_the_grid_point():
    cfg = study.load(ROOT / "config" / "quick.yaml")
    key = study.runs(cfg)[-1]
    spec = study.run_spec(cfg, key)
    assert spec.seed == key.seed and spec.algorithm == key.algorithm
    assert list(spec.budgets) == cfg["train"]["budgets"] and spec.num_steps == cfg["sampling"]["num_steps"]


def test_run_spec_round_trips_through_json_and_holds_the_defaults():
    cfg = study.load(ROOT / "config" / "quick.yaml")
    for key in study.runs(cfg):
        spec = study.run_spec(cfg, key)
        assert RunSpec.from_json(spec.to_json()) == spec
    spec = study.run_spec(cfg, study.runs(cfg)[0])
    # what the quick preset leaves out comes from the RunSpec's own defaults, through the config
    defaults = RunSpec(model_path="m", algorithm="a", reward="r")
    assert (spec.lr, spec.betas, spec.adam_eps, spec.reuse_sampling_graph) == (
        defaults.lr,
        defaults.betas,
        defaults.adam_eps,
        defaults.reuse_sampling_graph,
    )
    assert cfg["train"]["betas"] == list(defaults.betas) and cfg["sampling"]["logp_reduce"] == defaults.logp_reduce
    with pytest.raises(ValueError, match="unknown field"):
        RunSpec.from_dict({**spec.to_dict(), "threads": 1})


def test_optimiser_and_graph_settings_are_reachable_from_the_config():
    cfg = _base()
    cfg["train"] = {**cfg.get("train", {}), "betas": [0.8, 0.95], "adam_eps": 1e-6, "reuse_sampling_graph": True}
    spec = study.run_spec(study.validate(cfg), study.runs(study.validate(cfg))[0])
    assert (spec.betas, spec.adam_eps, spec.reuse_sampling_graph) == ((0.8, 0.95), 1e-6, True)
    cfg["train"]["betas"] = [0.9, 1.5]
    with pytest.raises(study.ConfigError, match=r"train\.betas"):
        study.validate(cfg)


@pytest.mark.parametrize(("value", "message"), [(-1, "> 0"), ("abc", "expected float"), (0, "> 0")])
def test_an_algorithm_setting_is_checked_for_type_and_range_naming_the_key(value, message):
    cfg = _base()
    cfg["algorithms"] = {"mine": {"plugin": "ddpo_is", "clip_range": value}}
    with pytest.raises(study.ConfigError, match=rf"algorithms\.mine\.clip_range.*{message}"):
        study.validate(cfg)


def test_a_grid_over_its_gpu_hours_budget_is_refused_with_the_numbers():
    cfg = _base()
    cfg["resources"] = {"gpu_hours_budget": 2.0, "train": {"gpu": 1, "runtime": 30}}
    n = len(cfg["seeds"]) * len(cfg["algorithms"]) * len(cfg["rewards"])
    with pytest.raises(study.ConfigError, match=rf"gpu_hours_budget.*{n / 2:.1f} GPU-hours.*budget is 2"):
        study.validate(cfg)
    cfg["resources"]["gpu_hours_budget"] = n / 2
    assert study.gpu_hours(study.validate(cfg)) == n / 2


def test_slurm_profile_names_the_executor():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["rerun-incomplete"] is True


def test_a_label_may_run_its_method_at_its_own_learning_rate():
    cfg = copy.deepcopy(_base())
    cfg["algorithms"] = {"reinforce": {}, "reinforce-fast": {"plugin": "reinforce", "lr": 1.0e-3}}
    cfg["train"]["lr"] = 2.0e-4
    valid = study.validate(cfg)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid) if k.seed == 0}
    assert specs["reinforce"].lr == 2.0e-4
    assert specs["reinforce-fast"].lr == 1.0e-3 and specs["reinforce-fast"].algorithm == "reinforce"
    assert "lr" not in specs["reinforce-fast"].algorithm_settings  # the optimiser's, not the loss's


@pytest.mark.parametrize("value", [0, -1e-4, "fast", True])
def test_a_labels_learning_rate_is_checked_naming_the_key(value):
    cfg = copy.deepcopy(_base())
    cfg["algorithms"]["reinforce"] = {"lr": value}
    with pytest.raises(study.ConfigError, match=r"algorithms\.reinforce\.lr"):
        study.validate(cfg)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["sampling"].update(guidance=float("nan")), "sampling.guidance"),
        (lambda c: c["algorithms"]["reinforce"].update(lr=float("inf")), "algorithms.reinforce.lr"),
        (lambda c: c.update(rewards=[{"jpeg_compressibility": float("-inf")}]), "rewards[0].jpeg_compressibility"),
    ],
)
def test_a_non_finite_number_anywhere_is_refused_naming_its_key(edit, key):
    cfg = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    edit(cfg)
    with pytest.raises(study.ConfigError, match=re.escape(f"config key '{key}'") + ".*not a finite number"):
        study.validate(cfg, check_paths=False)


def test_labels_that_differ_only_in_case_or_are_not_strings_are_refused():
    cfg = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    cfg["algorithms"] = {"Loop": {"plugin": "loop"}, "loop": {}}
    with pytest.raises(study.ConfigError, match=r"config key 'algorithms\.loop': differs from 'algorithms\.Loop'"):
        study.validate(cfg, check_paths=False)
    cfg["algorithms"] = {1: {"plugin": "loop"}}  # YAML reads `1:` as an integer
    with pytest.raises(study.ConfigError, match=r"config key 'algorithms\.1': the key 1 must be a string"):
        study.validate(cfg, check_paths=False)


def test_a_seed_beyond_what_the_generators_take_is_refused():
    cfg = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    cfg["seeds"] = [0, 2**63]
    with pytest.raises(study.ConfigError, match=r"config key 'seeds\.1'"):
        study.validate(cfg, check_paths=False)


def test_a_label_may_train_in_micro_batches_of_its_own():
    cfg = copy.deepcopy(_base())
    cfg["algorithms"] = {"reinforce": {}, "prdp": {"micro_batch": 8}}
    cfg["train"]["micro_batch"] = 16
    valid = study.validate(cfg)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid) if k.seed == 0}
    assert (specs["reinforce"].micro_batch, specs["prdp"].micro_batch) == (16, 8)
    assert "micro_batch" not in specs["prdp"].algorithm_settings  # memory, not a loss setting
    for bad in (0, 2.5, "8", True):
        cfg["algorithms"]["prdp"] = {"micro_batch": bad}
        with pytest.raises(study.ConfigError, match=r"algorithms\.prdp\.micro_batch"):
            study.validate(cfg)


def test_a_label_may_sample_at_a_noise_level_of_its_own():
    """algorithms.<label>.eta is that label's sampling.eta (DanceGRPO's FLUX recipe samples at 0.3, Flow-GRPO's
    SDE at 0.7): its runs alone change; a bad value, or a cps angle outside [0, 1], names the label's key."""
    cfg = copy.deepcopy(_base())
    cfg["models"] = yaml.safe_load((ROOT / "config" / "two_rewards.yaml").read_text())["models"]  # a flow model
    cfg["algorithms"] = {"reinforce": {}, "dancegrpo": {"eta": 0.3}}
    cfg["sampling"]["eta"] = 0.7
    valid = study.validate(cfg)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid) if k.seed == 0}
    assert (specs["reinforce"].eta, specs["dancegrpo"].eta) == (0.7, 0.3)
    assert "eta" not in specs["dancegrpo"].algorithm_settings  # the sampler's, not a loss setting
    plain = copy.deepcopy(cfg)
    plain["algorithms"]["dancegrpo"] = {}
    same = study.validate(plain)
    assert study.run_spec(same, study.runs(same)[0]) == specs["reinforce"]  # the other label's runs are unchanged
    for bad in (0, -0.3, "0.3", True):
        cfg["algorithms"]["dancegrpo"] = {"eta": bad}
        with pytest.raises(study.ConfigError, match=r"algorithms\.dancegrpo\.eta"):
            study.validate(cfg)
    cfg["algorithms"]["dancegrpo"] = {"eta": 1.5, "flow_variant": "cps"}
    with pytest.raises(study.ConfigError, match=r"'algorithms\.dancegrpo\.eta'.*cps"):
        study.validate(cfg)
    cfg["algorithms"]["dancegrpo"] = {"eta": 0.5, "flow_variant": "cps"}
    cfg["sampling"]["eta"] = (
        1.5  # the other label's (Flow-GRPO's) SDE may sample above 1; this one's own 0.5 is an angle
    )
    valid = study.validate(cfg)
    specs = {k.algorithm: study.run_spec(valid, k) for k in study.runs(valid) if k.seed == 0}
    assert (specs["reinforce"].eta, specs["dancegrpo"].eta, specs["dancegrpo"].flow_variant) == (1.5, 0.5, "cps")


def test_the_default_study_trains_prdp_alone_in_smaller_micro_batches():
    """PRDP's micro-batches of whole groups keep its job under 2 GiB (docs/usage.md#speed-benchmark); every other
    method keeps the study's micro-batch, so its runs are the ones they were."""
    cfg = study.load(ROOT / "config" / "config.yaml", check_paths=False)
    specs = {k.algorithm: study.run_spec(cfg, k) for k in study.runs(cfg) if k.seed == cfg["seeds"][0]}
    assert specs["prdp"].micro_batch < cfg["train"]["images_per_round"]
    assert specs["prdp"].micro_batch % cfg["train"]["group_size"] == 0  # whole groups fill it
    others = {s.micro_batch for k, s in specs.items() if k != "prdp"}
    assert others == {cfg["train"]["micro_batch"]} == {RunSpec.micro_batch}


# ---------------------------------------------------------------- numbers, duplicate keys, labels
def test_a_number_with_an_exponent_reads_as_a_number_however_yaml_read_it(tmp_path):
    # YAML 1.1 (PyYAML, which Snakemake reads the config with) reads `2e-4` as the text '2e-4'
    text = (ROOT / "config" / "quick.yaml").read_text() + "\n"
    text = text.replace("  ddpo_is: {}", "  ddpo_is: {clip_range: 2e-4}").replace("train:\n", "train:\n  lr: 1E-4\n")
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["algorithms"]["ddpo_is"]["clip_range"] == "2e-4"
    for cfg in (study.load(path, check_paths=False), study.validate(yaml.safe_load(text), check_paths=False)):
        assert cfg["algorithms"]["ddpo_is"]["clip_range"] == 2e-4 and cfg["train"]["lr"] == 1e-4
        spec = study.run_spec(cfg, next(k for k in study.runs(cfg) if k.algorithm == "ddpo_is"))
        assert spec.algorithm_settings == {"clip_range": 2e-4} and spec.lr == 1e-4


def _yaml_examples():
    """Every ```yaml block of README.md and docs/*.md (a block under `<!-- not a study config -->`
    is left out), with the python blocks of the same file (the plugins an example names)."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        python = re.findall(r"```python\n(.*?)```", text, re.S)
        for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            if text[: m.start()].rstrip().endswith("<!-- not a study config -->"):
                continue
            line = text[: m.start()].count("\n") + 1
            found.append(pytest.param(m.group(1), python, id=f"{doc.name}:{line}"))
    return found


@pytest.mark.parametrize("example, python", _yaml_examples())
def test_every_yaml_example_of_the_readme_and_docs_validates(example, python, tmp_path, monkeypatch):
    """A fragment is merged over the quick preset (its top-level keys replace the preset's); a
    plugin file it names (`my_algo.py:Name`) is written from the document's python block that
    defines Name."""
    fragment = study.ConfigLoader(example).get_single_data()  # numbers and duplicate keys as `validate` reads them
    assert isinstance(fragment, dict), example
    monkeypatch.chdir(tmp_path)
    for file, name in set(re.findall(r"([\w./-]+\.py):(\w+)", example)):
        code = next((c for c in python if re.search(rf"^(class|def) {name}\b", c, re.M)), None)
        assert code is not None, f"the example names {file}:{name}, and no python block of its document defines {name}"
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(code)
    if "extends" in fragment:  # a preset that extends a committed one: its path is from the repository root
        (tmp_path / "config").symlink_to(ROOT / "config")
    cfg = {**_base(), **fragment}
    if "models" in fragment and "algorithms" not in fragment:  # a model example: with a method its family samples
        cfg["algorithms"] = {"reinforce": {}}
    study.validate(cfg, check_paths=False)


def test_a_key_given_twice_is_refused_naming_the_key_and_the_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        (ROOT / "config" / "quick.yaml").read_text().replace("  loop: {}\n", "  loop: {}\n  reinforce: {}\n")
    )
    line = path.read_text().splitlines().index("  reinforce: {}", 12) + 1
    with pytest.raises(study.ConfigError, match=rf"study\.yaml: line {line}: the key 'reinforce' is given twice"):
        study.load(path, check_paths=False)
    with pytest.raises(study.ConfigError, match="given twice"):  # what the Snakefile calls on its config files
        study.check_files([path])


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c.update(study="stüdy"), "study"),
        (lambda c: c.update(algorithms={"reinförce": {"plugin": "reinforce"}}), "algorithms.reinförce"),
        (lambda c: c.update(models={"tïny": c["models"]["dit16-ddim"]}), "models.tïny"),
        (lambda c: c.update(algorithms={"a+b": {"plugin": "reinforce"}}), "algorithms.a+b"),
        (lambda c: c.update(study="a:b"), "study"),
    ],
)
def test_every_label_follows_one_ascii_rule_stated_in_the_error(edit, key):
    cfg = _base()
    edit(cfg)
    rule = "use ASCII letters, digits, '-', '_' and '.' only"
    with pytest.raises(study.ConfigError, match=rf"config key '{re.escape(key)}'.*{re.escape(rule)}"):
        study.validate(cfg, check_paths=False)


def test_validate_prints_one_line_per_error_and_the_traceback_only_with_debug(tmp_path, capsys):
    from t2i_rl_bench.cli import main

    path = tmp_path / "study.yaml"
    cfg = _base()
    cfg["sampling"]["num_steps"] = "six"
    cfg["train"]["budgets"] = ["x"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as done:
        main(["validate", str(path)])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{path}: config key 'sampling.num_steps': 'six' is not of type 'integer'",
        f"{path}: config key 'train.budgets.0': 'x' is not of type 'integer'",
    ]
    with pytest.raises(study.ConfigError):
        main(["validate", str(path), "--debug"])


def test_the_default_study_is_the_two_reward_study_on_its_primary_reward():
    """docs/study.md#the-two-reward-study: the default study's runs are the two-reward study's runs on
    its primary reward, specified exactly as there (so each is the same run, to every digit), and every
    setting but the study's name and its training rewards is the two-reward study's."""
    default = study.load(ROOT / "config" / "config.yaml", check_paths=False)
    full = study.load(ROOT / "config" / "two_rewards.yaml", check_paths=False)
    assert default["rewards"] == [full["analysis"]["primary"]] and len(full["rewards"]) == 2
    assert default["rewards"][0] in full["rewards"]
    keys = set(study.runs(full))
    assert len(study.runs(default)) * 2 == len(keys)
    for key in study.runs(default):
        assert key in keys and study.run_spec(default, key) == study.run_spec(full, key), key
    strip = {"study", "rewards"}
    assert {k: v for k, v in default.items() if k not in strip} == {k: v for k, v in full.items() if k not in strip}


def test_the_replication_preset_is_the_two_reward_study_on_other_seeds():
    """docs/study.md#replication-on-unseen-seeds: the same design exactly, on seeds no other study uses."""
    default = study.load(ROOT / "config" / "two_rewards.yaml", check_paths=False)
    replication = study.load(ROOT / "config" / "replication.yaml", check_paths=False)
    calibration = study.load(ROOT / "config" / "calibration.yaml", check_paths=False)
    assert not set(replication["seeds"]) & (set(default["seeds"]) | set(calibration["seeds"]))
    assert len(replication["seeds"]) == len(default["seeds"])
    strip = {"study", "seeds"}
    assert {k: v for k, v in replication.items() if k not in strip} == {
        k: v for k, v in default.items() if k not in strip
    }


def test_the_gradient_preset_probes_the_default_studys_runs_at_the_final_budget():
    """config/gradient.yaml: the default study's run specs exactly (its runs can be copied in and its
    evaluation repeats the default study's), every method of the default study on its primary
    reward, and only the probe changed: more minibatches, at the final budget."""
    cfg = study.load(ROOT / "config" / "gradient.yaml", check_paths=False)
    default = _as_declared_before_dancegrpos_noise_level("config.yaml")
    assert set(cfg["algorithms"]) == set(default["algorithms"]) and cfg["seeds"] == default["seeds"]
    assert cfg["rewards"] == [default["analysis"]["primary"]]
    for key in study.runs(cfg):
        assert key in study.runs(default)
        assert study.run_spec(cfg, key) == study.run_spec(default, key)
    assert cfg["evaluation"] == default["evaluation"]
    assert cfg["probe"]["at"] == "final" and cfg["probe"]["minibatches"] > default["probe"]["minibatches"]
    claims = {c["id"]: c for c in cfg["verdicts"]["claims"]}
    assert {"pcpo_snr", "loop_variance"} <= set(claims) and all(c["at"] == "final" for c in claims.values())


def test_the_rate_check_shares_the_controlled_and_default_runs_and_adds_higher_rates():
    """config/ratecheck.yaml: its runs that the controlled or the default study also has are
    specified exactly as there (copied in); each arm it adds is a method at a higher rate, otherwise
    that method's settings."""
    cfg = study.load(ROOT / "config" / "ratecheck.yaml", check_paths=False)
    shared = 0
    for name in ("controlled.yaml", "config.yaml"):
        other = study.load(ROOT / "config" / name, check_paths=False)
        keys = set(study.runs(other))
        for key in study.runs(cfg):
            if key in keys:
                assert study.run_spec(cfg, key) == study.run_spec(other, key), key
                shared += 1
    # the control's three arms (its ddpo_is and pcpo are the default's too) and the default's reinforce and loop
    assert shared == 3 * 8 + 2 * 8 + 2 * 8
    for label, (plugin, lr) in {
        "ddpo_is-lr3e-4": ("ddpo_is", 3.0e-4),
        "reinforce-lr1e-4": ("reinforce", 1.0e-4),
        "loop-lr3e-4": ("loop", 3.0e-4),
    }.items():
        assert cfg["algorithms"][label] == {**cfg["algorithms"][plugin], "plugin": plugin, "lr": lr}, label


def test_the_power_preset_is_the_full_study_on_its_primary_reward_with_more_seeds():
    """config/power.yaml: every run the full study also has (shape_iou, seeds 0-9) is specified
    exactly as there (so those runs can be copied in), its analysis and claims are the full
    study's, and what it adds is seeds only, none of the replication's or the calibration's."""
    cfg = study.load(ROOT / "config" / "power.yaml", check_paths=False)
    full = study.load(ROOT / "config" / "full.yaml", check_paths=False)
    replication = study.load(ROOT / "config" / "replication.yaml", check_paths=False)
    calibration = study.load(ROOT / "config" / "calibration.yaml", check_paths=False)
    keys = set(study.runs(full))
    shared = [key for key in study.runs(cfg) if key in keys]
    for key in shared:
        assert study.run_spec(cfg, key) == study.run_spec(full, key), key
    assert len(shared) == 7 * 10
    assert cfg["rewards"] == ["shape_iou"] and cfg["analysis"]["primary"] == "shape_iou"
    assert set(full["seeds"]) < set(cfg["seeds"])
    assert not set(cfg["seeds"]) & (set(replication["seeds"]) | set(calibration["seeds"]))
    for section in ("algorithms", "sampling", "train", "evaluation", "probe", "analysis", "verdicts"):
        assert cfg[section] == full[section], section


def test_the_full_preset_extends_the_two_reward_study_and_the_ablation_run_for_run():
    """config/full.yaml: every run the two-reward study or the credit ablation also has is specified
    exactly as there (so their runs can be copied in, as the committed full study did), and its
    evaluation is theirs; what it adds is seeds and the pcpo-nocredit arm."""
    cfg = study.load(ROOT / "config" / "full.yaml", check_paths=False)
    default = _as_declared_before_dancegrpos_noise_level("two_rewards.yaml")
    ablation = study.load(ROOT / "config" / "ablation.yaml", check_paths=False)
    shared = 0
    for other in (default, ablation):
        keys = set(study.runs(other))
        for key in study.runs(cfg):
            if key in keys:
                assert study.run_spec(cfg, key) == study.run_spec(other, key), key
                shared += 1
    # the ablation's three arms on seeds 0-7 (its pcpo and ddpo_is runs are the default's too)
    assert shared == 96 + 3 * 8
    assert set(default["seeds"]) < set(cfg["seeds"])
    assert set(cfg["algorithms"]) == set(default["algorithms"]) | {"pcpo-nocredit"}
    assert cfg["evaluation"] == default["evaluation"] and cfg["analysis"] == default["analysis"]


def _every_run_specified_as_in(cfg: dict, *others: dict) -> int:
    """Assert that each run of `cfg` is a run of one of `others`, specified exactly as in every one
    that has it (so that their run folders can be copied in); returns the number of runs."""
    runs = study.runs(cfg)
    for key in runs:
        having = [other for other in others if key in set(study.runs(other))]
        assert having, key
        assert all(study.run_spec(cfg, key) == study.run_spec(other, key) for other in having), key
    return len(runs)


def test_the_collapse_preset_loops_the_default_studys_primary_reward_runs():
    """config/collapse.yaml: its RL runs are the default study's shape_iou runs, specified exactly
    as there (so they can be copied in), with the default's evaluation; its loop is the recursive
    preset's (two of its variants, the fully synthetic one first, which the verdicts read); its
    claims declare equivalence margins."""
    cfg = study.load(ROOT / "config" / "collapse.yaml", check_paths=False)
    default = _as_declared_before_dancegrpos_noise_level("config.yaml")
    recursive = study.load(ROOT / "config" / "recursive.yaml", check_paths=False)
    assert _every_run_specified_as_in(cfg, default) == 6 * 8
    assert cfg["evaluation"] == default["evaluation"] and cfg["rewards"] == ["shape_iou"]
    loops, theirs = study.recursive_variants(cfg), study.recursive_variants(recursive)
    assert list(loops) == ["replace-real0", "replace-real0.5"]
    assert all(loops[name] == theirs[name] for name in loops)
    claims = {c["id"]: c for c in cfg["verdicts"]["claims"]}
    assert set(claims) == {"pcpo_collapse", "pcpo_collapse_fid"}
    assert all(c["measure"].startswith("recursive:") and c["margin"] > 0 for c in claims.values())


def test_the_collapse_rate_control_reuses_the_controlled_and_rate_check_runs():
    """config/collapse_rate.yaml: each of its runs is specified exactly as in the learning-rate
    control, the rate check or the default study (so their runs can be copied in), its loop is
    the collapse preset's fully synthetic variant, and every claim compares two of its arms."""
    cfg = study.load(ROOT / "config" / "collapse_rate.yaml", check_paths=False)
    sources = [study.load(ROOT / "config" / f"{name}.yaml", check_paths=False) for name in ("controlled", "ratecheck")]
    assert _every_run_specified_as_in(cfg, *sources) == 6 * 8
    collapse = study.load(ROOT / "config" / "collapse.yaml", check_paths=False)
    loops = study.recursive_variants(cfg)
    assert (
        list(loops) == ["replace-real0"]
        and loops["replace-real0"] == study.recursive_variants(collapse)["replace-real0"]
    )
    for claim in cfg["verdicts"]["claims"]:
        assert {claim["method"], claim["over"]} <= set(cfg["algorithms"]), claim["id"]


def test_the_collapse_replication_is_the_collapse_preset_on_the_replication_seeds():
    """config/collapse_replication.yaml: the collapse preset's loop and claims on seeds that preset
    never used, each run specified exactly as in the replication study (so its runs can be copied in)."""
    cfg = study.load(ROOT / "config" / "collapse_replication.yaml", check_paths=False)
    collapse = study.load(ROOT / "config" / "collapse.yaml", check_paths=False)
    replication = _as_declared_before_dancegrpos_noise_level("replication.yaml")
    assert _every_run_specified_as_in(cfg, replication) == 6 * 8
    assert not set(cfg["seeds"]) & set(collapse["seeds"])
    assert list(study.recursive_variants(cfg)) == ["replace-real0"]
    assert study.recursive_variants(cfg)["replace-real0"] == study.recursive_variants(collapse)["replace-real0"]
    for section in ("algorithms", "sampling", "train", "evaluation", "analysis", "verdicts"):
        assert cfg[section] == collapse[section], section


def test_the_collapse_ode_preset_is_the_collapse_preset_at_the_evaluation_sampler():
    """config/collapse_ode.yaml: the collapse preset's runs, fully synthetic loop and claims, with
    the loop drawn and measured at the evaluation sampler (the only difference in the loop)."""
    cfg = study.load(ROOT / "config" / "collapse_ode.yaml", check_paths=False)
    collapse = study.load(ROOT / "config" / "collapse.yaml", check_paths=False)
    default = _as_declared_before_dancegrpos_noise_level("config.yaml")
    assert _every_run_specified_as_in(cfg, default) == 6 * 8
    loops = study.recursive_variants(cfg)
    assert list(loops) == ["replace-real0"]
    assert loops["replace-real0"] == {**study.recursive_variants(collapse)["replace-real0"], "sampler": "evaluation"}
    for section in ("algorithms", "sampling", "train", "evaluation", "analysis", "verdicts"):
        assert cfg[section] == collapse[section], section


def test_the_calibration_at_the_evaluation_sampler_rescores_the_calibrations_runs():
    """config/calibration_ode.yaml: every run is config/calibration.yaml's, specified exactly as
    there (its runs are copied in); it evaluates on the training prompts at the ODE and scores
    each run by that evaluation's curve, everything else of the calibration unchanged."""
    cfg = study.load(ROOT / "config" / "calibration_ode.yaml", check_paths=False)
    calibration = study.load(ROOT / "config" / "calibration.yaml", check_paths=False)
    assert _every_run_specified_as_in(cfg, calibration) == len(study.runs(calibration)) == 50
    assert cfg["evaluation"]["prompts"] == "train" and cfg["evaluation"]["eta"] == 0.0
    assert cfg["analysis"]["calibration_score"] == "evaluation"
    assert calibration["analysis"].get("calibration_score", "training") == "training"
    rest = {k: v for k, v in cfg["evaluation"].items() if k != "prompts"}
    assert rest == {k: v for k, v in calibration["evaluation"].items() if k != "prompts"}


def test_the_study_at_the_evaluation_samplers_rates_reuses_the_runs_both_rules_share():
    """config/ode_rates.yaml: the default study's shape_iou design at config/calibration_ode.yaml's
    rates; each run that another study made at the same rate is specified exactly as there (so it
    is copied in), the rest are PRDP's and DanceGRPO's new rates; every rate is that calibration's
    chosen rate for its method."""
    cfg = study.load(ROOT / "config" / "ode_rates.yaml", check_paths=False)
    default = study.load(ROOT / "config" / "config.yaml", check_paths=False)
    ratecheck = study.load(ROOT / "config" / "ratecheck.yaml", check_paths=False)
    shared = {k: v for k, v in cfg["algorithms"].items() if k in ("reinforce-lr1e-4", "ddpo_is", "loop", "pcpo")}
    assert _every_run_specified_as_in({**cfg, "algorithms": shared}, default, ratecheck) == 4 * 8
    rates = {(v.get("plugin", k)): v["lr"] for k, v in cfg["algorithms"].items()}
    assert rates == {"reinforce": 1e-4, "ddpo_is": 3e-5, "loop": 3e-5, "prdp": 3e-5, "dancegrpo": 1e-4, "pcpo": 1e-4}
    chosen = pd.read_csv(ROOT / "results/studies/calibration_ode/tables/calibration.csv", comment="#")
    chosen = chosen[chosen["chosen"]]
    assert chosen["bracketed"].all() and dict(zip(chosen["method"], chosen["lr"], strict=True)) == pytest.approx(rates)
    for section in ("sampling", "train", "evaluation"):
        assert cfg[section] == default[section], section
    prdp = {k: v for k, v in cfg["algorithms"]["prdp-lr3e-5"].items() if k not in ("plugin", "lr")}
    assert prdp == {k: v for k, v in default["algorithms"]["prdp"].items() if k != "lr"}
    assert cfg["seeds"] == default["seeds"] and cfg["rewards"] == ["shape_iou"]
    assert not cfg["analysis"].get("unbracketed_rates")


def test_the_replication_of_the_study_at_the_evaluation_samplers_rates_changes_only_its_seeds():
    """config/ode_rates_replication.yaml: config/ode_rates.yaml on seeds it never used; the runs at
    rates the default study shares are the replication study's, specified exactly as there."""
    cfg = study.load(ROOT / "config" / "ode_rates_replication.yaml", check_paths=False)
    ode_rates = study.load(ROOT / "config" / "ode_rates.yaml", check_paths=False)
    replication = study.load(ROOT / "config" / "replication.yaml", check_paths=False)
    assert not set(cfg["seeds"]) & set(ode_rates["seeds"]) and len(cfg["seeds"]) == len(ode_rates["seeds"])
    assert {k: v for k, v in cfg.items() if k not in ("study", "seeds")} == {
        k: v for k, v in ode_rates.items() if k not in ("study", "seeds")
    }
    shared = {k: v for k, v in cfg["algorithms"].items() if k in ("ddpo_is", "loop", "pcpo")}
    assert _every_run_specified_as_in({**cfg, "algorithms": shared}, replication) == 3 * 8


def test_the_long_calibration_trains_the_evaluation_calibrations_chosen_rates_longer():
    """config/calibration_long.yaml: one label per method, each calibration_ode's chosen rate with
    its settings there; the same seeds, sampler and evaluation, budgets extended past its last."""
    cfg = study.load(ROOT / "config" / "calibration_long.yaml", check_paths=False)
    ode = study.load(ROOT / "config" / "calibration_ode.yaml", check_paths=False)
    chosen = pd.read_csv(ROOT / "results/studies/calibration_ode/tables/calibration.csv", comment="#")
    assert sorted(cfg["algorithms"]) == sorted(chosen[chosen["chosen"]]["label"])
    assert all(cfg["algorithms"][k] == ode["algorithms"][k] for k in cfg["algorithms"])
    for section in ("seeds", "rewards", "sampling", "evaluation", "analysis"):
        assert cfg[section] == ode[section], section
    assert cfg["train"]["budgets"][: len(ode["train"]["budgets"])] == ode["train"]["budgets"]
    assert max(cfg["train"]["budgets"]) == 2 * max(ode["train"]["budgets"])


def test_the_four_seed_evaluation_calibration_only_adds_seeds():
    """config/calibration_ode4.yaml: calibration_ode with two more seeds no study uses; its runs on
    calibration_ode's seeds are specified exactly as there (copied in)."""
    cfg = study.load(ROOT / "config" / "calibration_ode4.yaml", check_paths=False)
    ode = study.load(ROOT / "config" / "calibration_ode.yaml", check_paths=False)
    assert cfg["seeds"][:2] == ode["seeds"] and set(cfg["seeds"][2:]) == {102, 103}
    assert {k: v for k, v in cfg.items() if k not in ("study", "seeds")} == {
        k: v for k, v in ode.items() if k not in ("study", "seeds")
    }
    assert _every_run_specified_as_in({**cfg, "seeds": ode["seeds"]}, ode) == 50
    for name in ("config.yaml", "replication.yaml", "power.yaml", "full.yaml", "horizon.yaml"):
        assert not {102, 103} & set(study.load(ROOT / "config" / name, check_paths=False)["seeds"]), name


def test_the_learning_rate_control_at_power_adds_seeds_only():
    """config/controlled_power.yaml: config/controlled.yaml (its arms, claims and evaluation) on the
    power study's seeds; PCPO at 1e-4 and DDPO-IS at 3e-5 are the power study's runs, the two
    equal-rate arms on seeds 0-7 the controlled study's, each specified exactly as there."""
    cfg = study.load(ROOT / "config" / "controlled_power.yaml", check_paths=False)
    controlled = study.load(ROOT / "config" / "controlled.yaml", check_paths=False)
    power = study.load(ROOT / "config" / "power.yaml", check_paths=False)
    assert cfg["seeds"] == power["seeds"] and set(controlled["seeds"]) < set(cfg["seeds"])
    assert {k: v for k, v in cfg.items() if k not in ("study", "seeds")} == {
        k: v for k, v in controlled.items() if k not in ("study", "seeds")
    }
    calibrated = {k: v for k, v in cfg["algorithms"].items() if k in ("ddpo_is", "pcpo")}
    assert _every_run_specified_as_in({**cfg, "algorithms": calibrated}, power) == 2 * 26
    assert _every_run_specified_as_in({**cfg, "seeds": controlled["seeds"]}, controlled) == 4 * 8


def test_the_long_run_is_the_default_studys_primary_arms_trained_eight_times_longer():
    """config/long.yaml: the default study's shape_iou arms with their settings and rates, on two of
    its seeds, to 4096 images; its budgets include three of the default's (so its evaluations there
    can be checked against the default's) and its evaluation is the default's."""
    cfg = study.load(ROOT / "config" / "long.yaml", check_paths=False)
    default = _as_declared_before_dancegrpos_noise_level("config.yaml")
    assert cfg["algorithms"] == default["algorithms"] and cfg["rewards"] == [default["analysis"]["primary"]]
    assert set(cfg["seeds"]) < set(default["seeds"])
    for section in ("sampling", "evaluation", "analysis", "models"):
        assert cfg[section] == default[section], section
    train = {k: v for k, v in cfg["train"].items() if k != "budgets"}
    assert train == {k: v for k, v in default["train"].items() if k != "budgets"}
    budgets, theirs = cfg["train"]["budgets"], default["train"]["budgets"]
    assert len(budgets) >= 6 and max(budgets) == 8 * max(theirs) and len(set(budgets) & set(theirs)) >= 3
    assert not cfg["probe"]["enabled"] and not cfg.get("verdicts", {}).get("claims")


def test_the_long_run_with_seeds_tests_the_long_runs_readings_on_seeds_it_did_not_use():
    """config/long_power.yaml: the long run's DDPO-IS, LOOP and PCPO arms, specified as there, plus
    PCPO at DDPO-IS's rate specified as in the learning-rate control; the long run's training,
    sampler and evaluation; seeds disjoint from the long run's; four claims, each between two of
    its labels, the equal-rate one declared as controlled."""
    cfg = study.load(ROOT / "config" / "long_power.yaml", check_paths=False)
    long = study.load(ROOT / "config" / "long.yaml", check_paths=False)
    control = study.load(ROOT / "config" / "controlled_power.yaml", check_paths=False)
    arms = cfg["algorithms"]
    assert {k: arms[k] for k in ("ddpo_is", "loop", "pcpo")} == {
        k: long["algorithms"][k] for k in ("ddpo_is", "loop", "pcpo")
    }
    assert arms["pcpo-lr3e-5"] == control["algorithms"]["pcpo-lr3e-5"]
    assert arms["pcpo-lr3e-5"]["lr"] == arms["ddpo_is"]["lr"] != arms["pcpo"]["lr"]
    assert set(arms) == {"ddpo_is", "loop", "pcpo", "pcpo-lr3e-5"}
    for section in ("rewards", "sampling", "train", "evaluation", "probe", "models"):
        assert cfg[section] == long[section], section
    assert not set(cfg["seeds"]) & set(long["seeds"]) and len(cfg["seeds"]) == 8
    claims = cfg["verdicts"]["claims"]
    assert len(claims) == 4 and all({c["method"], c["over"]} <= set(arms) for c in claims)
    controlled = [c for c in claims if c.get("controlled")]
    assert [(c["method"], c["over"]) for c in controlled] == [("ddpo_is", "pcpo-lr3e-5")]
    levels = cfg["analysis"]["frontier"]["drift_levels"]["quality/fid"]
    assert all(float(c["measure"].rsplit("/", 1)[1]) in levels for c in claims if "gain_at_drift" in c["measure"])


def test_the_8192_image_run_extends_two_of_the_long_runs_arms_past_4096_images():
    """config/long_8192.yaml: long_power's DDPO-IS and PCPO-at-3e-5 runs on its first two seeds,
    specified as there but for the budgets, which are long_power's followed by larger ones (a budget
    only saves a checkpoint, so the first 4096 images are long_power's runs); no claims."""
    cfg = study.load(ROOT / "config" / "long_8192.yaml", check_paths=False)
    long = study.load(ROOT / "config" / "long_power.yaml", check_paths=False)
    assert set(cfg["algorithms"]) == {"ddpo_is", "pcpo-lr3e-5"} and set(cfg["seeds"]) < set(long["seeds"])
    shorter = long["train"]["budgets"]
    longer = cfg["train"]["budgets"]
    assert longer[: len(shorter)] == shorter and longer[-1] == 2 * shorter[-1] and len(longer) >= 6
    keys = set(study.runs(long))
    for key in study.runs(cfg):
        assert key in keys
        assert dataclasses.replace(study.run_spec(cfg, key), budgets=tuple(shorter)) == study.run_spec(long, key), key
    for section in ("rewards", "sampling", "evaluation", "probe", "models"):
        assert cfg[section] == long[section], section
    assert cfg["verdicts"]["claims"] == []


def test_the_16384_image_runs_continue_the_8192_and_4096_image_runs():
    """config/long_16384.yaml: the default study's three 3e-5 methods, PCPO at 3e-5 and PRDP at its
    calibrated rate on long_8192's seeds. DDPO-IS's and PCPO's runs continue long_8192's, LOOP's
    continue long_power's (the same spec but for budgets added after all of theirs: bench/train/state.py
    `continues`), and REINFORCE and PRDP are the default study's; no claims."""
    from t2i_rl_bench.train.state import continues

    cfg = study.load(ROOT / "config" / "long_16384.yaml", check_paths=False)
    default = study.load(ROOT / "config" / "two_rewards.yaml", check_paths=False)
    assert set(cfg["algorithms"]) == {"reinforce", "ddpo_is", "loop", "pcpo-lr3e-5", "prdp"}
    assert {a for a in cfg["algorithms"] if cfg["algorithms"][a]["lr"] == 3.0e-5} == set(cfg["algorithms"]) - {"prdp"}
    for name in ("reinforce", "ddpo_is", "loop", "prdp"):
        assert cfg["algorithms"][name] == default["algorithms"][name], name
    assert cfg["train"]["budgets"][-1] == 16384 and cfg["verdicts"]["claims"] == []
    sources = {
        "ddpo_is": study.load(ROOT / "config" / "long_8192.yaml", check_paths=False),
        "pcpo-lr3e-5": study.load(ROOT / "config" / "long_8192.yaml", check_paths=False),
        "loop": study.load(ROOT / "config" / "long_power.yaml", check_paths=False),
    }
    continued = 0
    for key in study.runs(cfg):
        source = sources.get(key.algorithm)
        if source is None:
            continue
        assert key in set(study.runs(source)), key
        old, new = study.run_spec(source, key).identity(), study.run_spec(cfg, key).identity()
        assert old != new and continues(old, new), key
        continued += 1
    assert continued == 6
    for section in ("rewards", "sampling", "evaluation", "probe", "models", "seeds"):
        assert cfg[section] == sources["ddpo_is"][section], section


def test_the_credit_ablation_at_the_long_horizon_adds_the_unweighted_arm_to_the_long_runs_pcpo():
    """config/long_credit.yaml: PCPO's runs are long_power's, specified exactly as there (copied in),
    and `pcpo-nocredit` is the ablation's arm at PCPO's rate; long_power's seeds, training and
    evaluation; two claims, both PCPO over the unweighted arm, both declared as controlled."""
    cfg = study.load(ROOT / "config" / "long_credit.yaml", check_paths=False)
    long = study.load(ROOT / "config" / "long_power.yaml", check_paths=False)
    ablation = study.load(ROOT / "config" / "ablation.yaml", check_paths=False)
    assert _every_run_specified_as_in({**cfg, "algorithms": {"pcpo": cfg["algorithms"]["pcpo"]}}, long) == 8
    assert cfg["algorithms"]["pcpo-nocredit"] == ablation["algorithms"]["pcpo-nocredit"]
    assert cfg["algorithms"]["pcpo-nocredit"]["lr"] == cfg["algorithms"]["pcpo"]["lr"]
    for section in ("seeds", "rewards", "sampling", "train", "evaluation", "probe", "models"):
        assert cfg[section] == long[section], section
    claims = cfg["verdicts"]["claims"]
    assert len(claims) == 2 and all((c["method"], c["over"]) == ("pcpo", "pcpo-nocredit") for c in claims)
    assert all(c.get("controlled") for c in claims)


def test_the_credit_ablation_at_power_runs_on_seeds_no_study_used_with_the_ablations_claims():
    """config/credit_power.yaml: the credit ablation's PCPO and `pcpo-nocredit` arms, specified as
    there, with its two reward claims word for word, on seeds that no other preset uses."""
    cfg = study.load(ROOT / "config" / "credit_power.yaml", check_paths=False)
    ablation = study.load(ROOT / "config" / "ablation.yaml", check_paths=False)
    assert cfg["algorithms"] == {k: ablation["algorithms"][k] for k in ("pcpo", "pcpo-nocredit")}
    for section in ("rewards", "sampling", "train", "evaluation", "probe", "analysis", "models"):
        assert cfg[section] == ablation[section], section
    theirs = {c["id"]: c for c in ablation["verdicts"]["claims"]}
    assert [c["id"] for c in cfg["verdicts"]["claims"]] == ["pcpo_reweight", "pcpo_reweight_gain"]
    assert all(c == theirs[c["id"]] for c in cfg["verdicts"]["claims"])
    used = set()
    for path in (ROOT / "config").glob("*.yaml"):
        if path.name not in ("schema.yaml", "credit_power.yaml"):
            used |= set(study.load(path, check_paths=False)["seeds"])  # a preset may extend another
    assert len(cfg["seeds"]) == 40 and not set(cfg["seeds"]) & used


def test_the_dancegrpo_noise_level_calibration_changes_only_its_eta():
    """config/calibration_dancegrpo.yaml: calibration_ode4's DanceGRPO runs, run for run, at DanceGRPO's own
    noise level 0.3 instead of the study's 0.7; every other setting, seed and budget is calibration_ode4's."""
    cfg = study.load(ROOT / "config" / "calibration_dancegrpo.yaml", check_paths=False)
    ode4 = study.load(ROOT / "config" / "calibration_ode4.yaml", check_paths=False)
    assert {k: v for k, v in cfg.items() if k not in ("study", "algorithms")} == {
        k: v for k, v in ode4.items() if k not in ("study", "algorithms")
    }
    old = {k: s for k, s in ((k, study.run_spec(ode4, k)) for k in study.runs(ode4)) if s.algorithm == "dancegrpo"}
    new = {k: study.run_spec(cfg, k) for k in study.runs(cfg)}
    assert new.keys() == old.keys() and len(new) == 5 * 4
    for key, spec in new.items():
        assert (spec.eta, old[key].eta, spec.flow_variant) == (0.3, 0.7, "dancegrpo")
        assert dataclasses.replace(spec, eta=0.7) == old[key]


def test_the_dancegrpo_noise_level_study_is_the_default_but_dancegrpo():
    """config/dancegrpo_eta.yaml: declared as the default study with DanceGRPO at eta 0.3 and the rate
    calibration_dancegrpo's committed rule chooses; the default has since taken that arm, so every run and every
    section of the two are equal, and against the default as declared before, only DanceGRPO's eta and rate differ."""
    cfg = study.load(ROOT / "config" / "dancegrpo_eta.yaml", check_paths=False)
    default = study.load(ROOT / "config" / "config.yaml", check_paths=False)
    assert {k: v for k, v in cfg.items() if k != "study"} == {k: v for k, v in default.items() if k != "study"}
    assert _every_run_specified_as_in(cfg, default) == 6 * 8
    before = _as_declared_before_dancegrpos_noise_level("config.yaml")
    others = {k: v for k, v in cfg["algorithms"].items() if k != "dancegrpo"}
    assert _every_run_specified_as_in({**cfg, "algorithms": others}, before) == 5 * 8
    new = {k.seed: study.run_spec(cfg, k) for k in study.runs(cfg) if k.algorithm == "dancegrpo"}
    old = {k.seed: study.run_spec(before, k) for k in study.runs(before) if k.algorithm == "dancegrpo"}
    for seed, spec in new.items():
        assert (spec.eta, spec.lr, old[seed].eta, old[seed].lr) == (0.3, 1e-4, 0.7, 3e-6)
        assert dataclasses.replace(spec, eta=0.7, lr=3e-6) == old[seed]


def test_the_dancegrpo_noise_level_replication_only_changes_the_seeds():
    """config/dancegrpo_eta_replication.yaml: dancegrpo_eta on the replication's seeds; its runs are the
    replication's shape_iou runs, spec for spec."""
    cfg = study.load(ROOT / "config" / "dancegrpo_eta_replication.yaml", check_paths=False)
    eta = study.load(ROOT / "config" / "dancegrpo_eta.yaml", check_paths=False)
    replication = study.load(ROOT / "config" / "replication.yaml", check_paths=False)
    assert {k: v for k, v in cfg.items() if k not in ("study", "seeds")} == {
        k: v for k, v in eta.items() if k not in ("study", "seeds")
    }
    assert cfg["seeds"] == replication["seeds"] and not set(cfg["seeds"]) & set(eta["seeds"])
    assert _every_run_specified_as_in(cfg, replication) == 6 * 8  # since the two-reward study runs DanceGRPO at 0.3


def _dancegrpo_eta_arm_and(preset: str) -> list[tuple[RunSpec, RunSpec]]:
    """(the preset's run, dancegrpo_eta's DanceGRPO run) per seed of a one-arm ablation of that arm."""
    cfg = study.load(ROOT / "config" / preset, check_paths=False)
    eta = study.load(ROOT / "config" / "dancegrpo_eta.yaml", check_paths=False)
    new = {k.seed: study.run_spec(cfg, k) for k in study.runs(cfg)}
    old = {k.seed: study.run_spec(eta, k) for k in study.runs(eta) if k.algorithm == "dancegrpo"}
    assert new.keys() == old.keys() == set(range(8))
    return [(new[seed], old[seed]) for seed in sorted(new)]


def test_the_shared_noise_ablation_changes_only_the_shared_noise():
    """config/dancegrpo_noise.yaml: dancegrpo_eta's DanceGRPO runs with same_noise_per_group off, nothing else."""
    for spec, old in _dancegrpo_eta_arm_and("dancegrpo_noise.yaml"):
        assert spec.algorithm_settings.pop("same_noise_per_group") is False
        assert spec == old


def test_the_sampler_ablation_changes_only_dancegrpos_sde():
    """config/dancegrpo_sde.yaml: dancegrpo_eta's DanceGRPO runs with Flow-GRPO's SDE at its 0.7, nothing else."""
    for spec, old in _dancegrpo_eta_arm_and("dancegrpo_sde.yaml"):
        assert (spec.flow_variant, spec.eta, old.flow_variant, old.eta) == ("flowgrpo", 0.7, "dancegrpo", 0.3)
        assert dataclasses.replace(spec, flow_variant="dancegrpo", eta=0.3) == old
