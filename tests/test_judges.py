"""The in-house CLIP judge: the shipped checkpoint matches its hashes and retrieves held-out scenes;
the pretraining code still runs and is seeded; its image tower serves as a feature network."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_rl_bench.judges.clip import ClipSpec, image_features, load_clip, pretrain_clip
from t2i_rl_bench.models.checkpoint import read_manifest, verify
from t2i_rl_bench.world.captions import prompt_sets
from t2i_rl_bench.world.dataset import reference_images

CLIP16 = Path(__file__).resolve().parent.parent / "results" / "models" / "clip16"
TINY = ClipSpec(vision_width=16, vision_layers=1, text_width=16, text_layers=1, head_width=8, embed_dim=8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("judges") / "tiny_clip"
    return pretrain_clip(out, steps=3, batch_size=16, spec=TINY, eval_renders=1, progress=False)


def test_shipped_clip16_matches_its_recorded_hashes_and_retrieval():
    assert verify(CLIP16) == []
    info = read_manifest(CLIP16)
    # every file the judge loads is recorded: the weights and the tokenizer
    assert info["family"] == "judge_clip" and sorted(info["sha256"]) == [
        "model.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    ]
    assert info["retrieval"]["heldout"]["image_to_text_top1"] >= 0.9
    assert info["retrieval"]["heldout"]["text_to_image_top1"] >= 0.9
    assert sum(f.stat().st_size for f in CLIP16.rglob("*") if f.is_file()) < 3_000_000


def test_shipped_clip16_ranks_its_own_caption_first_on_fresh_renders():
    judge = load_clip(CLIP16)
    captions = prompt_sets()["heldout"][:32]
    images = torch.from_numpy(reference_images(captions, per_prompt=1, seed=123))
    with torch.no_grad():
        sim = judge.encode_images(images) @ judge.encode_texts(captions).T
    assert (sim.argmax(1) == torch.arange(32)).float().mean() >= 0.9


def test_pretraining_runs_is_seeded_and_records_its_provenance(tiny_clip, tmp_path):
    info = json.loads((tiny_clip / "bench_model.json").read_text())
    assert info["pretraining"]["steps"] == 3 and info["pretraining"]["seed"] == 0
    assert set(info["retrieval"]) >= {"heldout", "all"} and verify(tiny_clip) == []
    again = pretrain_clip(tmp_path / "again", steps=3, batch_size=16, spec=TINY, eval_renders=1, progress=False)
    assert read_manifest(again)["sha256"] == info["sha256"]


def test_image_features_are_a_feature_network_for_fid(tiny_clip):
    from t2i_rl_bench.metrics.quality import fid

    features = image_features(tiny_clip)
    real = torch.from_numpy(reference_images(prompt_sets()["train"][:24], per_prompt=1, seed=0))
    out = features(real)
    assert out.shape == (24, features.num_features) == (24, TINY.embed_dim)
    bigger = torch.nn.functional.interpolate(real, size=(32, 32), mode="nearest")  # resized to the CLIP's 16 px
    assert torch.allclose(features(bigger), out, atol=1e-5)
    assert np.isfinite(fid(real, torch.rand(24, 3, 16, 16), features))


def test_load_clip_refuses_a_folder_of_another_model(tmp_path):
    (tmp_path / "bench_model.json").write_text(json.dumps({"family": "embedded"}))
    with pytest.raises(FileNotFoundError, match="not an in-house CLIP folder"):
        load_clip(tmp_path)


def test_clip_alignment_refuses_changed_weights(tiny_clip, tmp_path):
    import shutil

    from t2i_rl_bench.reward import check_weights

    copy = tmp_path / "clip"
    shutil.copytree(tiny_clip, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0" * 4)
    assert any(
        "recorded hashes" in p and "'model'" in p
        for p in check_weights({"name": "clip_alignment", "settings": {"model": str(copy)}})
    )
