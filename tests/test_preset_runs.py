"""Every real-model preset runs END TO END through the workflow (world, train, evaluate, aggregate,
report) on tiny random pipelines and tiny reward weights written in the layout the preset expects:
the preset file itself is read, only its paths, budgets, steps and batch sizes are shrunk. A dry
run is not enough: `evaluation.clip_model: null` passed one and crashed as soon as the weights
existed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_rewards import TINY_OPEN_CLIP, tiny_hf_clip, tiny_open_clip
from tiny_pipelines import build_sd, build_sd3

from t2i_rl_bench import integrity
from t2i_rl_bench.layout import study_paths

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def tiny_reward_settings(name: str, folder: Path) -> dict:
    """Tiny weights of the preset's reward model, in the files and folders its settings name."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "laion_aesthetic":
        import torch

        from t2i_rl_bench.rewards.aesthetic import AestheticHead

        _, config, weights = tiny_open_clip(folder, wrapped=False, suffix=".safetensors")
        torch.save(AestheticHead(TINY_OPEN_CLIP["embed_dim"]).state_dict(), folder / "head.pth")
        return {
            "clip_weights": str(weights),
            "head_weights": str(folder / "head.pth"),
            "model": str(config),
            "quick_gelu": False,
        }
    if name == "hps_v21":
        _, config, weights = tiny_open_clip(folder, wrapped=True, suffix=".pt")  # HPS_v2.1_compressed.pt layout
        return {"weights": str(weights), "model": str(config)}
    if name == "pickscore":
        tiny_hf_clip(folder / "PickScore_v1", with_processor=False)
        tiny_hf_clip(folder / "processor")
        return {"model_path": str(folder / "PickScore_v1"), "processor_path": str(folder / "processor")}
    raise AssertionError(f"no tiny weights for {name}")


def shrink(preset: str, root: Path) -> dict:
    """The preset with tiny local weights, 3 sampler steps, rounds of 4 images and 2 budgets."""
    cfg = yaml.safe_load((ROOT / "config" / preset).read_text())
    ((name, model),) = cfg["models"].items()
    pipeline = build_sd(root / "pipeline") if model["family"] == "sd" else build_sd3(root / "pipeline")
    integrity.record(pipeline)  # sha256.json: the workflow verifies the pipeline before any job
    model.update(path=str(pipeline), resolution=64)
    (reward,) = cfg["rewards"]
    cfg["reward_settings"] = {reward: tiny_reward_settings(reward, root / "reward")}
    cfg["sampling"]["num_steps"] = 3
    group = 1 if cfg["train"]["group_size"] == 1 else 2
    cfg["train"].update(images_per_round=4, group_size=group, micro_batch=2, budgets=[4, 8])
    cfg["evaluation"].update(max_prompts=2, images_per_prompt=2)
    cfg["statistics"] = {"bootstrap_resamples": 100}
    for rule in ("train", "evaluate", "probe"):  # a CPU machine: keep the rule resources schedulable
        cfg["resources"][rule].update(mem_mb=1000, runtime=10)
    return cfg


PRESETS = ["ddpo_sd15_aesthetic.yaml", "dancegrpo_sd14_hps.yaml", "flowgrpo_sd35m_pickscore.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_a_real_model_preset_runs_end_to_end(preset, tmp_path):
    work = tmp_path / "study"
    work.mkdir()
    for name in ("Snakefile", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    shutil.copytree(ROOT / "report" / "snakemake", work / "report" / "snakemake")
    cfg = shrink(preset, tmp_path / "weights")
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [str(SNAKEMAKE), "--cores", "2", "--configfile", "tiny.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "".join(p.read_text()[-1500:] for p in sorted((work / "results").rglob("*.log")))
    assert done.returncode == 0, done.stderr[-3000:] + logs
    out = study_paths(cfg["study"])
    assert out.study != "default" and not (work / "results" / "tables").exists()
    failed = pd.read_csv(work / out.tables / "failed_runs.csv", comment="#")
    assert failed.empty, failed.to_string()
    table = pd.read_csv(work / out.tables / "eval.csv", comment="#")
    (reward,) = cfg["rewards"]
    (algorithm,) = cfg["algorithms"]
    rows = table[(table["metric"] == f"reward/{reward}") & (table["algorithm"] == algorithm)]
    assert sorted(rows["budget"]) == [0, 4, 8] and rows["mean"].notna().all()
    assert not (work / out.tables / "improvement.csv").exists()  # one method: no pairwise table
    html = (work / out.report).read_text()
    assert "data:image/png;base64," in html and cfg["study"] in html
