"""A training run killed with SIGKILL and started again continues from its last state and ends
exactly where an uninterrupted run ends."""

import json
import signal
import subprocess
import sys
import time

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


def _command(model, reward, out):
    cfg = dict(
        model_path=str(model),
        algorithm="ddpo_is",
        reward=reward,
        seed=5,
        num_steps=3,
        images_per_round=8,
        group_size=2,
        budgets=[8, 16, 24, 32],
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
