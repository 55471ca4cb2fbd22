"""What a training job imports (docs/performance.md#start-up-the-lean-embedded-model): a trainer of the
default study's embedded model is built, and trains a round, without diffusers, transformers,
torch._dynamo (and sympy), the scoring libraries (open_clip, torchmetrics, matplotlib) or peft,
and that round trains the same weights bit for bit as the diffusers/transformers classes do
(T2I_RL_BENCH_LEAN_MODELS=0). On that path the diffusers model modules it does not use stay out
too, and a later package import finds the very class the policy uses. The assess job's scoring
(docs/performance.md#start-up-the-assess-job) loads the CLIP judge and computes FID and KID without
open_clip, transformers, torchvision, torch._dynamo, torchmetrics' package or scipy.stats, to the
same numbers. Invariants, checked in fresh interpreters; the seconds are the benchmark's
(tests/benchmarks/rl_step.py prints them) and docs/performance.md's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LEAN_ABSENT = ["diffusers", "transformers", "torch._dynamo", "sympy", "open_clip", "torchmetrics", "matplotlib", "peft"]
DIFFUSERS_ABSENT = ["open_clip", "torchmetrics", "matplotlib", "peft", "diffusers.models.transformers.transformer_sd3"]

SCRIPT = """
import hashlib, json, os, sys, tempfile
os.environ["HF_HUB_OFFLINE"] = "1"
from t2i_rl_bench import study
from t2i_rl_bench.train import Trainer
cfg = study.load("config/config.yaml")
key = next(k for k in study.runs(cfg) if k.algorithm == "ddpo_is")
def digest(model):
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode() + value.numpy().tobytes())
    return h.hexdigest()
with tempfile.TemporaryDirectory() as out:
    trainer = Trainer(study.run_spec(cfg, key), out)
    built = {n: n in sys.modules for n in NAMES}
    before = digest(trainer.policy.denoiser)
    line = trainer.round() if ROUND else {}
after = {n: n in sys.modules for n in NAMES}
same = None
if not LEAN:
    from diffusers import PixArtTransformer2DModel, SD3Transformer2DModel  # a later import still works
    from diffusers.models.transformers import PixArtTransformer2DModel as Again
    same = type(trainer.policy.denoiser) is PixArtTransformer2DModel is Again
line = {k: v for k, v in line.items() if not k.startswith(("seconds", "peak_memory"))}
weights = digest(trainer.policy.denoiser)
denoiser = type(trainer.policy.denoiser).__name__
result = dict(built=built, after=after, same_class=same, before=before, weights=weights, line=line)
print(json.dumps(dict(result, denoiser=denoiser)))
"""


def _job(lean: bool, names: list[str], round_: bool) -> dict:
    script = f"NAMES = {names!r}\nLEAN = {lean}\nROUND = {round_}\n{SCRIPT}"
    env = dict(os.environ, T2I_RL_BENCH_LEAN_MODELS="1" if lean else "0", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_lean_trainer_imports_neither_diffusers_nor_transformers_and_trains_the_same_round():
    lean = _job(True, LEAN_ABSENT, round_=True)
    assert lean["denoiser"] == "PixArtDiT"
    assert not any(lean["built"].values()), lean["built"]  # what building the trainer imported
    assert not any(lean["after"].values()), lean["after"]  # and a round (optimiser steps included)
    reference = _job(False, LEAN_ABSENT, round_=True)
    assert reference["denoiser"] == "PixArtTransformer2DModel" and reference["built"]["diffusers"]
    assert lean["before"] == reference["before"] != reference["weights"]  # the round trained
    assert lean["weights"] == reference["weights"] and lean["line"] == reference["line"]


def test_the_diffusers_path_imports_no_scoring_library_and_one_diffusers_model():
    result = _job(False, DIFFUSERS_ABSENT, round_=False)
    assert not any(result["built"].values()), result["built"]
    assert result["same_class"]  # a later package import finds the very class the policy uses


SCORING_ABSENT = ["open_clip", "transformers", "torchvision", "torch._dynamo", "sympy", "torchmetrics", "scipy.stats"]
SCORING = """
import json, os, sys
import torch
import t2i_rl_bench.evaluate, t2i_rl_bench.probe  # the assess job's modules: scipy.stats only where used
from t2i_rl_bench.judges.clip import image_features, load_clip
from t2i_rl_bench.metrics.quality import fid, kid
g = torch.Generator().manual_seed(0)
real, fake = torch.rand(40, 3, 16, 16, generator=g), torch.rand(40, 3, 16, 16, generator=g) ** 2
judge = load_clip("results/models/clip16")
values = dict(
    fid=fid(real, fake, image_features("results/models/clip16")),
    kid=kid(real, fake, image_features("results/models/clip16"), subset_size=20, subsets=10),
    cosine=judge.cosine(real[:2], ["a small red circle on the left , black background"] * 2).tolist(),
)
loaded = {n: n in sys.modules for n in NAMES}
from torchmetrics.image.fid import FrechetInceptionDistance
import torchmetrics  # a later import of the whole package works and finds the same class
same = torchmetrics.image.fid.FrechetInceptionDistance is FrechetInceptionDistance and hasattr(torchmetrics, "Accuracy")
print(json.dumps(dict(values=values, loaded=loaded, same=same)))
"""


def _scoring(lean: bool) -> dict:
    script = f"NAMES = {SCORING_ABSENT!r}\n{SCORING}"
    env = dict(os.environ, T2I_RL_BENCH_LEAN_MODELS="1" if lean else "0", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_scoring_loads_neither_open_clip_nor_torchmetrics_package_and_computes_the_same_numbers():
    """The assess job's scoring (docs/performance.md#start-up-the-assess-job): its modules, the judge
    and torchmetrics' FID and KID without open_clip, transformers, torchvision, torch._dynamo,
    torchmetrics' package __init__ or scipy.stats, and the same FID, KID and cosines as the
    packages' own path."""
    lean, reference = _scoring(True), _scoring(False)
    assert not any(lean["loaded"].values()), lean["loaded"]
    assert reference["loaded"]["open_clip"] and reference["loaded"]["torchmetrics"]
    assert lean["values"] == reference["values"]
    assert lean["same"] and reference["same"]


FALLBACK = """
import json, sys
from t2i_rl_bench.models import imports
partial = imports._fid_kid_from_modules
def broken():
    partial()  # loads the metric modules, then fails as another torchmetrics version might
    raise RuntimeError("a torchmetrics this was not written against")
imports._fid_kid_from_modules = broken
fid, kid = imports.fid_kid_classes()
import torchmetrics
from torchmetrics.image.kid import KernelInceptionDistance
print(json.dumps(dict(package=hasattr(torchmetrics, "Accuracy"), same=kid is KernelInceptionDistance,
                      fid=fid.__module__, dynamo="torch._dynamo" in sys.modules)))
"""


def test_fid_and_kid_fall_back_to_the_package_import_when_the_lean_import_fails():
    env = dict(os.environ, T2I_RL_BENCH_LEAN_MODELS="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == dict(package=True, same=True, fid="torchmetrics.image.fid", dynamo=True)
