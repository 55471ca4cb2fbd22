"""Real model families (Stable Diffusion 1.x/2.x, SD3-style rectified flow) on tiny randomly
initialised pipelines of the same diffusers/transformers classes: they load through Policy.load,
sample and recompute the same log-probs, match the diffusers pipelines' own sampling loops, and
train with every algorithm (full fine-tuning and LoRA) with checkpoints that load back."""

import json
import shutil
import time

import pytest
import torch
from tiny_pipelines import build_sd, build_sd3

from t2i_rl_bench.models.flow_matching import FlowMatchingPolicy
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.models.stable_diffusion import StableDiffusionPolicy
from t2i_rl_bench.registry import ALGORITHMS
from t2i_rl_bench.rollout import make_sampler, recompute, rollout
from t2i_rl_bench.sampling import DDIMSampler, FlowSDESampler, diffusers_flow_sigmas
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer

PROMPTS = ["a red circle", "two small blue squares on the left"]
ETA = {"sd": 1.0, "flow": 0.7}  # DDIM eta (DDPO), Flow-GRPO noise level a


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"sd": build_sd(root / "sd"), "flow": build_sd3(root / "sd3")}


def _recomputed(policy, sampler, traj, guidance=3.0, reference=False):
    n, k = traj.logp.shape
    with torch.no_grad():
        return recompute(
            policy, sampler, traj, torch.arange(n), torch.arange(k).expand(n, k), guidance, reference=reference
        )[0]


def test_dispatch_on_the_folder(pipelines, tiny_model):
    assert type(Policy.load(pipelines["sd"])) is StableDiffusionPolicy
    flow = Policy.load(pipelines["flow"])
    assert type(flow) is FlowMatchingPolicy and flow.objective == "flow"
    assert type(Policy.load(tiny_model)) is Policy
    assert Policy.load(pipelines["sd"]).sample_shape == (4, 8, 8)  # 64 px through the x8 VAE
    assert Policy.load(pipelines["sd"], resolution=32).sample_shape == (4, 4, 4)
    assert flow.sample_shape == (16, 8, 8)


def test_missing_or_foreign_folders_are_named(pipelines, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*config key 'models\.sd15\.path'"):
        Policy.load(tmp_path / "nowhere", config_key="models.sd15.path")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*model_index\.json"):
        Policy.load(empty)
    broken = tmp_path / "broken"
    shutil.copytree(pipelines["sd"], broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match=str(broken / "unet")):
        Policy.load(broken)
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps(dict(index, _class_name="FluxPipeline")))
    with pytest.raises(ValueError, match=r"broken.*'FluxPipeline'.*StableDiffusionPipeline"):
        Policy.load(broken)


@pytest.mark.parametrize("family, variant", [("sd", None), ("flow", "flowgrpo"), ("flow", "dancegrpo")])
def test_rollout_and_recompute_agree(pipelines, family, variant):
    policy = Policy.load(pipelines[family])
    eta = 0.3 if variant == "dancegrpo" else ETA[family]  # DanceGRPO-FLUX's constant eta
    sampler = make_sampler(policy, 3, eta, flow_variant=variant or "flowgrpo")
    traj = rollout(policy, sampler, PROMPTS * 2, 3.0, torch.Generator().manual_seed(0), torch.tensor([0, 1, 0, 1]))
    assert traj.logp.dtype == torch.float32 and torch.isfinite(traj.logp).all()
    assert torch.allclose(_recomputed(policy, sampler, traj), traj.logp, atol=1e-5)
    images = policy.decode(traj.x0)
    assert images.shape == (4, 3, 64, 64) and images.min() >= 0 and images.max() <= 1


def test_flow_sampler_uses_the_shifted_sigmas_and_sigma_times_1000(pipelines):
    policy = Policy.load(pipelines["flow"])
    sampler = make_sampler(policy, 4, 0.7)
    assert isinstance(sampler, FlowSDESampler)
    policy.scheduler.set_timesteps(4)
    assert torch.allclose(sampler.sigmas, policy.scheduler.sigmas)
    assert torch.allclose(sampler.model_timesteps(), policy.scheduler.timesteps)
    assert torch.allclose(sampler.sigmas, diffusers_flow_sigmas(4, shift=3.0), atol=1e-6)  # shift 3 included
    assert sampler.sigmas[0] == 1 and sampler.sigmas[-1] == 0


def test_sd_matches_the_diffusers_pipeline(pipelines):
    """Deterministic DDIM (eta 0) with CFG: our encode + guided predict + DDIM step reproduce
    StableDiffusionPipeline's latents from the same initial noise."""
    from diffusers import StableDiffusionPipeline

    policy = Policy.load(pipelines["sd"], device="cpu")
    pipe = StableDiffusionPipeline.from_pretrained(pipelines["sd"], scheduler=policy.scheduler)
    pipe.set_progress_bar_config(disable=True)
    emb = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=[""] * 2)
    assert torch.allclose(policy.encode(PROMPTS).embeds, emb[0], atol=1e-6)
    assert torch.allclose(policy.encode([""] * 2).embeds, emb[1], atol=1e-6)
    x = torch.randn(2, *policy.sample_shape, generator=torch.Generator().manual_seed(3))
    theirs = pipe(
        PROMPTS, num_inference_steps=4, guidance_scale=4.0, eta=0.0, latents=x.clone(), output_type="latent"
    ).images
    sampler = DDIMSampler(policy.scheduler, 4, eta=0.0)  # the deterministic step; RL samples with eta > 0
    cond, uncond = policy.encode(PROMPTS), policy.encode([""] * 2)
    with torch.no_grad():
        for k, t in enumerate(sampler.timesteps):
            x = sampler.step(policy.predict(x, t, cond, uncond, 4.0), x, t.expand(2), step_index=k).x_next
    assert torch.allclose(x, theirs, atol=1e-4)


def test_flow_matches_the_diffusers_pipeline(pipelines):
    """Noise level 0 is the Euler ODE step: our SD3 encode + guided velocity + sigmas reproduce
    StableDiffusion3Pipeline's latents (shift 3, timesteps sigma x 1000, no T5)."""
    from diffusers import StableDiffusion3Pipeline

    policy = Policy.load(pipelines["flow"], device="cpu")
    pipe = StableDiffusion3Pipeline.from_pretrained(pipelines["flow"], text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    emb = pipe.encode_prompt(PROMPTS, None, None, "cpu", negative_prompt=[""] * 2, max_sequence_length=128)
    ours = policy.encode(PROMPTS)
    assert torch.allclose(ours.embeds, emb[0], atol=1e-6) and torch.allclose(ours.pooled, emb[2], atol=1e-6)
    x = torch.randn(2, *policy.sample_shape, generator=torch.Generator().manual_seed(3))
    theirs = pipe(
        PROMPTS,
        num_inference_steps=4,
        guidance_scale=4.0,
        latents=x.clone(),
        output_type="latent",
        max_sequence_length=128,
    ).images
    sampler = make_sampler(policy, 4, eta=0.0, flow_variant="dancegrpo")
    cond, uncond = policy.encode(PROMPTS), policy.encode([""] * 2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in range(sampler.num_steps):
            out = policy.predict(x, sampler.model_timesteps()[k], cond, uncond, 4.0)
            x = sampler.step(out, x, sampler.timesteps[k].expand(2), step_index=k, generator=g).x_next
    assert torch.allclose(x, theirs, atol=1e-4)


@pytest.mark.parametrize("family", ["sd", "flow"])
def test_bf16_autocast_keeps_fp32_logps(pipelines, family):
    policy = Policy.load(pipelines[family], mixed_precision="bf16")
    policy.enable_lora(4)
    assert {p.dtype for p in policy.text_encoder.parameters()} == {torch.bfloat16}
    frozen = {p.dtype for p in policy.denoiser.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16} and {p.dtype for p in policy.trainable_parameters()} == {torch.float32}
    sampler = make_sampler(policy, 3, ETA[family])
    traj = rollout(policy, sampler, PROMPTS, 3.0, torch.Generator().manual_seed(0))
    assert traj.logp.dtype == torch.float32 and torch.isfinite(traj.logp).all()
    assert torch.allclose(_recomputed(policy, sampler, traj), traj.logp, atol=5e-2)


ALGOS = ALGORITHMS.names()  # every registered algorithm


def test_the_six_methods_are_registered():
    assert {"reinforce", "ddpo_is", "loop", "prdp", "dancegrpo", "pcpo"} <= set(ALGOS)


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("family", ["sd", "flow"])
@pytest.mark.parametrize("algorithm", ALGOS)
def test_two_rl_rounds_and_checkpoints_load_back(pipelines, tmp_path, algorithm, family, lora):
    sampler_family = "flow" if family == "flow" else "ddim"
    if sampler_family not in ALGORITHMS.get(algorithm).sampler_families:
        pytest.skip(f"{algorithm} is not defined for {sampler_family} samplers (the study refuses it)")
    out = tmp_path / "run"
    cfg = RunSpec(
        model_path=str(pipelines[family]),
        algorithm=algorithm,
        reward="jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=3,
        eta=ETA[family],
        images_per_round=4,
        group_size=2,
        budgets=[4, 8],
        lora_rank=lora,
        lr=1e-3,
    )
    family_of = ALGORITHMS.get(algorithm).family
    if family_of == "differentiable":  # JPEG size has no gradient (the real CLIP score has: below)
        with pytest.raises(ValueError, match="no gradient in the images"):
            Trainer(cfg, out)
        return
    trainer = Trainer(cfg, out)
    start = time.perf_counter()
    summary = trainer.run()
    seconds = time.perf_counter() - start
    assert summary["status"] == "finished", summary["error"]
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        # approx_kl: the log-prob ratio of the per-step family (the forward family has none)
        for key in ("loss", "grad_norm", "reward_mean") + (("approx_kl",) if family_of == "step" else ()):
            assert line[key] is not None and torch.isfinite(torch.tensor(line[key])), (key, line)
    print(f"{family} {'lora' if lora else 'full'} {algorithm}: {seconds / 2:.2f} s per RL round")

    checkpoint = out / "checkpoints" / "8"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file() == bool(lora)
    loaded = Policy.load(pipelines[family])
    loaded.load_denoiser_state(checkpoint)
    trained = dict(trainer.policy.denoiser.named_parameters())
    assert trained.keys() == dict(loaded.denoiser.named_parameters()).keys()
    assert all(torch.equal(p, trained[name]) for name, p in loaded.denoiser.named_parameters())
    if lora:  # the adapters start at B = 0 and moved
        assert any(p.abs().sum() > 0 for name, p in trained.items() if "lora_B" in name)
    else:
        base = dict(Policy.load(pipelines[family]).denoiser.named_parameters())
        assert any(not torch.equal(p, base[name]) for name, p in trained.items())


@pytest.mark.parametrize("family", ["sd", "flow"])
def test_draft_k_steps_on_a_real_pipeline_with_the_real_clip_score(pipelines, tmp_path, family):
    """DRaFT-K (K = 1) on the tiny SD and SD3 pipelines with the transformers CLIP score on tiny
    random weights: the reward's gradient reaches the denoiser (finite, nonzero) and one optimiser
    step moves it."""
    from tests.test_rewards import tiny_hf_clip

    tiny_hf_clip(tmp_path / "clip")
    out = tmp_path / "run"
    cfg = RunSpec(
        model_path=str(pipelines[family]),
        algorithm="draft",
        reward="clip_score",
        reward_settings={"clip_score": {"model_path": str(tmp_path / "clip"), "device": "cpu"}},
        prompts=PROMPTS,
        num_steps=3,
        eta=ETA[family],
        images_per_round=4,
        group_size=2,
        budgets=[4],
        lr=1e-3,
        weight_decay=0.0,  # only the reward's gradient moves the weights
    )
    trainer = Trainer(cfg, out)
    base = {name: p.detach().clone() for name, p in trainer.policy.denoiser.named_parameters()}
    line = trainer.round()
    assert line["loss"] is not None and torch.isfinite(torch.tensor(line["loss"])), line
    assert line["grad_norm"] > 0 and torch.isfinite(torch.tensor(line["grad_norm"])), line
    moved = [name for name, p in trainer.policy.denoiser.named_parameters() if not torch.equal(p, base[name])]
    assert moved, "no parameter moved"


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("family", ["sd", "flow"])
def test_prdp_reference_is_the_base_model(pipelines, tmp_path, family, lora):
    cfg = RunSpec(
        model_path=str(pipelines[family]),
        algorithm="prdp",
        reward="jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=3,
        eta=ETA[family],
        images_per_round=4,
        group_size=2,
        budgets=[4],
        lora_rank=lora,
        lr=1e-2,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run()
    tuned = trainer.policy
    base = Policy.load(pipelines[family])
    sampler = make_sampler(base, 3, ETA[family])
    traj = rollout(base, sampler, PROMPTS, 3.0, torch.Generator().manual_seed(1))
    assert torch.allclose(_recomputed(base, sampler, traj), traj.logp, atol=1e-5)
    assert torch.allclose(_recomputed(tuned, sampler, traj, reference=True), traj.logp, atol=1e-5)
    assert not torch.allclose(_recomputed(tuned, sampler, traj), traj.logp, atol=1e-5)
