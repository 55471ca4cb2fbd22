"""The lean CLIP judge (bench/judges/lean_clip.py) computes what open_clip's `CLIP` computes, bit
for bit: image and text embeddings, cosines and the FID feature network's outputs with
`torch.equal`, on the shipped judge and at random initialisation (where even the seeded
construction draws the same parameters), and a configuration outside what is mirrored is refused
naming the key (docs/performance.md#start-up-the-lean-clip-judge)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2i_rl_bench.judges.clip import ClipJudge, ClipSpec, ImageFeatures, build_clip, load_clip
from t2i_rl_bench.judges.lean_clip import LeanCLIP
from t2i_rl_bench.world.captions import prompt_sets

ROOT = Path(__file__).resolve().parents[1]
CLIP16 = ROOT / "results/models/clip16"
pytestmark = pytest.mark.skipif(not (CLIP16 / "bench_model.json").is_file(), reason="no shipped CLIP judge")


def _prompts() -> list[str]:
    sets = prompt_sets()
    words = sorted({p for s in sets.values() for p in s})
    # every prompt of the world, a word outside the grammar ([UNK]) and a truncated over-long one
    return words + ["a purple elephant , black background", " ".join(["a small red circle"] * 6)]


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_same_judges(lean: ClipJudge, reference: ClipJudge, grad: bool) -> None:
    prompts = _prompts()
    assert torch.equal(lean.tokens(prompts), reference.tokens(prompts))
    with torch.set_grad_enabled(grad):
        for images in (_images(70, 16, 1), _images(5, 32, 2), _images(3, 8, 3)):  # resized when not 16 px
            for normalize in (True, False):
                assert torch.equal(lean.encode_images(images, normalize), reference.encode_images(images, normalize))
            assert torch.equal(ImageFeatures(lean)(images), ImageFeatures(reference)(images))
        for normalize in (True, False):
            assert torch.equal(lean.encode_texts(prompts, normalize), reference.encode_texts(prompts, normalize))
    images = _images(len(prompts), 16, 4)
    assert torch.equal(lean.cosine(images, prompts), reference.cosine(images, prompts))


def test_the_shipped_judge_loads_lean_and_equals_open_clip():
    lean, reference = load_clip(CLIP16), load_clip(CLIP16, lean=False)
    assert type(lean.model) is LeanCLIP and type(reference.model).__module__.startswith("open_clip")
    assert list(lean.model.state_dict()) == list(reference.model.state_dict())
    assert list(dict(lean.model.named_parameters())) == list(dict(reference.model.named_parameters()))
    assert not lean.training and not any(p.requires_grad for p in lean.parameters())
    _assert_same_judges(lean, reference, grad=False)
    _assert_same_judges(lean, reference, grad=True)  # the attention's slow path (grad mode)


@pytest.mark.parametrize(
    "spec",
    [ClipSpec(), ClipSpec(resolution=8, patch_size=2, vision_width=32, vision_layers=1, text_layers=1, embed_dim=16)],
    ids=["default", "tiny"],
)
def test_a_seeded_lean_clip_is_open_clips_at_random_init_outputs_and_gradients(spec):
    built = []
    for lean in (True, False):
        torch.manual_seed(3)
        built.append((build_clip(spec, 30, 0, 3, lean=lean), torch.get_rng_state()))
    (lean, lean_rng), (reference, reference_rng) = built
    assert torch.equal(lean_rng, reference_rng)  # construction drew the same random numbers
    state, reference_state = lean.state_dict(), reference.state_dict()
    assert list(state) == list(reference_state)
    assert all(torch.equal(state[k], reference_state[k]) for k in state)
    assert torch.equal(lean.attn_mask, reference.attn_mask)
    text = torch.randint(4, 30, (6, 16), generator=torch.Generator().manual_seed(5))
    text[:, 9] = 3  # [EOS] then padding
    text[:, 10:] = 0
    images = torch.randn(6, 3, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(6))
    for train in (True, False):
        outputs = []
        for model in (lean, reference):
            model.train(train).zero_grad(set_to_none=True)
            image, words = model.encode_image(images, normalize=True), model.encode_text(text, normalize=True)
            logits = model.logit_scale.exp() * image @ words.T
            logits.log_softmax(1).diagonal().sum().backward()
            outputs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
        (out, grads), (out_ref, grads_ref) = outputs
        assert torch.equal(out, out_ref)
        assert list(grads) == list(grads_ref)
        assert all(torch.equal(grads[n], grads_ref[n]) for n in grads), [
            n for n in grads if not torch.equal(grads[n], grads_ref[n])
        ]


def test_the_environment_variable_loads_open_clip(monkeypatch):
    monkeypatch.setenv("T2I_RL_BENCH_LEAN_MODELS", "0")
    assert type(load_clip(CLIP16).model).__module__.startswith("open_clip")
    monkeypatch.setenv("T2I_RL_BENCH_LEAN_MODELS", "1")
    assert type(load_clip(CLIP16).model) is LeanCLIP


@pytest.mark.parametrize(
    ("which", "key", "value"),
    [
        ("text_cfg", "pool_type", "argmax"),
        ("vision_cfg", "qk_norm", True),
        ("vision_cfg", "attentional_pool", True),
        ("text_cfg", "no_causal_mask", True),
        ("vision_cfg", "an_unknown_option", 1),
    ],
)
def test_a_config_outside_the_mirror_is_refused_naming_the_key(which, key, value):
    cfg = {"vision_cfg": dict(image_size=16, patch_size=4, width=32, layers=1, head_width=16)}
    cfg["text_cfg"] = dict(context_length=16, vocab_size=30, width=32, heads=2, layers=1, pool_type="eos")
    cfg[which][key] = value
    with pytest.raises(ValueError, match=key):
        LeanCLIP(embed_dim=16, **cfg)


def test_weights_outside_the_mirror_are_refused_naming_them(tmp_path):
    folder = tmp_path / "clip"
    shutil.copytree(CLIP16, folder)
    state = load_file(folder / "model.safetensors")
    save_file({**state, "logit_bias": torch.zeros([])}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="logit_bias"):
        load_clip(folder)
    info = json.loads((folder / "bench_model.json").read_text())
    info["spec"]["pool"] = "mean"
    (folder / "bench_model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="'pool'"):
        load_clip(folder)
