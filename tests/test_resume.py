"""A training run killed with SIGKILL and started again continues from its last state and ends
exactly where an uninterrupted run ends."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SLOW_REWARD = """
import time
from t2i_rl_bench.rewards.jpeg import JpegCompressibility
_jpeg = JpegCompressibility()
def slow(images, prompts, metadata):
    time.sleep(0.4)  # long enough to be killed mid-run
    return _jpeg(images, prompts, metadata)
"""


def _command(model, reward, out, budgets=(8, 16, 24, 32)):
    cfg = dict(
        model_path=str(model),
        algorithm="ddpo_is",
        reward=reward,
        seed=5,
        num_steps=3,
        images_per_round=8,
        group_size=2,
        budgets=list(budgets),
        prompts=["a red circle", "a blue square"],
    )
    return [sys.executable, "-m", "t2i_rl_bench", "train", "--run-config", json.dumps(cfg), "--out", str(out)]


def _final(out):
    weights = load_file(out / "checkpoints" / "32" / "transformer" / "diffusion_pytorch_model.safetensors")
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for line in lines:
        for key in [k for k in line if k.startswith(("seconds", "peak_memory"))]:
            del line[key]
    return weights, lines


def test_kill_and_rerun_ends_like_an_uninterrupted_run(tiny_model, tmp_path):
    plugin = tmp_path / "slow_reward.py"
    plugin.write_text(SLOW_REWARD)
    reward = f"{plugin}:slow"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(_command(tiny_model, reward, straight), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_command(tiny_model, reward, resumed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    state = resumed / "state" / "trainer.pt"

    def rounds_done():
        return torch.load(state, weights_only=False)["rounds_done"] if state.is_file() else 0

    while time.time() < deadline and rounds_done() < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (resumed / "summary.json").exists()
    killed_at = torch.load(state, weights_only=False)["rounds_done"]
    assert 2 <= killed_at < 4, "the run finished before it could be killed"
    before = (resumed / "log.jsonl").read_text().splitlines()[:killed_at]

    subprocess.run(_command(tiny_model, reward, resumed), check=True, capture_output=True, timeout=300)
    w_straight, log_straight = _final(straight)
    w_resumed, log_resumed = _final(resumed)
    assert log_resumed == log_straight and len(log_straight) == 4
    # the rounds done before the kill were kept, not recomputed (their timings are unchanged)
    assert (resumed / "log.jsonl").read_text().splitlines()[:killed_at] == before
    for key in w_straight:
        assert torch.equal(w_straight[key], w_resumed[key]), key
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["images_seen"] == 32


# ---------------------------------------------------------------- a finished run given more budgets
def test_a_finished_run_given_more_budgets_continues_and_ends_like_a_straight_run(tiny_model, tmp_path):
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    subprocess.run(_command(tiny_model, "jpeg_compressibility", straight), check=True, capture_output=True, timeout=300)
    short = _command(tiny_model, "jpeg_compressibility", extended, budgets=(8, 16))
    subprocess.run(short, check=True, capture_output=True, timeout=300)
    assert json.loads((extended / "summary.json").read_text())["images_seen"] == 16
    first = (extended / "log.jsonl").read_text().splitlines()
    assert len(first) == 2

    longer = _command(tiny_model, "jpeg_compressibility", extended)
    subprocess.run(longer, check=True, capture_output=True, timeout=300)
    assert (extended / "log.jsonl").read_text().splitlines()[:2] == first  # continued, not retrained
    w_straight, log_straight = _final(straight)
    w_extended, log_extended = _final(extended)
    assert log_extended == log_straight and len(log_straight) == 4
    for key in w_straight:
        assert torch.equal(w_straight[key], w_extended[key]), key
    summary = json.loads((extended / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["images_seen"] == 32


@pytest.mark.parametrize(
    ("saved", "wanted", "expected"),
    [
        ({"lr": 1, "budgets": [8, 16]}, {"lr": 1, "budgets": [8, 16]}, True),  # the same spec: an interrupted run
        ({"lr": 1, "budgets": [8, 16]}, {"lr": 1, "budgets": [8, 16, 32]}, True),  # a budget after the last
        ({"lr": 1, "budgets": [16, 8]}, {"lr": 1, "budgets": [32, 8, 16]}, True),  # order does not matter
        ({"lr": 1, "budgets": [16, 8]}, {"lr": 1, "budgets": [8, 16]}, True),  # the same budgets, reordered
        ({"lr": 1, "budgets": [8, 16]}, {"lr": 1, "budgets": [8, 12, 16, 32]}, False),  # a checkpoint it never saved
        ({"lr": 1, "budgets": [8, 16]}, {"lr": 1, "budgets": [8]}, False),  # fewer budgets: it went too far
        ({"lr": 1, "budgets": [8, 16]}, {"lr": 2, "budgets": [8, 16, 32]}, False),  # another setting
        ({"lr": 1, "budgets": [8, 16]}, {"lr": 1, "seed": 3, "budgets": [8, 16, 32]}, False),
    ],
)
def test_which_saved_state_a_run_continues_from(saved, wanted, expected):
    from t2i_rl_bench.train.state import continues

    assert continues(saved, wanted) is expected


def test_a_state_that_does_not_continue_the_spec_is_removed_and_the_run_starts_over(tiny_model, tmp_path):
    out = tmp_path / "run"
    subprocess.run(
        _command(tiny_model, "jpeg_compressibility", out, budgets=(8, 16)), check=True, capture_output=True, timeout=300
    )
    fresh = tmp_path / "fresh"
    cmd = _command(tiny_model, "jpeg_compressibility", out, budgets=(8, 12, 16))
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    subprocess.run(
        _command(tiny_model, "jpeg_compressibility", fresh, budgets=(8, 12, 16)),
        check=True,
        capture_output=True,
        timeout=300,
    )
    a = load_file(out / "checkpoints" / "12" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(fresh / "checkpoints" / "12" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def log(folder):
        lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if not k.startswith(("seconds", "peak_memory"))} for line in lines]

    assert log(out) == log(fresh) and len(log(out)) == 2


# ---------------------------------------------------------------- the workflow: kill -9, then resume
KILL_ONCE = """
import os
import signal
import sys
from pathlib import Path

from t2i_rl_bench.rewards.jpeg import JpegCompressibility

_jpeg = JpegCompressibility()
_calls = []


def reward(images, prompts, metadata):
    # in a train job, on its third round, once per study folder: kill the trainer or its wrapper
    _calls.append(1)
    marker = Path("kill.me")
    if "train" in sys.argv and len(_calls) == 3 and marker.is_file():
        who = marker.read_text().strip()
        marker.unlink()
        Path("killed.pid").write_text(str(os.getpid()))
        os.kill(os.getpid() if who == "trainer" else os.getppid(), signal.SIGKILL)
    return _jpeg(images, prompts, metadata)
"""
SMALL = {
    "study": "resume",
    "seeds": [0],
    "rewards": ["kill_once.py:reward"],
    "algorithms": {"ddpo_is": {}},
    "sampling": {"num_steps": 3},
    "train": {"images_per_round": 4, "group_size": 2, "budgets": [8, 16]},
    "evaluation": {"max_prompts": 2, "images_per_prompt": 2, "rewards": ["jpeg_compressibility"], "clip_model": None},
    "probe": {"enabled": False},
    "statistics": {"bootstrap_resamples": 100},
}


def _study_folder(root, model, kill=None):
    import shutil

    import yaml

    repo = Path(__file__).resolve().parent.parent
    for name in ("Snakefile", "config", "profiles"):
        src = repo / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    (root / "kill_once.py").write_text(KILL_ONCE)
    (root / "study.yaml").write_text(yaml.safe_dump({**SMALL, "models": {"tiny": {"path": str(model)}}}))
    if kill:
        (root / "kill.me").write_text(kill)
    return root


def _snakemake(root):
    # the README's resume command (`make study`): snakemake --cores all --rerun-incomplete
    cmd = [str(Path(sys.executable).with_name("snakemake")), "--cores", "2", "--rerun-incomplete"]
    return subprocess.run([*cmd, "--configfile", "study.yaml"], cwd=root, capture_output=True, text=True, timeout=600)


def _tables(root):
    """eval.csv and the headline's gains without what depends on the clock (device-seconds)."""
    import pandas as pd

    tables = root / "results" / "studies" / "resume" / "tables"
    table = pd.read_csv(tables / "eval.csv", comment="#")
    table = table[~table["metric"].str.contains("seconds|peak_memory")].reset_index(drop=True)
    head = pd.read_csv(tables / "headline.csv", comment="#")
    head = head[[c for c in head.columns if "seconds" not in c]]
    return table, head, pd.read_csv(tables / "failed_runs.csv", comment="#")


def _running(pid: int) -> bool:
    """A live process (a zombie waiting for a parent that does not reap it counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def straight_tables(tiny_model, tmp_path_factory):
    root = _study_folder(tmp_path_factory.mktemp("straight"), tiny_model)
    done = _snakemake(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return _tables(root)


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["trainer", "wrapper"])
def test_a_job_killed_by_sigkill_resumes_with_the_readme_command_and_ends_like_a_straight_run(
    kill, tiny_model, tmp_path, straight_tables
):

    root = _study_folder(tmp_path, tiny_model, kill)
    run = root / "results" / "studies" / "resume" / "runs" / "tiny" / "kill_once.py:reward" / "ddpo_is" / "seed0"
    first = _snakemake(root)
    assert not (root / "kill.me").exists(), "the reward did not kill"
    trainer = int((root / "killed.pid").read_text())
    time.sleep(2)
    # no orphan trainer runs on after its job ended (killing the wrapper kills it too)
    assert not _running(trainer), f"the trainer (pid {trainer}) outlived its job"
    if kill == "trainer":  # the study still gets its tables; the killed run is marked, in no mean
        assert first.returncode == 0, first.stderr[-3000:]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "killed" and "--rerun-incomplete" in summary["reason"]
        _, head, failed = _tables(root)
        assert list(failed["status"]) == ["killed"] and "seed 0 killed" in str(head["not_finished"].iloc[0])
    else:  # the wrapper died: Snakemake saw a failed job and left no output behind
        assert not (run / "summary.json").exists()
    state = torch.load(run / "state" / "trainer.pt", weights_only=False)
    assert state["rounds_done"] == 2  # killed in its third round

    second = _snakemake(root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    log = root / "results" / "studies" / "resume" / "logs" / "train" / "tiny" / "kill_once.py:reward" / "ddpo_is"
    assert "2/4" in (log / "seed0.log").read_text()  # it resumed after its two saved rounds
    table, head, failed = _tables(root)
    want_table, want_head, _ = straight_tables
    assert failed.empty
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(table, want_table)
    pd_testing.assert_frame_equal(head, want_head)
    # and a third run has nothing to do: the kill was counted once
    again = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-n", "--cores", "1", "--configfile", "study.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_second_trainer_on_a_run_folder_another_process_trains_is_refused(tmp_path):
    # an orphan of a killed workflow still training: a new job on its folder must not write beside it
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from t2i_rl_bench.distributed import World; "
            "from t2i_rl_bench.train.state import RunState; RunState(Path(sys.argv[1]), World.current()).lock(); "
            "print('locked', flush=True); time.sleep(60)",
            str(tmp_path / "run"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        from t2i_rl_bench.distributed import World
        from t2i_rl_bench.train.state import RunFolderBusy, RunState

        with pytest.raises(RunFolderBusy, match=rf"being written by another process \(pid {holder.pid}\)"):
            RunState(tmp_path / "run", World.current()).lock()
    finally:
        holder.kill()
        holder.wait()
    RunState(tmp_path / "run", World.current()).lock()  # free once that process has ended


@pytest.mark.slow
def test_a_study_given_a_later_budget_continues_its_finished_runs_instead_of_retraining(tiny_model, tmp_path):
    """docs/usage.md#extending-a-run: after a budget is appended to a finished study's config, a
    plain `snakemake` trains each run on from its saved state (Snakemake's params trigger reruns
    the train job, bench/train/state.py `continues` keeps the rounds done) and re-assesses it."""
    import yaml

    root = _study_folder(tmp_path, tiny_model)
    run = root / "results" / "studies" / "resume" / "runs" / "tiny" / "kill_once.py:reward" / "ddpo_is" / "seed0"
    first = _snakemake(root)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (run / "log.jsonl").read_text().splitlines()
    assert len(before) == 4

    cfg = yaml.safe_load((root / "study.yaml").read_text())
    cfg["train"]["budgets"] = [8, 16, 24]
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    second = _snakemake(root)
    assert second.returncode == 0, second.stderr[-3000:]
    after = (run / "log.jsonl").read_text().splitlines()
    assert after[:4] == before and len(after) == 6  # the four rounds were kept, not recomputed
    log = root / "results" / "studies" / "resume" / "logs" / "train" / "tiny" / "kill_once.py:reward" / "ddpo_is"
    assert "4/6" in (log / "seed0.log").read_text()
    assert json.loads((run / "summary.json").read_text())["images_seen"] == 24
    rows = json.loads((run / "eval.json").read_text())["rows"]
    assert [r["budget"] for r in rows] == [0, 8, 16, 24]
