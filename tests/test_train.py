import json

import pytest
import torch
from safetensors.torch import load_file

from t2i_rl_bench.reward import RewardError
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import train, trained_steps


def _cfg(model, **kw):
    base = dict(
        model_path=str(model),
        algorithm="reinforce",
        reward="jpeg_compressibility",
        seed=3,
        num_steps=4,
        images_per_round=8,
        group_size=2,
        budgets=[8, 16],
        prompts=["a red circle", "a blue square"],
    )
    return RunSpec(**{**base, **kw})


def _weights(run):
    files = sorted((run / "checkpoints").rglob("*.safetensors"))
    return {str(f.relative_to(run)): load_file(f) for f in files}


def test_same_config_and_seed_give_identical_checkpoints_and_metrics(tiny_model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(tiny_model), a)
    train(_cfg(tiny_model), b)
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == {
        "checkpoints/8/transformer/diffusion_pytorch_model.safetensors",
        "checkpoints/16/transformer/diffusion_pytorch_model.safetensors",
    }
    for name in wa:
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), (name, key)
    drop = lambda d: {k: v for k, v in d.items() if not k.startswith(("seconds", "peak_memory"))}  # noqa: E731
    la = [drop(json.loads(line)) for line in (a / "log.jsonl").read_text().splitlines()]
    lb = [drop(json.loads(line)) for line in (b / "log.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 2


def test_training_changes_the_weights_and_logs_every_round(tiny_model, tmp_path):
    summary = train(_cfg(tiny_model, seed=4), tmp_path)
    assert summary["status"] == "finished" and summary["images_seen"] == 16
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    for key in (
        "reward_mean",
        "reward_std",
        "approx_kl",
        "clipfrac",
        "clipfrac_per_step",
        "grad_norm",
        "seconds_total",
        "peak_memory_mb",
        "adv_abs_mean",
        "zero_spread_groups",
    ):
        assert key in lines[0], key
    assert lines[0]["approx_kl"] == 0.0  # on-policy: the recomputed log-probs equal the sampled ones
    assert lines[0]["optimiser_steps"] == 1  # REINFORCE: one step per round
    first, last = _weights(tmp_path).values()
    assert any(not torch.equal(first[k], last[k]) for k in first)
    state = json.loads((tmp_path / "checkpoints" / "16" / "state.json").read_text())
    assert state["images_seen"] == 16 and state["device_seconds"] > 0
    # on a CPU the device-seconds are the rounds' CPU time, not their wall time (docs/measurements.md#device-seconds)
    assert state["device_seconds"] == pytest.approx(sum(line["seconds_cpu"] for line in lines))


def test_trained_steps_subsets_per_sample_and_drops_the_last():
    g = torch.Generator().manual_seed(0)
    steps = trained_steps(6, 10, fraction=0.5, drop_last=True, shuffle=True, generator=g)
    assert steps.shape == (6, 4) and steps.max() < 9
    assert all(len(set(row.tolist())) == 4 for row in steps)
    assert len({tuple(r.tolist()) for r in steps}) > 1  # a different subset per sample
    first = trained_steps(2, 10, fraction=0.3, drop_last=False, shuffle=False, generator=g)
    assert first.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_a_nan_reward_is_refused_naming_the_reward_and_prompt(tiny_model, tmp_path):
    plugin = tmp_path / "bad_reward.py"
    plugin.write_text(
        "import numpy as np\n"
        "def broken(images, prompts, metadata):\n"
        "    s = np.zeros(len(prompts)); s[1] = np.nan\n"
        "    return s, {}\n"
    )
    with pytest.raises(RewardError, match=r"bad_reward.py:broken.*nan.*prompt"):
        train(_cfg(tiny_model, reward=f"{plugin}:broken"), tmp_path / "run")


def test_group_size_must_divide_the_round(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="not a multiple of the group size"):
        train(_cfg(tiny_model, group_size=3), tmp_path)
