"""TensorBoard event files beside the JSON lines: read back with TensorBoard's own reader they hold
the numbers of log.jsonl, eval.json and probe.json at their steps (training images seen); a
resumed run does not log a step twice; the optional wandb tracker is offline unless asked, and is
tested against a stand-in module (no network, no wandb install)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from t2i_rl_bench import study
from t2i_rl_bench.evaluate import evaluate_run
from t2i_rl_bench.probe import probe_run
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.tracking import EVENT_PREFIX, NullTracker, Tracker, flatten, open_tracker
from t2i_rl_bench.train import train
from t2i_rl_bench.train.loop import Trainer

FLOW = Path(__file__).resolve().parent.parent / "results" / "models" / "dit16-flow"
EVALUATION = {
    "prompts": "heldout",
    "max_prompts": 2,
    "images_per_prompt": 2,
    "seed": 0,
    "rewards": ["jpeg_compressibility", "attribute_match"],
    "clip_model": None,
}
PROBE = {"enabled": True, "minibatches": 2, "seed": 7}


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _by_step(acc: EventAccumulator, tag: str) -> dict[int, float]:
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
    return {e.step: e.value for e in events}


def _tags_at(acc: EventAccumulator, prefix: str, step: int) -> dict[str, float]:
    return {
        tag: v
        for tag in acc.Tags()["scalars"]
        if tag.startswith(prefix + "/")
        for s, v in _by_step(acc, tag).items()
        if s == step
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, RunSpec]:
    """2 rounds of 8 images, 4 steps, of the shipped flow model; evaluated and probed."""
    out = tmp_path_factory.mktemp("run")
    spec = RunSpec(
        model_path=str(FLOW),
        algorithm="ddpo_is",
        reward="jpeg_compressibility",
        seed=1,
        num_steps=4,
        images_per_round=8,
        group_size=2,
        budgets=(8, 16),
        prompts=("a red circle", "a blue square"),
    )
    train(spec, out)
    evaluate_run(out, spec, EVALUATION)
    probe_run(out, spec, PROBE)
    return out, spec


def test_training_event_files_hold_the_numbers_of_the_log_lines(run):
    out, _ = run
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    acc = _events(out)
    assert [line["images_seen"] for line in lines] == [8, 16]
    for line in lines:
        expected = flatten("train", line)
        # every number of the line, per-step clip fractions included, and nothing else
        assert "train/clipfrac_per_step/0" in expected and "train/reward_mean" in expected
        logged = _tags_at(acc, "train", line["images_seen"])
        assert logged.keys() == expected.keys()
        for tag, value in expected.items():
            assert logged[tag] == pytest.approx(value, rel=1e-6, abs=1e-12), tag  # float32 in the event file


def test_evaluation_and_probe_land_at_their_budgets(run):
    out, _ = run
    acc = _events(out)
    evaluation = json.loads((out / "eval.json").read_text())["rows"]
    probe = json.loads((out / "probe.json").read_text())["rows"]
    assert [r["budget"] for r in evaluation] == [r["budget"] for r in probe] == [0, 8, 16]
    for prefix, rows in (("eval", evaluation), ("probe", probe)):
        for row in rows:
            expected = flatten(prefix, {k: v for k, v in row.items() if k != "budget"})
            assert expected, prefix
            logged = _tags_at(acc, prefix, row["budget"])
            assert logged.keys() == expected.keys()
            for tag, value in expected.items():
                assert logged[tag] == pytest.approx(value, rel=1e-6, abs=1e-12), tag
    assert "eval/reward/jpeg_compressibility" in _tags_at(acc, "eval", 16)
    assert "probe/credit_share/3" in _tags_at(acc, "probe", 8)
    # the sample grid of each checkpoint, as the PNG evaluation wrote it
    from PIL import Image

    images = acc.Images("eval/samples")
    assert [e.step for e in images] == [0, 8, 16]
    for event in images:
        with Image.open(out / "samples" / f"{event.step}.png") as png:
            assert (event.width, event.height) == png.size


def test_evaluating_again_replaces_its_own_events(run):
    out, spec = run
    evaluate_run(out, spec, EVALUATION)
    acc = _events(out)
    assert sorted(_by_step(acc, "eval/reward/jpeg_compressibility")) == [0, 8, 16]  # _by_step: no step twice
    assert sorted(_by_step(acc, "train/reward_mean")) == [8, 16]
    assert len(list(out.glob(f"{EVENT_PREFIX}*.eval"))) == 1


class Killed(Exception):
    pass


def test_a_resumed_run_does_not_log_a_step_twice(tiny_model, tmp_path, monkeypatch):
    """Killed after logging round 3 but before saving its state (every 2 rounds): the rerun
    continues from round 2, and the reader keeps one value per step, the rerun's."""
    spec = RunSpec(
        model_path=str(tiny_model),
        algorithm="ddpo_is",
        reward="jpeg_compressibility",
        seed=2,
        num_steps=3,
        images_per_round=4,
        group_size=2,
        budgets=(16,),
        state_every=2,
        prompts=("a red circle", "a blue square"),
    )
    real_round = Trainer.round
    calls = {"n": 0}

    def dies_in_round_4(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return real_round(self)

    monkeypatch.setattr(Trainer, "round", dies_in_round_4)
    with pytest.raises(Killed):
        train(spec, tmp_path)
    assert sorted(_by_step(_events(tmp_path), "train/reward_mean")) == [4, 8, 12]  # round 3 logged, not saved
    monkeypatch.setattr(Trainer, "round", real_round)
    train(spec, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    logged = _by_step(_events(tmp_path), "train/seconds_total")
    assert sorted(logged) == [4, 8, 12, 16]
    # the rerun's own timings, not the killed process's
    assert [logged[line["images_seen"]] for line in lines] == pytest.approx([line["seconds_total"] for line in lines])


def test_a_fresh_run_replaces_the_curves_of_another(tiny_model, tmp_path):
    spec = RunSpec(
        model_path=str(tiny_model),
        algorithm="reinforce",
        reward="jpeg_compressibility",
        seed=2,
        num_steps=2,
        images_per_round=4,
        group_size=2,
        budgets=(8,),
        prompts=("a red circle",),
    )
    train(spec, tmp_path)
    train(spec.replace(budgets=(4,)), tmp_path)  # another spec: starts over
    acc = _events(tmp_path)
    assert sorted(_by_step(acc, "train/reward_mean")) == [4]
    assert len(list(tmp_path.glob(f"{EVENT_PREFIX}*"))) == 1


def test_only_the_main_process_writes(tmp_path):
    tracker = open_tracker(tmp_path, "train", main=False)
    tracker.scalars({"train/x": 1.0}, 1)
    tracker.close()
    assert isinstance(tracker, NullTracker) and not list(tmp_path.iterdir())


def test_flatten_keeps_the_numbers_of_a_line():
    line = {
        "round": 0,
        "reward/jpeg": 0.5,
        "clipfrac_per_step": [0.25, None],
        "loss": None,
        "name": "x",
        "ok": True,
        "bad": float("nan"),
        "settings": {"clip": 1e-4},
    }
    assert flatten("train", line) == {
        "train/round": 0.0,
        "train/reward/jpeg": 0.5,
        "train/clipfrac_per_step/0": 0.25,
        "train/settings/clip": 1e-4,
    }


class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.metrics, self.finished = kwargs, [], [], False

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


def _fake_wandb(monkeypatch) -> list[FakeRun]:
    runs: list[FakeRun] = []
    module = types.ModuleType("wandb")
    module.init = lambda **kw: runs.append(FakeRun(**kw)) or runs[-1]
    module.Image = lambda array: ("image", array.shape)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_is_offline_unless_asked_and_logs_against_images_seen(tmp_path, monkeypatch):
    runs = _fake_wandb(monkeypatch)
    run_dir = tmp_path / "m" / "r" / "a" / "seed0"
    tracker: Tracker = open_tracker(run_dir, "eval", {"wandb": True, "project": "p"}, {"seed": 0})
    tracker.scalars({"eval/reward/x": 0.5}, 8)
    tracker.image("eval/samples", np.zeros((4, 6, 3), np.uint8), 8)
    tracker.close()
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["project"] == "p" and run.init["name"] == "m/r/a/seed0"
    assert run.logged == [
        {"eval/reward/x": 0.5, "images_seen": 8},
        {"eval/samples": ("image", (4, 6, 3)), "images_seen": 8},
    ]
    assert ("*", "images_seen") in run.metrics and run.finished
    assert list(run_dir.glob(f"{EVENT_PREFIX}*.eval"))  # TensorBoard too, always
    # the same folder gives the same run id (training, evaluation and probe are one wandb run)
    open_tracker(run_dir, "probe", {"wandb": True, "mode": "online"}).close()
    assert runs[1].init["id"] == run.init["id"] and runs[1].init["mode"] == "online"
    open_tracker(tmp_path / "other", "train", {}).close()  # off: wandb is not opened
    assert len(runs) == 2


def test_tracking_is_bookkeeping_not_the_runs_identity(tmp_path):
    cfg = study.load("config/quick.yaml", check_paths=False)
    key = study.runs(cfg)[0]
    plain = study.run_spec(cfg, key)
    assert "tracking" not in plain.to_dict()  # a study without wandb keeps the run configs it had
    tracked = study.run_spec(study.validate({**cfg, "tracking": {"wandb": True}}, check_paths=False, verify=False), key)
    assert tracked.tracking == {"wandb": True}
    assert RunSpec.from_json(tracked.to_json()) == tracked
    assert tracked.identity() == plain.identity() == plain.to_dict()


def test_a_probe_at_the_final_budget_only_repeats_that_checkpoints_row(run, tmp_path):
    """`at: final` probes the base model and the last checkpoint; its rows are the every-budget
    probe's rows at those budgets, number for number (each checkpoint's probe starts afresh)."""
    out, spec = run
    every = json.loads((out / "probe.json").read_text())["rows"]
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    for budget in spec.budgets:
        (copy / "checkpoints" / str(budget)).symlink_to((out / "checkpoints" / str(budget)).resolve())
    final = probe_run(copy, spec, {**PROBE, "at": "final"})["rows"]
    assert [r["budget"] for r in final] == [0, 16]
    assert final == [every[0], every[-1]]
