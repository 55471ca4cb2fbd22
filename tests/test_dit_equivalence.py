"""The lean embedded model (bench/models/dit.py) computes what diffusers' PixArtTransformer2DModel
and transformers' CLIPTextModel, tokenizer and schedulers compute, bit for bit: outputs and
parameter gradients with `torch.equal`, at random initialisation and on the shipped checkpoint, and
a training run gives the same weights and logs on either path
(docs/performance.md#start-up-the-lean-embedded-model)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch

from t2i_rl_bench.models.dit import (
    CLIPText,
    DDIMSchedule,
    FlowMatchSchedule,
    PixArtDiT,
    WordTokenizer,
    load_schedule,
)
from t2i_rl_bench.models.embedded import (
    EmbeddedSpec,
    build_scheduler,
    build_text_encoder,
    build_transformer,
    load_components,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "results/models/dit16-flow", ROOT / "results/models/dit16-ddim"]
SHIPPED = [p for p in SHIPPED if (p / "bench_model.json").is_file()]


def _pair_denoisers(spec: EmbeddedSpec, seed: int):
    torch.manual_seed(seed)
    reference = build_transformer(spec)
    lean = PixArtDiT(dict(reference.config))
    lean.load_state_dict(reference.state_dict())
    return reference, lean


def _inputs(batch: int, size: int, width: int, seed: int, float_time: bool):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.rand(batch, generator=g) * 1000 if float_time else torch.randint(0, 1000, (batch,), generator=g)
    cond = torch.randn(batch, 16, width, generator=g)
    mask = torch.ones(batch, 16, dtype=torch.long)
    for row in range(batch):  # padded rows of every length, one row unpadded
        mask[row, 2 + (row * 5) % 15 :] = 0 if row else 1
    return x, t, cond, mask


def _assert_same_forward_backward(reference, lean, inputs, train: bool):
    x, t, cond, mask = inputs
    for model in (reference, lean):
        model.train(train)
        model.zero_grad(set_to_none=True)
    out_ref = reference(x, encoder_hidden_states=cond, timestep=t, encoder_attention_mask=mask).sample
    out_lean = lean(x, encoder_hidden_states=cond, timestep=t, encoder_attention_mask=mask).sample
    assert torch.equal(out_ref, out_lean), (out_ref - out_lean).abs().max()
    weight = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(1))
    (out_ref * weight).sum().backward()
    (out_lean * weight).sum().backward()
    named_ref, named_lean = dict(reference.named_parameters()), dict(lean.named_parameters())
    assert list(named_ref) == list(named_lean)  # the same parameters in the same order (the optimiser's)
    for name, param in named_ref.items():
        assert torch.equal(param.grad, named_lean[name].grad), (name, (param.grad - named_lean[name].grad).abs().max())


@pytest.mark.parametrize(
    "spec",
    [EmbeddedSpec(), EmbeddedSpec(layers=1, heads=2, head_dim=8, text_width=16, patch_size=4, resolution=8)],
    ids=["default", "tiny"],
)
def test_the_lean_denoiser_equals_diffusers_at_random_init(spec):
    reference, lean = _pair_denoisers(spec, seed=5)
    assert torch.equal(reference.pos_embed.pos_embed, lean.pos_embed.pos_embed)  # not in the checkpoint
    for train, float_time in ((True, True), (False, False)):
        inputs = _inputs(6, spec.resolution, spec.text_width, seed=7, float_time=float_time)
        _assert_same_forward_backward(reference, lean, inputs, train)


def test_the_lean_text_encoder_equals_transformers_at_random_init():
    spec = EmbeddedSpec(text_width=32, text_layers=3)
    torch.manual_seed(4)
    reference = build_text_encoder(spec, vocab_size=40)
    lean = CLIPText(reference.config.to_dict())
    lean.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 40, (9, 16), generator=g)
    mask = (torch.arange(16)[None] < torch.randint(1, 17, (9, 1), generator=g)).long()  # row lengths 1-16
    for model in (reference, lean):
        model.train()
    for m in (mask, torch.ones_like(mask)):
        out_ref = reference(ids, attention_mask=m).last_hidden_state
        out_lean = lean(ids, attention_mask=m).last_hidden_state
        assert torch.equal(out_ref, out_lean), (out_ref - out_lean).abs().max()
        (out_ref * out_ref.detach()).sum().backward()
        (out_lean * out_lean.detach()).sum().backward()
    named_lean = dict(lean.named_parameters())
    assert list(dict(reference.named_parameters())) == list(named_lean)
    for name, param in reference.named_parameters():
        assert torch.equal(param.grad, named_lean[name].grad), name


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_the_lean_model_equals_diffusers_on_the_shipped_checkpoint(folder):
    objective = json.loads((folder / "bench_model.json").read_text())["spec"]["objective"]
    reference = load_components(folder, objective, lean=False)
    lean = load_components(folder, objective, lean=True)
    assert [type(c) for c in lean[:3]] == [PixArtDiT, CLIPText, WordTokenizer]
    assert not lean[0].training and not lean[1].training  # eval mode, as from_pretrained leaves them
    # the tokenizer, on the world's prompts, the empty prompt and prompts past the length limit
    from t2i_rl_bench.world.captions import prompt_sets

    prompts = sorted({p for split in prompt_sets().values() for p in split}) + ["", "blue " * 30, "an unknown word"]
    tokens_ref = reference[2](prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    tokens = lean[2](prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    assert torch.equal(tokens_ref.input_ids, tokens.input_ids) and torch.equal(
        tokens_ref.attention_mask, tokens.attention_mask
    )
    assert len(reference[2]) == len(lean[2]) and reference[2].model_max_length == lean[2].model_max_length
    # the text encoder: padded prompts and unpadded ones (SDPA's causal flag), values and gradients
    ids, mask = tokens.input_ids[:40], tokens.attention_mask[:40]
    full = torch.ones_like(mask)
    for encoder in (reference[1], lean[1]):
        encoder.requires_grad_(True).zero_grad(set_to_none=True)
    for m in (mask, full):
        out_ref = reference[1](ids, attention_mask=m).last_hidden_state
        out_lean = lean[1](ids, attention_mask=m).last_hidden_state
        assert torch.equal(out_ref, out_lean), (out_ref - out_lean).abs().max()
        out_ref.square().sum().backward()
        out_lean.square().sum().backward()
    named_lean = dict(lean[1].named_parameters())
    assert list(dict(reference[1].named_parameters())) == list(named_lean)
    for name, param in reference[1].named_parameters():
        assert torch.equal(param.grad, named_lean[name].grad), name
    # the denoiser on the real text embeddings
    with torch.no_grad():
        cond = lean[1](ids[:8], attention_mask=mask[:8]).last_hidden_state
    x, t, _, _ = _inputs(8, 16, 64, seed=3, float_time=objective == "flow")
    _assert_same_forward_backward(reference[0], lean[0], (x, t, cond, mask[:8]), train=True)


def test_the_lean_schedules_equal_diffusers():
    for spec in (EmbeddedSpec(objective="flow"), EmbeddedSpec()):
        reference = build_scheduler(spec)
        config = {k: v for k, v in reference.config.items() if not k.startswith("_")}
        variants = [config]
        if spec.objective == "flow":
            variants.append({**config, "shift": 3.0})
        else:
            variants += [{**config, "timestep_spacing": s, "beta_schedule": "linear"} for s in ("linspace", "trailing")]
        for variant in variants:
            reference = type(reference).from_config(variant)
            lean = (FlowMatchSchedule if spec.objective == "flow" else DDIMSchedule)(variant)
            for steps in (1, 2, 3, 7, 10, 20, 32, 50, 999):
                reference.set_timesteps(steps)
                lean.set_timesteps(steps)
                assert torch.equal(reference.timesteps, lean.timesteps), (variant, steps)
                if spec.objective == "flow":
                    assert torch.equal(reference.sigmas, lean.sigmas), (variant, steps)
                else:
                    assert torch.equal(reference.alphas_cumprod, lean.alphas_cumprod)
                    assert torch.equal(reference.final_alpha_cumprod, lean.final_alpha_cumprod)


def test_a_lean_save_is_the_diffusers_checkpoint_and_bad_configs_are_refused(tmp_path):
    folder = SHIPPED[0] if SHIPPED else pytest.skip("no shipped embedded model")
    from t2i_rl_bench.models.imports import denoiser_class

    denoiser_class().from_pretrained(folder / "transformer").save_pretrained(tmp_path / "reference")
    PixArtDiT.from_pretrained(folder / "transformer").save_pretrained(tmp_path / "lean")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        assert filecmp.cmp(tmp_path / "reference" / name, tmp_path / "lean" / name, shallow=False), name
    bad = json.loads((folder / "transformer/config.json").read_text()) | {"norm_type": "ada_norm_zero"}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="norm_type"):
        PixArtDiT.from_pretrained(tmp_path / "bad")
    (tmp_path / "sched").mkdir()
    (tmp_path / "sched/scheduler_config.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler"}))
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        load_schedule(tmp_path / "sched")


def test_lora_on_the_lean_denoiser_equals_lora_on_diffusers():
    from t2i_rl_bench.models.policy import Policy

    spec = EmbeddedSpec(layers=1, heads=2, head_dim=8, text_width=16, text_layers=1)
    reference, lean = _pair_denoisers(spec, seed=11)
    torch.manual_seed(0)
    text = build_text_encoder(spec, 28)
    policies = []
    for denoiser in (reference, lean):
        policy = Policy(denoiser, text, None, None, {"spec": {"objective": "flow"}})
        torch.manual_seed(2)
        policy.enable_lora(rank=2)
        for name, param in policy.denoiser.named_parameters():
            if "lora_B" in name:  # B starts at zero: move it so the adapters act
                param.data.normal_(generator=torch.Generator().manual_seed(len(name)))
        policies.append(policy)
    assert [n for n, p in policies[0].denoiser.named_parameters() if p.requires_grad] == [
        n for n, p in policies[1].denoiser.named_parameters() if p.requires_grad
    ]
    _assert_same_forward_backward_lora(*policies, _inputs(4, 16, 16, seed=9, float_time=True))


def _assert_same_forward_backward_lora(reference, lean, inputs):
    x, t, cond, mask = inputs
    outs = []
    for policy in (reference, lean):
        policy.denoiser.train()
        out = policy.denoiser(x, encoder_hidden_states=cond, timestep=t, encoder_attention_mask=mask).sample
        out.square().sum().backward()
        outs.append(out)
    assert torch.equal(*outs)
    grads = [[p.grad for p in policy.trainable_parameters()] for policy in (reference, lean)]
    assert len(grads[0]) == len(grads[1]) > 0 and all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_flow_model"])
def test_training_on_the_lean_path_gives_the_same_weights_and_logs(fixture, request, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from t2i_rl_bench.spec import RunSpec
    from t2i_rl_bench.train import train

    model = request.getfixturevalue(fixture)
    spec = RunSpec(
        model_path=str(model),
        algorithm="ddpo_is",
        reward="jpeg_compressibility",
        seed=3,
        num_steps=4,
        images_per_round=8,
        group_size=2,
        budgets=[8, 16],
        prompts=["a red circle", "a blue square"],
    )
    runs = {}
    for lean in ("0", "1"):
        monkeypatch.setenv("T2I_RL_BENCH_LEAN_MODELS", lean)
        train(spec, tmp_path / lean)
        runs[lean] = tmp_path / lean
    for path in sorted((runs["0"] / "checkpoints").rglob("*.safetensors")):
        other = runs["1"] / path.relative_to(runs["0"])
        assert filecmp.cmp(path, other, shallow=False), path.relative_to(runs["0"])
        weights = load_file(path)
        assert weights and all(torch.equal(v, load_file(other)[k]) for k, v in weights.items())
    drop = lambda d: {k: v for k, v in d.items() if not k.startswith(("seconds", "peak_memory"))}  # noqa: E731
    logs = [[drop(json.loads(line)) for line in (runs[k] / "log.jsonl").read_text().splitlines()] for k in ("0", "1")]
    assert logs[0] == logs[1] and len(logs[0]) == 2
