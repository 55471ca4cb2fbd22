from pathlib import Path

import numpy as np
import torch

from bench.models.policy import Policy
from bench.recursive import DECAY_METRICS, RecursiveSettings, finetune, recursive_run
from bench.spec import RunSpec
from bench.train import train

JUDGE = Path(__file__).resolve().parent.parent / "results" / "models" / "clip16"
EVALUATION = {"prompts": "heldout", "max_prompts": 3, "images_per_prompt": 2, "seed": 7, "clip_model": str(JUDGE)}


def test_self_consuming_loop_measures_every_generation_and_reproduces(tiny_model, tmp_path):
    run = tmp_path / "run"
    train(RunSpec(model_path=str(tiny_model), algorithm="reinforce", reward="attribute_match", num_steps=3,
                    images_per_round=4, group_size=2, budgets=[4]), run)
    run_cfg = RunSpec.read(run)
    settings = RecursiveSettings(generations=2, images_per_generation=6, select_top=0.5, real_fraction=0.5,
                                 finetune_steps=2, batch_size=4)
    out = recursive_run(run, run_cfg, settings, EVALUATION)
    assert out["start"] == "checkpoint 4"
    assert [r["generation"] for r in out["rows"]] == [0, 1, 2]
    assert out["rows"][1]["generated_share"] == 0.5  # 3 selected samples + 3 real scenes
    for metric in DECAY_METRICS:
        assert np.isfinite(out["decay"][f"decay/{metric}"]), metric
    assert out["rows"][0]["quality/fid"] != out["rows"][2]["quality/fid"]  # the fine-tunes changed the model
    again = recursive_run(run, run_cfg, settings, EVALUATION)
    assert again["rows"] == out["rows"]


def test_finetune_fits_its_data(tiny_model):
    policy = Policy.load(tiny_model)
    images = torch.rand(1, 3, 16, 16).expand(8, 3, 16, 16).contiguous()
    captions = ["a red circle"] * 8
    g = torch.Generator().manual_seed(0)
    first = finetune(policy, images, captions, steps=3, batch_size=8, lr=1e-3, generator=g)
    later = finetune(policy, images, captions, steps=60, batch_size=8, lr=1e-3, generator=g)
    assert later < first
