"""Rewards: embedded rewards on known inputs, the real reward models' code paths with tiny random
weights of the same classes, the weights checks, composition, sanity checks and the HTTP reward."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_rl_bench.judges.reward_model_weights import WeightsError, clip_preprocess
from t2i_rl_bench.registry import REWARDS
from t2i_rl_bench.reward import ComposedReward, RewardError, check_weights, zero_spread_fraction
from t2i_rl_bench.world.captions import caption
from t2i_rl_bench.world.scenes import all_scenes, render, sample_jitter

PROMPTS = ["a large red square on the left , black background", "two small blue circles on the top"]


def own_vs_other_pairs(n: int, seed: int = 0):
    """n (caption, image of that caption, image of another caption) triples of the world."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    out = []
    for _ in range(n):
        i, j = rng.choice(len(scenes), size=2, replace=False)
        own = render(scenes[i], 16, sample_jitter(rng))
        other = render(scenes[j], 16, sample_jitter(rng))
        out.append((caption(scenes[i]), own, other))
    captions, own, other = zip(*out)
    return list(captions), torch.from_numpy(np.stack(own)), torch.from_numpy(np.stack(other))


# ---------------------------------------------------------------- embedded rewards


def test_jpeg_a_flat_image_compresses_better_than_noise():
    flat = torch.full((1, 3, 16, 16), 0.5)
    noise = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    images = torch.cat([flat, noise])
    comp, info = REWARDS.get("jpeg_compressibility")()(images, ["x", "x"], {})
    incomp, _ = REWARDS.get("jpeg_incompressibility")()(images, ["x", "x"], {})
    assert comp[0] > comp[1] and incomp[1] > incomp[0]
    assert np.allclose(comp, -incomp) and np.allclose(info["kilobytes"], incomp)
    assert "quality 95" in REWARDS.get("jpeg_compressibility").__doc__


def test_attribute_match_prefers_the_scene_of_its_own_caption():
    captions, own, other = own_vs_other_pairs(200)
    reward = REWARDS.get("attribute_match")()
    s_own, info = reward(own, captions, {})
    s_other, _ = reward(other, captions, {})
    assert np.mean(s_own > s_other) >= 0.9
    assert np.mean(s_own == 1.0) >= 0.99 and set(info) == {"all_correct"}


def test_clip_alignment_prefers_the_scene_of_its_own_caption():
    captions, own, other = own_vs_other_pairs(200, seed=1)
    reward = REWARDS.get("clip_alignment")()
    s_own, info = reward(own, captions, {})
    s_other, _ = reward(other, captions, {})
    assert np.mean((s_own > s_other).numpy()) >= 0.9
    assert s_own.shape == (200,) and (s_own.abs() <= 1 + 1e-6).all()
    assert torch.allclose(info["clip_score"], 100 * s_own.clamp_min(0))


def test_clip_alignment_refuses_a_missing_model_naming_the_setting(tmp_path):
    with pytest.raises(WeightsError, match=r"clip_alignment setting 'model' \(.*nowhere\)"):
        REWARDS.get("clip_alignment")(model=str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- real reward models, tiny weights

TINY_OPEN_CLIP = {  # open_clip config format; the BPE vocabulary and context length of real CLIP
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_open_clip(tmp_path: Path, wrapped: bool, suffix: str):
    """A randomly initialised open_clip CLIP of the tiny config, saved like the released files."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_OPEN_CLIP).eval()
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {}}))
    weights = tmp_path / f"clip{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    else:
        torch.save({"state_dict": model.state_dict()} if wrapped else model.state_dict(), weights)
    return model, config, weights


def test_clip_preprocess_is_open_clips_evaluation_transform():
    from open_clip.transform import image_transform
    from PIL import Image

    image = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    ours = clip_preprocess(image, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    pil = Image.fromarray((image[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    theirs = image_transform(32, is_train=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))(pil)
    assert ours.shape == (1, 3, 32, 32) and torch.allclose(ours[0], theirs, atol=1e-6)


def test_hps_v21_loads_tiny_weights_through_the_real_code_path(tmp_path):
    model, config, weights = tiny_open_clip(tmp_path, wrapped=True, suffix=".pt")  # HPS_v2.1_compressed.pt layout
    reward = REWARDS.get("hps_v21")(weights=str(weights), model=str(config), device="cpu")
    loaded = reward.clip.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    scores, _ = reward(images, PROMPTS, {})
    import open_clip

    with torch.no_grad():  # HPSv2's score: the cosine of the normalised embeddings
        img = model.encode_image(clip_preprocess(images, 32, reward.preprocess["mean"], reward.preprocess["std"]), True)
        txt = model.encode_text(open_clip.tokenize(PROMPTS), True)
    assert torch.allclose(scores, (img * txt).sum(-1).double(), atol=1e-5)


def test_laion_aesthetic_loads_tiny_weights_through_the_real_code_path(tmp_path):
    from t2i_rl_bench.rewards.aesthetic import AestheticHead

    model, config, weights = tiny_open_clip(tmp_path, wrapped=False, suffix=".safetensors")
    head = AestheticHead(TINY_OPEN_CLIP["embed_dim"]).eval()
    torch.save(head.state_dict(), tmp_path / "head.pth")  # as sac+logos+ava1-l14-linearMSE.pth
    reward = REWARDS.get("laion_aesthetic")(
        clip_weights=str(weights),
        head_weights=str(tmp_path / "head.pth"),
        model=str(config),
        quick_gelu=False,
        device="cpu",
    )
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    scores, _ = reward(images, ["x"] * 3, {})
    with torch.no_grad():
        x = clip_preprocess(images, 32, reward.preprocess["mean"], reward.preprocess["std"])
        expected = head(torch.nn.functional.normalize(model.encode_image(x), dim=-1)).squeeze(-1)
    assert scores.shape == (3,) and torch.allclose(scores, expected.double(), atol=1e-5)


def tiny_hf_clip(folder: Path, with_processor: bool = True):
    """A randomly initialised transformers CLIPModel (and processor) saved with save_pretrained, as
    the PickScore and OpenAI CLIP folders are laid out."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    if with_processor:
        CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


@pytest.mark.parametrize("name", ["pickscore", "clip_score"])
def test_transformers_clip_rewards_load_tiny_weights_through_the_real_code_path(tmp_path, name):
    model = tiny_hf_clip(tmp_path / "model")
    reward = REWARDS.get(name)(model_path=str(tmp_path / "model"), device="cpu")
    assert all(torch.equal(reward.model.state_dict()[k], v) for k, v in model.state_dict().items())
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    scores, info = reward(images, PROMPTS, {})
    with torch.no_grad():
        tokens = reward.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        x = clip_preprocess(images, 32, reward.preprocess["mean"], reward.preprocess["std"])
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
        txt = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        cos = (img * txt).sum(-1).double()
    assert torch.allclose(info["cosine"], cos, atol=1e-5)
    expected = model.logit_scale.exp().item() * cos if name == "pickscore" else 100 * cos.clamp_min(0)
    assert torch.allclose(scores, expected, atol=1e-4)


def tiny_real_reward(name: str, folder: Path):
    """One of the real CLIP-based rewards on tiny random weights written to `folder`, and the size of
    one unit of cosine in its score (for tolerances)."""
    if name in ("clip_score", "pickscore"):
        tiny_hf_clip(folder / "model")
        reward = REWARDS.get(name)(model_path=str(folder / "model"), device="cpu")
        return reward, 100.0 if name == "clip_score" else reward.model.logit_scale.exp().item()
    if name == "hps_v21":
        _, config, weights = tiny_open_clip(folder, wrapped=True, suffix=".pt")
        return REWARDS.get(name)(weights=str(weights), model=str(config), device="cpu"), 1.0
    from t2i_rl_bench.rewards.aesthetic import AestheticHead

    _, config, weights = tiny_open_clip(folder, wrapped=False, suffix=".safetensors")
    torch.manual_seed(5)
    torch.save(AestheticHead(TINY_OPEN_CLIP["embed_dim"]).eval().state_dict(), folder / "head.pth")
    reward = REWARDS.get(name)(
        clip_weights=str(weights), head_weights=str(folder / "head.pth"), model=str(config), quick_gelu=False
    )
    return reward, 1.0


@pytest.mark.parametrize("name", ["clip_score", "pickscore", "hps_v21", "laion_aesthetic"])
def test_real_clip_rewards_have_a_tensor_path_equal_to_the_pil_path_and_a_gradient(tmp_path, name):
    """The differentiable path of the real CLIP-based rewards (CLIP's preprocessing in torch):
    (a) on 8-bit images at the CLIP's own size, the PIL path's score to 1e-5 (measured <= 1.2e-7: the
    same preprocessing there); through a resize, within 5e-3 of a cosine (measured up to 1.9e-3 on
    noise images: PIL's bicubic on 8-bit images against torch's antialiased bicubic on floats);
    (b) a finite gradient in the images, nonzero per image (the CLIP score: where its cosine is above
    the clamp at 0, and zero below it)."""
    reward, unit = tiny_real_reward(name, tmp_path)
    assert reward.differentiable
    prompts = PROMPTS + ["a cat", "a green triangle"]
    g = torch.Generator().manual_seed(1)
    same = (torch.rand(4, 3, 32, 32, generator=g) * 255).round() / 255
    scores, _ = reward(same, prompts, {})
    x = same.clone().requires_grad_(True)
    got = reward.differentiable_score(x, prompts)
    torch.testing.assert_close(got.double(), scores, rtol=0, atol=1e-5 * max(1.0, float(scores.abs().max())))
    got.sum().backward()
    assert torch.isfinite(x.grad).all()
    per_image = x.grad.flatten(1).abs().sum(1)
    if name == "clip_score":
        positive = scores > 0
        assert positive.any() and (~positive).any()  # the tiny CLIP's seed gives both signs
        assert (per_image[positive] > 0).all() and (per_image[~positive] == 0).all()
    else:
        assert (per_image > 0).all()
    for shape in [(64, 64), (48, 80), (16, 16)]:  # down, down with a crop, up
        images = torch.rand(4, 3, *shape, generator=g)
        with torch.no_grad():
            tensor_path = reward.differentiable_score(images, prompts).double()
        torch.testing.assert_close(tensor_path, reward(images, prompts, {})[0], rtol=0, atol=5e-3 * unit)


def test_pickscore_reads_its_processor_from_its_own_folder(tmp_path):
    tiny_hf_clip(tmp_path / "model", with_processor=False)
    tiny_hf_clip(tmp_path / "processor")
    problems = check_weights({"name": "pickscore", "settings": {"model_path": str(tmp_path / "model")}})
    assert any("'model_path'" in p and "no tokenizer" in p for p in problems)
    reward = REWARDS.get("pickscore")(model_path=str(tmp_path / "model"), processor_path=str(tmp_path / "processor"))
    assert reward(torch.rand(1, 3, 16, 16), PROMPTS[:1], {})[0].shape == (1,)


# ---------------------------------------------------------------- missing and wrong weights


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("laion_aesthetic", "clip_weights"),
        ("hps_v21", "weights"),
        ("pickscore", "model_path"),
        ("clip_score", "model_path"),
    ],
)
def test_missing_weights_are_refused_naming_the_setting_and_the_path(tmp_path, name, key):
    missing = tmp_path / "not-there"
    problems = check_weights({"name": name, "settings": {key: str(missing)}})
    assert any(f"{name} setting '{key}' ({missing})" in p for p in problems), problems
    with pytest.raises(WeightsError, match=rf"{name} setting '{key}' \({missing}\)"):
        REWARDS.get(name)(**{key: str(missing)})


def test_weights_of_another_architecture_are_refused_before_loading(tmp_path):
    _, config, weights = tiny_open_clip(tmp_path, wrapped=True, suffix=".pt")
    problems = check_weights({"name": "hps_v21", "settings": {"weights": str(weights)}})  # ViT-H-14 expected
    assert len(problems) >= 1 and all(f"hps_v21 setting 'weights' ({weights})" in p for p in problems)
    assert any("wrong shape" in p for p in problems)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    junk = check_weights({"name": "hps_v21", "settings": {"weights": str(tmp_path / "junk.pt"), "model": str(config)}})
    assert junk and "cannot read" in junk[0]
    head = tmp_path / "head.pth"
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, head)
    settings = {"clip_weights": str(weights), "head_weights": str(head), "model": str(config)}
    bad_head = check_weights({"name": "laion_aesthetic", "settings": settings})
    assert bad_head and all("'head_weights'" in p for p in bad_head)
    with pytest.raises(WeightsError, match="head_weights"):
        REWARDS.get("laion_aesthetic")(clip_weights=str(weights), head_weights=str(head), model=str(config))


def test_rewards_without_weights_have_no_problems():
    assert check_weights(["jpeg_compressibility", "attribute_match", "clip_alignment"]) == []


# ---------------------------------------------------------------- composition and sanity


def test_composition_is_the_weighted_sum_with_each_component_logged():
    captions, own, _ = own_vs_other_pairs(4)
    total, info = ComposedReward({"jpeg_compressibility": 0.5, "attribute_match": 2.0})(own, captions, {})
    jpeg, _ = REWARDS.get("jpeg_compressibility")()(own, captions, {})
    attr, _ = REWARDS.get("attribute_match")()(own, captions, {})
    assert torch.allclose(total, torch.as_tensor(0.5 * jpeg + 2.0 * attr, dtype=torch.float64))
    assert torch.allclose(info["jpeg_compressibility"], torch.as_tensor(jpeg, dtype=torch.float64))
    assert "jpeg_compressibility/kilobytes" in info and "attribute_match/all_correct" in info


def test_composition_passes_settings_to_a_component():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    spec = [
        {"name": "jpeg_incompressibility", "weight": 1.0, "settings": {"quality": 50}},
        {"name": "jpeg_incompressibility", "weight": -1.0},
    ]
    total, _ = ComposedReward(spec)(images, ["x", "x"], {})
    assert (total < 0).all()  # quality 50 files are smaller than quality 95 ones


def test_per_reward_settings_reach_every_component_and_its_weights_check(tmp_path):
    settings = {"jpeg_incompressibility": {"quality": 50}, "clip_score": {"model_path": str(tmp_path / "none")}}
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    low, _ = ComposedReward("jpeg_incompressibility", settings)(images, ["x", "x"], {})
    high, _ = ComposedReward("jpeg_incompressibility")(images, ["x", "x"], {})
    assert (low < high).all()
    assert check_weights({"clip_score": 1.0}, settings) == [
        f"clip_score setting 'model_path' ({tmp_path / 'none'}): no such folder"
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_score_is_refused_naming_the_reward_and_the_prompt(monkeypatch, bad):
    monkeypatch.setitem(REWARDS._local, "broken", lambda images, prompts, metadata: ([1.0, bad], {}))
    with pytest.raises(RewardError, match=r"reward 'broken' returned (nan|inf) for prompt 'two small blue"):
        ComposedReward(["jpeg_compressibility", "broken"])(torch.zeros(2, 3, 16, 16), PROMPTS, {})


@pytest.mark.parametrize(
    "returned, message",
    [
        ([0.5, 0.5], r"returned list \[0\.5, 0\.5\]; a reward returns a pair"),
        (None, r"returned NoneType None; a reward returns a pair"),
        ((["a", "b"], {}), r"returned scores that are not numbers: \['a', 'b'\]"),
        ((torch.zeros(2), ["not", "a", "dict"]), r"returned metadata of type list"),
        ((torch.zeros(3), {}), r"returned shape \(3,\) for 2 prompts"),
    ],
)
def test_a_reward_plugin_returning_the_wrong_thing_is_a_reward_error_naming_it(monkeypatch, returned, message):
    # a reward error ends the run as a recorded failure; anything else would be a crash of the harness
    monkeypatch.setitem(REWARDS._local, "odd", lambda images, prompts, metadata: returned)
    with pytest.raises(RewardError, match=r"reward 'odd' " + message):
        ComposedReward("odd")(torch.zeros(2, 3, 16, 16), PROMPTS[:2], {})


def test_scores_that_carry_a_gradient_are_read_as_numbers(monkeypatch):
    scores = torch.tensor([0.25, 0.75], requires_grad=True) * 1
    monkeypatch.setitem(REWARDS._local, "graded", lambda images, prompts, metadata: (scores, {}))
    total, _ = ComposedReward("graded")(torch.zeros(2, 3, 16, 16), PROMPTS[:2], {})
    assert total.tolist() == [0.25, 0.75] and not total.requires_grad


def test_zero_spread_fraction_counts_groups_without_signal():
    rewards = torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, 3.0])
    assert zero_spread_fraction(rewards, torch.tensor([0, 0, 1, 1, 2, 2])) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- remote reward over HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jpeg_server():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "t2i_rl_bench.reward_server",
            "serve",
            "--reward",
            "jpeg_compressibility",
            "--port",
            "0",
            "--idle-timeout",
            "60",
            "--max-requests",
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving reward jpeg_compressibility at http://127.0.0.1:"), proc.stderr.read()
        yield line.split(" at ")[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_remote_reward_scores_like_the_local_reward(jpeg_server):
    from t2i_rl_bench.reward_server import quantize

    reward = REWARDS.get("remote")(url=jpeg_server, timeout=30)
    assert reward.reward == "jpeg_compressibility"
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scores, info = reward(images, ["a", "b", "c"], {"step": 1})
    local, local_info = REWARDS.get("jpeg_compressibility")()(quantize(images).float() / 255, ["a", "b", "c"], {})
    assert np.array_equal(scores, local) and np.array_equal(info["kilobytes"], local_info["kilobytes"])
    total, composed = ComposedReward({"name": "remote", "settings": {"url": jpeg_server}})(images, ["a", "b", "c"])
    assert np.allclose(total.numpy(), local) and "remote/kilobytes" in composed


def test_remote_reward_names_the_url_when_the_server_is_down():
    from t2i_rl_bench.rewards.remote import RemoteRewardError

    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RemoteRewardError, match=rf"remote reward at {url}/health is unreachable"):
        REWARDS.get("remote")(url=url, timeout=2)
    reward = REWARDS.get("remote")(url=url, timeout=2, check_on_start=False)
    with pytest.raises(RemoteRewardError, match=rf"{url}/score is unreachable"):
        reward(torch.zeros(1, 3, 4, 4), ["x"], {})


def test_remote_reward_times_out_naming_the_url():
    from t2i_rl_bench.rewards.remote import RemoteRewardError

    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(RemoteRewardError, match=rf"{url}/health did not answer within 0.5 s"):
            REWARDS.get("remote")(url=url, timeout=0.5)


def test_remote_server_reports_a_failing_reward(monkeypatch):
    import threading

    from t2i_rl_bench.reward_server import make_server
    from t2i_rl_bench.rewards.remote import RemoteReward, RemoteRewardError

    server = make_server("broken", lambda images, prompts, metadata: ([float("nan")] * len(prompts), {}))
    thread = threading.Thread(target=server.handle_request, daemon=True)  # exactly one request, no torch inside
    thread.start()
    try:
        client = RemoteReward(url=f"http://127.0.0.1:{server.server_address[1]}", timeout=10, check_on_start=False)
        with pytest.raises(RemoteRewardError, match=r"HTTP 500: reward 'broken' returned nan for prompt 'x'"):
            client(torch.zeros(1, 3, 4, 4), ["x"], {})
    finally:
        thread.join(timeout=10)
        server.server_close()
