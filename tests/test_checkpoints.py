"""The shipped base model: it loads through the policy interface and matches its recorded hashes;
the pretraining code that made it still runs."""

import json
from pathlib import Path

import torch

from t2i_rl_bench.models.checkpoint import read_manifest, verify
from t2i_rl_bench.models.policy import Policy

SHIPPED = Path(__file__).resolve().parent.parent / "results" / "models"


def test_shipped_checkpoints_match_their_recorded_hashes():
    folders = sorted(p.parent for p in SHIPPED.glob("*/bench_model.json"))
    assert folders, "no shipped model under results/models"
    for folder in folders:
        assert verify(folder) == [], folder
        assert read_manifest(folder)["sha256"]


def test_shipped_model_loads_and_denoises():
    folder = next(
        p.parent for p in sorted(SHIPPED.glob("*/bench_model.json")) if read_manifest(p.parent)["family"] == "embedded"
    )  # not the judges (clip16)
    policy = Policy.load(folder)
    cond = policy.encode(["a large red square on the left , black background"])
    x = torch.randn(1, *policy.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = policy.predict(x, torch.tensor([500]), cond, None, 1.0)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_changed_weight_file_fails_verification(tmp_path, tiny_model):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    weights = next(copy.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert verify(copy) == [str(weights.relative_to(copy))]


def test_pretraining_runs_and_records_its_provenance(tiny_model):
    info = json.loads((tiny_model / "bench_model.json").read_text())
    assert info["pretraining"]["steps"] == 2 and info["pretraining"]["seed"] == 0
    assert Policy.load(tiny_model).sample_shape == (3, 16, 16)
