"""The baseline a method specifies is the one it gets in the default study: REINFORCE, DDPO-IS and
PCPO specify ddpo-pytorch's per-prompt stat tracker, which falls back to batch statistics until
a prompt has min_count rewards. The default study runs each method as its paper's code does
(docs/study.md#each-method-as-its-paper-runs-it): the official min_count 16, so on its 288
prompts, drawn about once per run, the tracker normalises over the round's batch, while LOOP
keeps its leave-one-out baseline: the two baselines differ, and LOOP against DDPO-IS is the
controlled comparison of them (the previous study set min_count to the group size, which made
every per-prompt method use LOOP's baseline up to scale)."""

from __future__ import annotations

from pathlib import Path

import torch

from t2i_rl_bench import study
from t2i_rl_bench.registry import ALGORITHMS

DEFAULT = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


def _round(n_prompts: int = 8, group: int = 4):
    g = torch.Generator().manual_seed(0)
    group_ids = torch.arange(n_prompts).repeat_interleave(group)
    # groups with very different means: a per-prompt baseline removes them, a batch one does not
    rewards = group_ids.float() + 0.1 * torch.randn(len(group_ids), generator=g)
    prompts = [f"prompt {i}" for i in group_ids.tolist()]
    return rewards, group_ids, prompts


def _per_prompt(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(rewards)
    for gid in group_ids.unique():
        m = group_ids == gid
        r = rewards[m].double()
        out[m] = ((r - r.mean()) / (r.std(unbiased=False) + 1e-6)).float()
    return out


def test_default_study_per_prompt_methods_use_their_official_tracker_and_loop_its_own_baseline():
    cfg = study.load(DEFAULT, check_paths=False)
    rewards, group_ids, prompts = _round(group=cfg["train"]["group_size"])
    r = rewards.double()
    batch = ((r - r.mean()) / (r.std(unbiased=False) + 1e-6)).float().clamp(-5, 5)
    checked = 0
    for label, settings in cfg["algorithms"].items():
        algo = study.check_algorithm(label, settings)  # as the workflow builds it
        adv = algo.advantages(rewards, group_ids, prompts)
        if algo.recipe.advantages == "per_prompt":
            assert algo.recipe.tracker_min_count == 16  # ddpo-pytorch's, not overridden
            torch.testing.assert_close(adv, batch, rtol=1e-5, atol=1e-5)
            checked += 1
        elif algo.recipe.advantages in ("loo", "loo_std"):  # within-group: prompt difficulty removed
            assert not torch.allclose(adv, batch, atol=1e-2)
    assert checked >= 3  # reinforce, ddpo_is, pcpo


def test_ddpo_pytorch_min_count_falls_back_to_batch_statistics_on_a_first_round():
    """The confound the default study removes: with min_count 16 and 4 images per prompt the
    tracker normalises over the whole batch, so group means survive in the advantages."""
    rewards, group_ids, prompts = _round()
    adv = ALGORITHMS.get("ddpo_is")().advantages(rewards, group_ids, prompts)
    r = rewards.double()
    batch = ((r - r.mean()) / (r.std(unbiased=False) + 1e-6)).float().clamp(-5, 5)
    torch.testing.assert_close(adv, batch, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adv, _per_prompt(rewards, group_ids), atol=1e-2)
