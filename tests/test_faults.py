"""The faults of a study that leaves the default path (issue 15): each test fails on the code
before the fix. Config-level faults are checked through `t2i_rl_bench.study.validate` or a Snakemake dry
run; run-level ones through the commands the workflow runs, on a tiny embedded model."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from t2i_rl_bench import study
from t2i_rl_bench.cli import main as bench_main

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
NAN_REWARD = """
import torch
def nan_reward(images, prompts, metadata):
    return torch.full((len(prompts),), float("nan")), {}
"""
NAN_LOSS = """
import torch
from t2i_rl_bench.algorithm import Algorithm, Loss
class NanLoss(Algorithm):
    def loss(self, batch):
        return Loss(batch.logp.mean() * float("nan"))
"""


def strict_load(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def quick() -> dict:
    return yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())


def study_copy(tmp_path: Path, models: bool = True) -> Path:
    for name in ("Snakefile", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    if models:
        shutil.copytree(ROOT / "results" / "models", tmp_path / "results" / "models")
    return tmp_path


def dry_run(work: Path, cfg: dict, *extra: str) -> subprocess.CompletedProcess:
    (work / "study.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [str(SNAKEMAKE), "-n", "-p", "--cores", "1", "--configfile", "study.yaml", *extra],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )


def small_study(model: Path, algorithms: dict, rewards=("jpeg_compressibility",), seeds=(0,)) -> dict:
    return study.validate(
        {
            "study": "faults",
            "seeds": list(seeds),
            "models": {"tiny": {"path": str(model)}},
            "rewards": list(rewards),
            "algorithms": algorithms,
            "sampling": {"num_steps": 3},
            "train": {"images_per_round": 4, "group_size": 2, "budgets": [4, 8]},
            "evaluation": {
                "max_prompts": 2,
                "images_per_prompt": 2,
                "rewards": ["jpeg_compressibility"],
                "clip_model": None,
            },
            "probe": {"minibatches": 2},
            "statistics": {"bootstrap_resamples": 100},
        }
    )


def run_jobs(cfg: dict, runs_root: Path) -> None:
    """Each run's train and assess (evaluate, then probe) jobs, as the Snakefile starts them."""
    for key in study.runs(cfg):
        out = runs_root / key.path
        assert bench_main(["train", "--run-config", study.run_spec(cfg, key).to_json(), "--out", str(out)]) == 0
        assess = ["assess", "--run-dir", str(out), "--evaluation", json.dumps(cfg["evaluation"])]
        assert bench_main([*assess, "--probe", json.dumps(cfg["probe"])]) == 0


def aggregate_and_report(cfg: dict, root: Path) -> str:
    assert (
        bench_main(
            ["aggregate", "--config", json.dumps(cfg), "--runs-root", str(root / "runs"), "--out", str(root / "tables")]
        )
        == 0
    )
    assert (
        bench_main(
            [
                "report",
                "--tables",
                str(root / "tables"),
                "--runs-root",
                str(root / "runs"),
                "--out",
                str(root / "report.html"),
            ]
        )
        == 0
    )
    return (root / "report.html").read_text()


# ---------------------------------------------------------------- evaluation.clip_model: null
def test_a_study_without_a_judge_plans_its_jobs(tmp_path):
    """The real-model presets set clip_model: null; the recursive rule's input raised a TypeError."""
    cfg = quick()
    cfg["evaluation"]["clip_model"] = None
    cfg["evaluation"]["rewards"] = ["jpeg_compressibility", "attribute_match"]
    done = dry_run(study_copy(tmp_path), cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rule train" in done.stdout


# ---------------------------------------------------------------- labels that are not one folder name
@pytest.mark.parametrize("label", ["my/reinforce", "../reinforce", "a b", ".hidden"])
def test_an_algorithm_label_that_is_not_a_folder_name_is_refused_naming_the_key(label):
    cfg = quick()
    cfg["algorithms"] = {label: {"plugin": "reinforce"}}
    with pytest.raises(study.ConfigError, match=rf"config key 'algorithms\.{label}'.*plugin"):
        study.validate(cfg, check_paths=False)


@pytest.mark.parametrize("label", ["nan", "NULL", "1e-3", "42"])
def test_an_algorithm_label_the_tables_would_read_as_a_number_or_missing_is_refused(label):
    cfg = quick()
    cfg["algorithms"] = {label: {"plugin": "reinforce"}}
    with pytest.raises(study.ConfigError, match=rf"config key 'algorithms\.{re.escape(label)}'.*missing value"):
        study.validate(cfg, check_paths=False)


def test_a_model_key_or_study_name_with_a_slash_is_refused_naming_the_key():
    cfg = quick()
    cfg["models"] = {"a/b": cfg["models"]["dit16-ddim"]}
    with pytest.raises(study.ConfigError, match=r"config key 'models\.a/b'"):
        study.validate(cfg, check_paths=False)
    cfg = dict(quick(), study="mine/quick")
    with pytest.raises(study.ConfigError, match=r"config key 'study'"):
        study.validate(cfg, check_paths=False)


def test_a_reward_named_by_its_plugin_path_runs_in_a_folder_of_its_own(tmp_path, monkeypatch):
    """`plugins/r.py:fn` as a training reward: before, the run path had extra levels, no rule
    matched and snakemake exited 0 doing nothing."""
    work = study_copy(tmp_path)
    (work / "plugins").mkdir()
    (work / "plugins" / "r.py").write_text("from t2i_rl_bench.rewards.jpeg import JpegCompressibility as fn\n")
    cfg = quick()
    cfg.update(rewards=["plugins/r.py:fn"], seeds=[0], algorithms={"reinforce": {}})
    cfg["evaluation"]["rewards"] = ["plugins/r.py:fn"]
    monkeypatch.chdir(work)  # `plugin:` paths resolve against the working directory
    validated = study.validate(cfg, check_paths=False)
    (run,) = study.runs(validated)
    assert run.reward == "plugins-r.py:fn" and len(Path(run.path).parts) == 4
    assert study.run_spec(validated, run).reward == "plugins/r.py:fn"  # the plugin itself is unchanged
    done = dry_run(work, cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rule train" in done.stdout and "plugins-r.py:fn/reinforce/seed0" in done.stdout


def test_two_rewards_with_the_same_folder_label_are_refused():
    cfg = quick()
    cfg["rewards"] = ["plugins/r.py:fn", "plugins-r.py:fn"]
    with pytest.raises(study.ConfigError, match=r"config key 'rewards\[1\]'"):
        study.validate(cfg, check_paths=False)


# ---------------------------------------------------------------- group size under the key the user set
@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["train"].update(group_size=3), r"config key 'train\.group_size'"),
        (lambda c: c["algorithms"].update(loop={"group_size": 3}), r"config key 'algorithms\.loop\.group_size'"),
    ],
)
def test_a_group_size_that_does_not_divide_the_round_names_the_key_set(edit, key):
    cfg = quick()
    edit(cfg)
    with pytest.raises(study.ConfigError, match=key):
        study.validate(cfg, check_paths=False)


# ---------------------------------------------------------------- checkpoints verified before any job
def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize(
    "folder, key", [("dit16-ddim", r"models\.dit16-ddim\.path"), ("clip16", r"evaluation\.clip_model")]
)
def test_a_damaged_weight_file_is_refused_before_any_job(tmp_path, how, folder, key):
    work = study_copy(tmp_path)
    weights = sorted((work / "results" / "models" / folder).rglob("*.safetensors"))[-1]
    _damage(weights, how)
    done = dry_run(work, quick())
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert weights.name in message and str(weights.parent.name) in message
    assert f"config key '{key.replace(chr(92), '')}'" in message and "SHA-256" in message
    assert not (work / "results" / "studies").exists() and not (work / "results" / "world").exists()
    if folder == "dit16-ddim":  # (the clip_alignment reward checks its own judge's hashes regardless)
        skipped = dry_run(work, dict(quick(), verify_sha256=False))
        assert skipped.returncode == 0, skipped.stderr[-2000:]


def test_a_real_model_folder_is_verified_against_its_recorded_hashes(tmp_path):
    from t2i_rl_bench import integrity

    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.safetensors").write_bytes(b"0123456789" * 100)
    integrity.record(folder)
    cfg = {"models": {"sd": {"path": str(folder)}}, "evaluation": {"clip_model": None}}
    assert integrity.verify_study(cfg) == []
    _damage(folder / "unet" / "w.safetensors", "flip")
    (problem,) = integrity.verify_study(cfg)
    assert "config key 'models.sd.path'" in problem and "w.safetensors" in problem
    assert integrity.verify_study(dict(cfg, verify_sha256=False)) == []
    (folder / "sha256.json").write_text('{"sha256": {"unet/w.safe')  # a damaged record
    (problem,) = integrity.verify_study(cfg)
    assert "config key 'models.sd.path'" in problem and "cannot be read" in problem


@pytest.mark.parametrize(
    "damaged", ["tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "transformer/config.json"]
)
def test_a_damaged_config_or_tokenizer_file_is_refused_like_a_weight_file(tmp_path, damaged):
    # a model is loaded from its configs and tokenizer too: a damaged one would fail in every job
    import shutil

    from t2i_rl_bench import integrity

    folder = tmp_path / "flow"
    shutil.copytree(ROOT / "results" / "models" / "dit16-flow", folder)
    cfg = {"models": {"flow": {"path": str(folder)}}, "evaluation": {"clip_model": None}}
    assert integrity.verify_study(cfg) == []
    _damage(folder / damaged, "flip")
    (problem,) = integrity.verify_study(cfg)
    assert "config key 'models.flow.path'" in problem and damaged in problem and "SHA-256" in problem


def test_a_manifest_that_records_no_hashes_is_refused(tmp_path):
    import shutil

    from t2i_rl_bench import integrity

    folder = tmp_path / "flow"
    shutil.copytree(ROOT / "results" / "models" / "dit16-flow", folder)
    manifest = json.loads((folder / "bench_model.json").read_text())
    del manifest["sha256"]
    (folder / "bench_model.json").write_text(json.dumps(manifest))
    cfg = {"models": {"flow": {"path": str(folder)}}, "evaluation": {"clip_model": None}}
    (problem,) = integrity.verify_study(cfg)
    assert "config key 'models.flow.path'" in problem and "records no SHA-256" in problem


def test_a_record_of_weights_only_still_verifies_and_a_new_record_covers_every_file(tmp_path):
    # sha256.json files recorded before configs were hashed list weights only: still valid
    from t2i_rl_bench import integrity

    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.safetensors").write_bytes(b"0123456789" * 100)
    (folder / "unet" / "config.json").write_text('{"layers": 2}')
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("")
    cfg = {"models": {"sd": {"path": str(folder)}}, "evaluation": {"clip_model": None}}
    weights_only = {"unet/w.safetensors": integrity.sha256_file(folder / "unet" / "w.safetensors")}
    (folder / "sha256.json").write_text(json.dumps({"sha256": weights_only}))
    assert integrity.verify_study(cfg) == []
    integrity.record(folder)
    assert set(json.loads((folder / "sha256.json").read_text())["sha256"]) == {"unet/w.safetensors", "unet/config.json"}
    (folder / "unet" / "config.json").write_text('{"layers": 3}')
    (problem,) = integrity.verify_study(cfg)
    assert "unet/config.json" in problem


@pytest.mark.parametrize("where", ["a file", "an empty folder", "nowhere"])
def test_an_embedded_model_path_without_a_model_is_refused_naming_the_key(tmp_path, where):
    cfg = quick()
    path = {"a file": tmp_path / "x.yaml", "an empty folder": tmp_path / "empty", "nowhere": tmp_path / "none"}[where]
    if where == "a file":
        path.write_text("models: {}")
    if where == "an empty folder":
        path.mkdir()
    cfg["models"] = {"mine": {"path": str(path), "pretrain": {"steps": 10, "seed": 0, "objective": "flow"}}}
    with pytest.raises(study.ConfigError, match=r"config key 'models\.mine\.path'"):
        study.validate(cfg, verify=False)


def test_a_missing_embedded_model_where_the_pretrain_rule_writes_is_left_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/models/mine does not exist here
    cfg = quick()
    cfg["models"] = {"mine": {"path": "results/models/mine"}}
    cfg["evaluation"]["clip_model"] = None
    study.validate(cfg, verify=False)  # the pretrain rule will build it
    cfg["models"] = {"mine": {"path": "results/models/other"}}  # the rule would write results/models/mine
    with pytest.raises(study.ConfigError, match=r"only at results/models/mine"):
        study.validate(cfg, verify=False)


# ---------------------------------------------------------------- stale tables of another study
def test_a_study_with_one_method_leaves_no_improvement_table_of_an_earlier_run(tiny_model, tmp_path):
    two = small_study(tiny_model, {"reinforce": {}, "ddpo_is": {}}, seeds=(0, 1))
    run_jobs(two, tmp_path / "runs")
    aggregate_and_report(two, tmp_path)
    assert (tmp_path / "tables" / "improvement.csv").is_file()
    one = dict(two, algorithms={"reinforce": {}})
    html = aggregate_and_report(one, tmp_path)
    assert not (tmp_path / "tables" / "improvement.csv").exists()
    assert "ddpo_is" not in html
    for name in ("eval", "derived", "probe"):
        table = pd.read_csv(tmp_path / "tables" / f"{name}.csv", comment="#")
        assert set(table["algorithm"]) <= {"reinforce", "(all)"}


def test_a_damaged_run_file_loses_that_run_not_the_study(tiny_model, tmp_path):
    # a run file cut short (a full disk, an editor) is listed as unreadable; the tables and the
    # report of every other run are still written
    cfg = small_study(tiny_model, {"reinforce": {}}, seeds=(0, 1))
    run_jobs(cfg, tmp_path / "runs")
    first, second = study.runs(cfg)
    (tmp_path / "runs" / first.path / "eval.json").write_text('{"status": "finished", "rows": [{"budget": 0')
    (tmp_path / "runs" / second.path / "probe.json").write_text("garbage")
    html = aggregate_and_report(cfg, tmp_path)
    failed = pd.read_csv(tmp_path / "tables" / "failed_runs.csv", comment="#")
    assert list(zip(failed["seed"], failed["stage"], failed["reason"])) == [
        (0, "evaluate", "no readable eval.json"),
        (1, "probe", "no readable probe.json"),
    ]
    evals = pd.read_csv(tmp_path / "tables" / "eval_per_seed.csv", comment="#")
    assert set(evals["seed"]) == {1}
    assert "no readable eval.json" in html


# ---------------------------------------------------------------- a failed run is a result
def test_a_reward_error_ends_the_run_as_a_recorded_failure_and_the_study_goes_on(tiny_model, tmp_path):
    plugin = tmp_path / "nan_reward.py"
    plugin.write_text(NAN_REWARD)
    cfg = small_study(tiny_model, {"reinforce": {}}, rewards=("jpeg_compressibility", f"{plugin}:nan_reward"))
    run_jobs(cfg, tmp_path / "runs")  # every command exits 0
    bad = next(k for k in study.runs(cfg) if "nan_reward" in k.reward)
    summary = strict_load((tmp_path / "runs" / bad.path / "summary.json").read_text())
    assert summary["status"] == "failed" and "RewardError" in summary["reason"] and "nan_reward" in summary["reason"]
    html = aggregate_and_report(cfg, tmp_path)
    failed = pd.read_csv(tmp_path / "tables" / "failed_runs.csv", comment="#")
    assert set(failed["reward"]) == {bad.reward}
    assert list(failed["stage"]) == ["train", "probe"]  # the probe draws the broken reward too: its own failure
    assert "RewardError" in failed["reason"].iloc[0]
    assert "Failed runs" in html and "RewardError" in html
    eval_table = pd.read_csv(tmp_path / "tables" / "eval.csv", comment="#")
    assert "jpeg_compressibility" in set(eval_table["reward"])  # the other run is in the tables


def test_a_study_whose_every_run_failed_still_gets_its_tables_and_report(tiny_model, tmp_path):
    plugin = tmp_path / "nan_reward.py"
    plugin.write_text(NAN_REWARD)
    cfg = small_study(tiny_model, {"reinforce": {}}, rewards=(f"{plugin}:nan_reward",))
    cfg["evaluation"]["rewards"] = [f"{plugin}:nan_reward"]  # evaluation fails too
    run_jobs(cfg, tmp_path / "runs")
    html = aggregate_and_report(cfg, tmp_path)
    failed = pd.read_csv(tmp_path / "tables" / "failed_runs.csv", comment="#")
    assert list(failed["stage"]) == ["train", "evaluate", "probe"]
    assert "Failed runs" in html and html.count("RewardError") == 3


def test_a_diverged_run_writes_strict_json_and_is_diverged_in_every_table(tiny_model, tmp_path):
    plugin = tmp_path / "nan_loss.py"
    plugin.write_text(NAN_LOSS)
    cfg = small_study(tiny_model, {"nanloss": {"plugin": f"{plugin}:NanLoss"}, "reinforce": {}})
    run_jobs(cfg, tmp_path / "runs")
    run = tmp_path / "runs" / "tiny" / "jpeg_compressibility" / "nanloss" / "seed0"
    for name in ("summary.json", "eval.json", "probe.json", "run_config.json"):
        strict_load((run / name).read_text())  # no NaN / Infinity tokens
    assert strict_load((run / "summary.json").read_text())["status"] == "diverged"
    probe = strict_load((run / "probe.json").read_text())
    assert probe["non_finite"], "the probe of a NaN loss has non-finite statistics, listed"
    aggregate_and_report(cfg, tmp_path)
    strict_load(
        (tmp_path / "citable.json").read_text()
        if (tmp_path / "citable.json").is_file()
        else (tmp_path / "tables" / "citable.json").read_text()
    )
    for name in ("eval", "derived", "probe"):
        table = pd.read_csv(tmp_path / "tables" / f"{name}.csv", comment="#")
        nan_rows = table[table["algorithm"] == "nanloss"]
        assert len(nan_rows) and (nan_rows["diverged"] == 1).all(), name
        assert (table[table["algorithm"] == "reinforce"]["diverged"] == 0).all(), name
    failed = pd.read_csv(tmp_path / "tables" / "failed_runs.csv", comment="#")
    assert list(failed["status"]) == ["diverged"] and "non-finite" in failed["reason"].iloc[0]


def test_strict_json_round_trips_non_finite_numbers_as_null_with_their_place():
    import numpy as np
    import torch

    from t2i_rl_bench.io import dumps_json

    obj = {"rows": [{"snr": float("nan"), "a/b": np.float32(np.inf), "ok": torch.tensor(2.0)}], "x": (1, 2)}
    text = dumps_json(obj)
    clean = strict_load(text)
    assert clean["rows"][0] == {"snr": None, "a/b": None, "ok": 2.0} and clean["x"] == [1, 2]
    assert clean["non_finite"] == ["/rows/0/a~1b", "/rows/0/snr"]


def test_read_json_restores_nan_where_it_was_written_as_null(tmp_path):
    from t2i_rl_bench.io import dumps_json, read_json

    path = tmp_path / "x.json"
    path.write_text(dumps_json({"rows": [{"snr": float("inf"), "a/b": 1.0}]}))
    back = read_json(path)
    assert back["rows"][0]["snr"] != back["rows"][0]["snr"] and back["rows"][0]["a/b"] == 1.0


@pytest.mark.parametrize(
    "code, attempt, retries, rc, recorded",
    [
        (137, 1, 0, 0, True),  # killed on its last attempt: a failed result
        (137, 1, 2, 137, False),  # killed with retries left: Snakemake starts it again (it resumes)
        (1, 1, 0, 1, False),  # an unexpected exception: a bug stays a failed job
    ],
)
def test_a_job_killed_beyond_its_retries_is_recorded(tmp_path, code, attempt, retries, rc, recorded):
    from t2i_rl_bench import failures

    out = tmp_path / "run" / "summary.json"
    out.parent.mkdir()
    argv = [
        "killed",
        "--out",
        str(out),
        "--stage",
        "train",
        "--exit-code",
        str(code),
        "--attempt",
        str(attempt),
        "--retries",
        str(retries),
    ]
    assert failures.main(argv) == rc
    assert out.is_file() == recorded
    assert failures.kills(out) == int(recorded)  # the count that makes the next `snakemake` run it again
    if recorded:  # not a failure of the method: status killed, and what the next run does about it
        summary = strict_load(out.read_text())
        assert summary["status"] == "killed" and "signal 9" in summary["reason"]
        assert "--rerun-incomplete" in summary["reason"] and "resumes the training" in summary["reason"]


def test_a_job_with_two_outputs_killed_keeps_the_one_it_wrote(tmp_path):
    # the per-run job evaluates, then probes: killed during the probe, its evaluation is kept and
    # only the probe is recorded as failed
    from t2i_rl_bench import failures

    run = tmp_path / "run"
    run.mkdir()
    evaluation = run / "eval.json"
    evaluation.write_text('{"status": "finished", "rows": [{"budget": 0}]}')
    argv = ["killed", "--out", str(evaluation), "--stage", "evaluate", "--out", str(run / "probe.json")]
    argv += ["--stage", "probe", "--exit-code", "137"]
    assert failures.main(argv) == 0
    assert evaluation.read_text() == '{"status": "finished", "rows": [{"budget": 0}]}'
    probe = strict_load((run / "probe.json").read_text())
    assert probe["status"] == "killed" and probe["stage"] == "probe" and "signal 9" in probe["reason"]
    assert "runs the probe job again" in probe["reason"]  # the advice fits the stage
    assert failures.kills(evaluation) == 0 and failures.kills(run / "probe.json") == 1
    with pytest.raises(SystemExit):  # an output without its stage is refused, not guessed
        failures.main(["killed", "--out", str(evaluation), "--out", "x", "--stage", "probe", "--exit-code", "137"])


BROKEN_LOSSES = """
import torch
from t2i_rl_bench.algorithm import Algorithm, Loss
class Detached(Algorithm):
    def loss(self, batch):
        return Loss((batch.advantages[:, None] * batch.logp).mean().detach())
class Raising(Algorithm):
    def loss(self, batch):
        return Loss(batch.extra["missing"])
"""


@pytest.mark.parametrize(
    "name, reason",
    [
        ("Detached", "Loss.value .* has no gradient"),
        ("Raising", r"loss\(\) raised (KeyError|AttributeError|TypeError)"),
    ],
)
def test_a_plugin_loss_that_raises_or_has_no_gradient_is_a_recorded_failure(tiny_model, tmp_path, name, reason):
    # in training and in the base probe: the run is a failed result naming the algorithm, no crash
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_LOSSES)
    label = name.lower()
    cfg = small_study(tiny_model, {label: {"plugin": f"{plugin}:{name}"}})
    run_jobs(cfg, tmp_path / "runs")
    (key,) = study.runs(cfg)
    summary = strict_load((tmp_path / "runs" / key.path / "summary.json").read_text())
    assert summary["status"] == "failed" and re.search(
        f"algorithm '{re.escape(str(plugin))}:{name}': " + reason, summary["reason"]
    )
    base = tmp_path / "base_probe.json"
    spec = study.run_spec(cfg, study.base_run_key(cfg, "tiny", None, label)).to_json()
    assert (
        bench_main(["probe-base", "--run-config", spec, "--probe", json.dumps(cfg["probe"]), "--out", str(base)]) == 0
    )
    record = strict_load(base.read_text())
    assert record["status"] == "failed" and re.search(reason, record["reason"])


# ---------------------------------------------------------------- plugin provenance
def test_a_file_plugin_is_pinned_by_its_hash_in_the_table_headers(tiny_model, tmp_path):
    import hashlib

    from t2i_rl_bench.provenance import plugin_provenance

    plugin = tmp_path / "nan_loss.py"
    plugin.write_text(NAN_LOSS)
    cfg = small_study(tiny_model, {"mine": {"plugin": f"{plugin}:NanLoss"}, "reinforce": {}})
    pins = plugin_provenance(cfg)
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert pins == {"algorithms.mine": f"file {plugin} sha256:{digest}"}
    from t2i_rl_bench import tables

    assert tables.provenance(cfg)["plugins"] == pins
    header = tables._header(tables.provenance(cfg), "#")
    assert digest in header


# ---------------------------------------------------------------- a stale lock
def test_the_readme_says_how_to_clear_a_stale_lock_and_make_reruns_incomplete_jobs():
    readme = (ROOT / "README.md").read_text()
    assert "snakemake --unlock" in readme
    makefile = (ROOT / "Makefile").read_text()
    for target in ("study:", "quick:"):
        recipe = makefile.split(target, 1)[1].split("\n\n", 1)[0]
        assert "--rerun-incomplete" in recipe, target


KILLER_REWARD = """
import os
import signal
def killer(images, prompts, metadata):
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
"""


@pytest.mark.slow
def test_a_run_killed_beyond_its_retries_is_a_failed_result_of_the_workflow(tmp_path):
    work = study_copy(tmp_path)
    (work / "killer.py").write_text(KILLER_REWARD)
    cfg = quick()
    cfg.update(seeds=[0], rewards=["killer.py:killer"], algorithms={"reinforce": {}}, probe={"enabled": False})
    cfg["sampling"]["num_steps"] = 2
    cfg["evaluation"].update(rewards=["jpeg_compressibility"], clip_model=None, max_prompts=2)
    (work / "study.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [str(SNAKEMAKE), "--cores", "2", "--configfile", "study.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tables = work / "results" / "studies" / "quick" / "tables"
    failed = pd.read_csv(tables / "failed_runs.csv", comment="#")
    assert list(failed["stage"]) == ["train"] and "signal 9" in failed["reason"].iloc[0]
    assert "signal 9" in (work / "report" / "studies" / "quick" / "index.html").read_text()


# ---------------------------------------------------------------- a reward that never returns
SLEEPY = """
import time
def sleepy(images, prompts, metadata):
    time.sleep(30)  # a hung reward model, a dead network share
    raise AssertionError("the watchdog let a 30 s reward call through")
"""


def test_a_reward_that_never_returns_ends_its_run_as_a_failure_naming_it_and_the_study_goes_on(
    tiny_model, tmp_path, monkeypatch
):
    import time

    from t2i_rl_bench.reward import TIMEOUT_ENV

    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLEEPY)
    cfg = small_study(tiny_model, {"reinforce": {}}, rewards=("jpeg_compressibility", f"{plugin}:sleepy"))
    assert cfg["timeouts"] == {"reward_s": 600}  # the default, stated in config/schema.yaml
    assert "T2I_RL_BENCH_REWARD_TIMEOUT={float(config['timeouts']['reward_s']):g}" in (ROOT / "Snakefile").read_text()
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")  # what the Snakefile exports from timeouts.reward_s: 0.5
    start = time.monotonic()
    run_jobs(cfg, tmp_path / "runs")  # every command exits 0
    assert time.monotonic() - start < 60
    bad = next(k for k in study.runs(cfg) if "sleepy" in k.reward)
    summary = strict_load((tmp_path / "runs" / bad.path / "summary.json").read_text())
    assert summary["status"] == "failed", summary
    assert re.search(rf"reward '{re.escape(str(plugin))}:sleepy' did not return within 0.5 s", summary["reason"])
    assert re.search(r"stopped after 0\.\d s", summary["reason"])
    good = next(k for k in study.runs(cfg) if k.reward == "jpeg_compressibility")
    assert strict_load((tmp_path / "runs" / good.path / "summary.json").read_text())["status"] == "finished"
    probe = strict_load((tmp_path / "runs" / bad.path / "probe.json").read_text())
    assert probe["status"] == "failed" and "did not return within 0.5 s" in probe["reason"]


def test_a_reward_server_whose_reward_hangs_answers_504_naming_it(tmp_path):
    from t2i_rl_bench.rewards.remote import RemoteReward, RemoteRewardError

    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLEEPY)
    serve = [sys.executable, "-m", "t2i_rl_bench.reward_server", "serve", "--reward", f"{plugin}:sleepy"]
    proc = subprocess.Popen(
        [*serve, "--port", "0", "--timeout", "0.5", "--max-requests", "2"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = proc.stdout.readline().split(" at ")[1].strip()
        client = RemoteReward(url=url, timeout=20, check_on_start=False)
        import torch

        with pytest.raises(RemoteRewardError, match=r"HTTP 504: reward .*sleepy' did not return within 0.5 s"):
            client(torch.zeros(2, 3, 4, 4), ["x", "y"], {})
        assert client.health()["reward"].endswith("sleepy")  # it serves on
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- failed runs in the headline
@pytest.mark.parametrize("status, counted", [("killed", 0), ("failed", 1)])
def test_a_failed_or_killed_seed_enters_no_mean_or_level_and_is_marked_in_the_headline(
    tiny_model, tmp_path, status, counted
):
    cfg = small_study(tiny_model, {"reinforce": {}}, seeds=(0, 1))
    runs = tmp_path / "runs"
    run_jobs(cfg, runs)
    first, second = (runs / k.path for k in study.runs(cfg))
    # seed 1 stopped after its first checkpoint (budget 4), as a kill or a plugin error leaves it
    for name in ("summary.json", "eval.json", "probe.json"):
        record = strict_load((second / name).read_text())
        record.update(status=status, reason=f"{status} for the test")
        record["rows"] = [r for r in record.get("rows", []) if r.get("budget", 0) <= 4]
        (second / name).write_text(json.dumps(record))
    html = aggregate_and_report(cfg, tmp_path)  # the report rendered (it crashed in derived_section)
    ok = strict_load((first / "eval.json").read_text())["rows"]
    head = pd.read_csv(tmp_path / "tables" / "headline.csv", comment="#")
    assert list(head["n_seeds"]) == [1] and list(head["images"]) == [8]  # no row mixes seed 0 at 8 and seed 1 at 4
    assert head["gain"].iloc[0] == pytest.approx(
        ok[-1]["reward/jpeg_compressibility"] - ok[0]["reward/jpeg_compressibility"]
    )
    # the compute-matched level is the finished seed's, not the failed one's
    assert head["seconds_level"].iloc[0] == pytest.approx(ok[-1]["device_seconds"], rel=1e-5)
    assert f"seed 1 {status}" in head["not_finished"].iloc[0] and f"seed 1 {status}" in html
    table = pd.read_csv(tmp_path / "tables" / "eval.csv", comment="#")
    at4 = table[(table["metric"] == "reward/jpeg_compressibility") & (table["budget"] == 4)]
    assert list(at4["n_seeds"]) == [1] and at4["mean"].iloc[0] == pytest.approx(ok[1]["reward/jpeg_compressibility"])
    assert (table[table["budget"] > 0]["diverged"] == counted).all()  # a kill is no failure of the method
    failed = pd.read_csv(tmp_path / "tables" / "failed_runs.csv", comment="#")
    assert set(failed["seed"]) == {1} and set(failed["status"]) == {status}


# ---------------------------------------------------------------- failure messages
NON_SCALAR = """
import torch
from t2i_rl_bench.algorithm import Algorithm, Loss
class NonScalar(Algorithm):
    def loss(self, batch):
        return Loss(batch.logp.mean() + torch.arange(900.0))  # a whole tensor (printed in full), not a scalar
"""


def test_a_failure_names_the_label_and_the_plugin_path_and_holds_no_whole_tensor(tiny_model, tmp_path):
    plugin = tmp_path / "nonscalar.py"
    plugin.write_text(NON_SCALAR)
    cfg = small_study(tiny_model, {"mine": {"plugin": f"{plugin}:NonScalar"}})
    run_jobs(cfg, tmp_path / "runs")
    (key,) = study.runs(cfg)
    who = f"algorithm 'mine' (plugin {plugin}:NonScalar)"
    summary = strict_load((tmp_path / "runs" / key.path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith(f"training of {who}")
    base = tmp_path / "runs" / "tiny" / "jpeg_compressibility" / "mine" / "base_probe.json"
    spec = study.run_spec(cfg, study.base_run_key(cfg, "tiny", None, "mine")).to_json()
    assert (
        bench_main(["probe-base", "--run-config", spec, "--probe", json.dumps(cfg["probe"]), "--out", str(base)]) == 0
    )
    probe = strict_load(base.read_text())
    assert probe["reason"].startswith(f"probe of the base model of {who}")  # not the class name alone
    assert "resume" not in probe["reason"]
    aggregate_and_report(cfg, tmp_path)
    failed = pd.read_csv(tmp_path / "tables" / "failed_runs.csv", comment="#")
    for reason in [summary["reason"], probe["reason"], *failed["reason"]]:
        assert len(reason) < 800 and "characters cut" in reason  # the tensor's repr is cut


def test_list_marks_an_installed_plugin_that_fails_to_import(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    from t2i_rl_bench.cli import main
    from t2i_rl_bench.registry import ALGORITHMS

    broken = EntryPoint("broken_algo", "no_such_package.algo:Broken", "t2i_rl_bench.algorithms")
    real = ALGORITHMS._entry_points
    monkeypatch.setattr(ALGORITHMS, "_entry_points", lambda: {**real(), "broken_algo": broken})
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "broken_algo [FAILS TO IMPORT]" in out.splitlines()[0] and "ddpo_is," in out.splitlines()[0]
    assert re.search(r"algorithm broken_algo: .*no_such_package.*failed to import.*ModuleNotFoundError", out)


# ---------------------------------------------------------------- no orphan after its job ended
ORPHAN = """
import os, sys, time
from t2i_rl_bench import jobguard
from t2i_rl_bench.io import atomic_write_text
jobguard.bind(interval=0.2)
print(os.getpid(), flush=True)
for i in range(100):
    atomic_write_text(sys.argv[1], str(i))  # what a trainer does: write into its run folder
    time.sleep(0.1)
"""


def test_a_command_whose_job_shell_is_killed_ends_and_writes_nothing_more(tmp_path):
    import signal
    import time

    out = tmp_path / "status.txt"
    (tmp_path / "orphan.py").write_text(ORPHAN)
    # the workflow's job: a shell that exports its pid (the Snakefile's prefix) and runs a command
    shell = subprocess.Popen(
        ["bash", "-c", f"export T2I_RL_BENCH_JOB_PID=$$; {sys.executable} {tmp_path / 'orphan.py'} {out} || true"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(shell.stdout.readline())
    time.sleep(0.5)
    shell.send_signal(signal.SIGKILL)  # kill -9 of the wrapper, not of the command
    shell.wait()
    time.sleep(1.5)
    written = out.read_text()
    time.sleep(1.0)
    assert out.read_text() == written, "the command wrote on after its job ended"
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
