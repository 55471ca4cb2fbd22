"""LoRA through peft: adapters start at zero, only they train, and the reference policy (PRDP,
KL) is the same network with its adapters switched off."""

import json

import torch

from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.rollout import make_sampler, recompute, rollout
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import train


def _logp(policy, traj, sampler, reference=False):
    n, k = traj.logp.shape
    with torch.no_grad():
        return recompute(
            policy, sampler, traj, torch.arange(n), torch.arange(k).expand(n, k), 3.0, reference=reference
        )[0]


def test_lora_trains_only_adapters_and_reference_is_the_base(tiny_model, tmp_path):
    out = tmp_path / "run"
    train(
        RunSpec(
            model_path=str(tiny_model),
            algorithm="prdp",
            reward="jpeg_compressibility",
            num_steps=3,
            images_per_round=4,
            group_size=2,
            budgets=[4],
            lora_rank=4,
            lr=1e-2,
        ),
        out,
    )
    assert (out / "checkpoints" / "4" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoints" / "4" / "transformer").exists()

    base = Policy.load(tiny_model)
    tuned = Policy.load(tiny_model)
    tuned.load_denoiser_state(out / "checkpoints" / "4")
    assert tuned.lora == {"rank": 4, "alpha": 4.0, "targets": ["to_q", "to_k", "to_v", "to_out.0"]}
    trainable = [n for n, p in tuned.denoiser.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    sampler = make_sampler(base, 3, 1.0)
    traj = rollout(base, sampler, ["a red circle", "two small blue squares"], 3.0, torch.Generator().manual_seed(1))
    assert torch.allclose(_logp(base, traj, sampler), traj.logp, atol=1e-5)
    assert torch.allclose(_logp(tuned, traj, sampler, reference=True), traj.logp, atol=1e-5)
    assert not torch.allclose(_logp(tuned, traj, sampler), traj.logp, atol=1e-5)


def test_fresh_adapters_leave_the_policy_unchanged(tiny_model):
    policy = Policy.load(tiny_model)
    sampler = make_sampler(policy, 3, 1.0)
    traj = rollout(policy, sampler, ["a green triangle"], 3.0, torch.Generator().manual_seed(2))
    policy.enable_lora(2)
    assert torch.allclose(_logp(policy, traj, sampler), traj.logp, atol=1e-5)
    assert json.dumps(policy.lora)
