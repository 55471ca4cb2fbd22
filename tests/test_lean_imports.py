"""What a training job imports (docs/performance.md#start-up-the-embedded-policys-imports): a trainer
of the default study's embedded model is built without the scoring libraries (open_clip, torchmetrics, matplotlib) and
without the diffusers models it does not use (diffusers.models.transformers' __init__ imports them
all, and peft with them). An invariant, checked in a fresh interpreter; the seconds are the
benchmark's (tests/benchmarks/rl_step.py prints them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NAMES = ["open_clip", "torchmetrics", "matplotlib", "peft", "diffusers.models.transformers.transformer_sd3"]

SCRIPT = """
import json, os, sys, tempfile
os.environ["HF_HUB_OFFLINE"] = "1"
from t2i_rl_bench import study
from t2i_rl_bench.train import Trainer
cfg = study.load("config/config.yaml")
key = next(k for k in study.runs(cfg) if k.algorithm == "ddpo_is")
with tempfile.TemporaryDirectory() as out:
    trainer = Trainer(study.run_spec(cfg, key), out)
built = {n: n in sys.modules for n in NAMES}
from diffusers import PixArtTransformer2DModel, SD3Transformer2DModel  # a later import still works
from diffusers.models.transformers import PixArtTransformer2DModel as Again
same = type(trainer.policy.denoiser) is PixArtTransformer2DModel is Again
print(json.dumps({"built": built, "same_class": same}))
"""


def test_a_trainer_imports_no_scoring_library_and_one_diffusers_model():
    script = f"NAMES = {NAMES!r}\n{SCRIPT}"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not any(result["built"].values()), result["built"]  # what building the trainer imported
    assert result["same_class"]  # a later package import finds the very class the policy uses
