"""The in-house CLIP: a small open_clip `CLIP` trained contrastively on the embedded world's scenes
and captions. It is the embedded study's alignment judge (the `clip_alignment` reward, CLIP score)
and its feature network for FID/KID and diversity.

    python -m t2i_rl_bench.judges.clip --out results/models/clip16 --steps 1500 --seed 0   # ~2 min, one thread

It is trained on every scene of the world, the held-out prompts' too: it is the measuring
instrument (as OpenAI's CLIP has seen everything a policy is evaluated on), and the held-out split
tests the policy's generalisation, not the judge's. Its retrieval is measured on fresh renders
(jitter from a seed the training never drew) and recorded in the manifest.

Tokenizer: the world's word-level tokenizer (`t2i_rl_bench.world.tokenizer`), not open_clip's BPE. The
captions come from a closed grammar of 22 words, so BPE adds nothing, and its 49,408-row token
embedding would hold ~12 MB of the few-MB checkpoint; the word-level ids are also the ones the base
model's text encoder reads. The text tower pools at [EOS] (`pool_type="eos"`), since [EOS] is not the
largest id as OpenAI's argmax pooling assumes. A word outside the grammar becomes [UNK].

Loss: the symmetric InfoNCE of CLIP (Radford et al. 2021) with a learned temperature, except that a
batch can hold several captions true of one image (captions leave attributes out, scenes repeat),
so each row's target spreads evenly over every caption whose named attributes the scene has (and
each column's over every such image), instead of counting true pairs as negatives.

Loading (`load_clip`) gives the plain-torch mirror of bench/judges/lean_clip.py (the same numbers
bit for bit, without importing open_clip or transformers: docs/performance.md#start-up-the-lean-clip-judge);
T2I_RL_BENCH_LEAN_MODELS=0 loads open_clip's `CLIP` and transformers' tokenizer instead. Training
builds open_clip's.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from t2i_rl_bench.world.captions import caption, parse, prompt_sets, random_omissions
from t2i_rl_bench.world.scenes import Scene, all_scenes, render, sample_jitter

WEIGHTS = "model.safetensors"
FAMILY = "judge_clip"
IMAGE_MEAN, IMAGE_STD = 0.5, 0.5  # images in [0, 1] -> [-1, 1]


@dataclass(frozen=True)
class ClipSpec:
    resolution: int = 16
    patch_size: int = 4  # 16 tokens: ~100% held-out retrieval; patch 2 trains 2.7x slower
    vision_width: int = 64
    vision_layers: int = 3
    text_width: int = 64
    text_layers: int = 2
    head_width: int = 16
    embed_dim: int = 64


def clip_configs(
    spec: ClipSpec, vocab_size: int, pad_id: int = 0, eos_id: int = 3, context_length: int | None = None
) -> tuple[int, dict, dict]:
    """(embed_dim, vision_cfg, text_cfg) of open_clip's `CLIP` for the in-house judge (context
    length: the world tokenizer's MAX_LENGTH unless given)."""
    if context_length is None:
        from t2i_rl_bench.world.tokenizer import MAX_LENGTH

        context_length = MAX_LENGTH

    vision_cfg = dict(
        image_size=spec.resolution,
        patch_size=spec.patch_size,
        width=spec.vision_width,
        layers=spec.vision_layers,
        head_width=spec.head_width,
        mlp_ratio=2.0,
    )
    text_cfg = dict(
        context_length=context_length,
        vocab_size=vocab_size,
        width=spec.text_width,
        heads=spec.text_width // spec.head_width,
        layers=spec.text_layers,
        mlp_ratio=2.0,
        pad_id=pad_id,
        eos_id=eos_id,
        pool_type="eos",
    )
    return spec.embed_dim, vision_cfg, text_cfg


def build_clip(
    spec: ClipSpec,
    vocab_size: int,
    pad_id: int = 0,
    eos_id: int = 3,
    lean: bool = False,
    context_length: int | None = None,
):
    """An open_clip `CLIP` with tiny towers, built offline (no pretrained weights); lean=True: the
    plain-torch mirror (bench/judges/lean_clip.py), the same parameters from the same seed."""
    embed_dim, vision_cfg, text_cfg = clip_configs(spec, vocab_size, pad_id, eos_id, context_length)
    if lean:
        from t2i_rl_bench.judges.lean_clip import LeanCLIP

        return LeanCLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    from open_clip import CLIP

    return CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Box-filter (area) downsampling, bilinear upsampling, to the CLIP's resolution."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    if min(images.shape[-2:]) >= resolution:
        return F.interpolate(images, size=(resolution, resolution), mode="area")
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)


class ClipJudge(torch.nn.Module):
    """The in-house CLIP with its tokenizer: embeddings of images (N, 3, H, W) in [0, 1] (resized to
    the model's resolution when they differ) and of prompts."""

    def __init__(self, model, tokenizer, spec: ClipSpec):
        super().__init__()
        self.model, self.tokenizer, self.spec = model, tokenizer, spec

    def tokens(self, prompts: list[str]) -> torch.Tensor:
        length = self.model.context_length  # the tokenizer's MAX_LENGTH
        enc = self.tokenizer(
            list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        return enc.input_ids.to(self.model.logit_scale.device)

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:  # (N, D)
        x = _resize(images.to(self.model.logit_scale.device, torch.float32), self.spec.resolution)
        return self.model.encode_image((x - IMAGE_MEAN) / IMAGE_STD, normalize=normalize)

    def encode_texts(self, prompts: list[str], normalize: bool = True) -> torch.Tensor:  # (N, D)
        return self.model.encode_text(self.tokens(prompts), normalize=normalize)

    @torch.no_grad()
    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:  # (N,)
        return (self.encode_images(images) * self.encode_texts(prompts)).sum(-1)


class ImageFeatures(torch.nn.Module):
    """The image tower as a feature network for FID/KID/diversity: images (N, 3, H, W) in [0, 1] ->
    the unnormalised image embedding (N, num_features). torchmetrics' FID reads `num_features`."""

    def __init__(self, judge: ClipJudge):
        super().__init__()
        self.judge = judge
        self.num_features = judge.spec.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.encode_images(images, normalize=False)


def scene_caption_batch(rng: np.random.Generator, n: int, resolution: int = 16):
    """n random scenes rendered with jitter, a caption of each (some attributes left out at random,
    full captions 60% of the time) and the (n, n) matrix `true[i, j]`: caption j is true of scene i."""
    scenes = all_scenes()
    picked = [scenes[rng.integers(len(scenes))] for _ in range(n)]
    images = np.stack([render(s, resolution, sample_jitter(rng)) for s in picked])
    captions = [caption(s, random_omissions(rng)) for s in picked]
    named = [parse(c) for c in captions]
    true = np.array([[all(getattr(s, k) == v for k, v in attrs.items()) for attrs in named] for s in picked])
    return images, captions, true


def contrastive_loss(logits: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of CLIP with every true pair as a target (logits, true: (N, N))."""
    rows = true / true.sum(1, keepdim=True)
    cols = true / true.sum(0, keepdim=True)
    image_to_text = -(rows * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(cols * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def pretrain_clip(
    out: str | Path,
    steps: int = 1500,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    spec: ClipSpec = ClipSpec(),
    eval_renders: int = 4,
    progress: bool = True,
) -> Path:
    """Train the in-house CLIP (seeded; run it with one torch thread), save it to `out` with a
    `bench_model.json` manifest holding the settings, the loss curve, the held-out retrieval
    accuracy and the SHA-256 of the weights, and return `out`."""
    out = Path(out)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    from t2i_rl_bench.world.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_clip(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    judge = ClipJudge(model, tokenizer, spec)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = min(100, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    losses, started = [], time.time()
    model.train()
    for _ in tqdm(range(steps), disable=not progress, desc="pretrain clip", mininterval=5):
        images, captions, true = scene_caption_batch(rng, batch_size, spec.resolution)
        img = judge.encode_images(torch.from_numpy(images))
        txt = judge.encode_texts(captions)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = contrastive_loss(logits, torch.from_numpy(true).float())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():  # CLIP clips the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    seconds = time.time() - started
    model.eval()
    retrieval = retrieval_accuracy(judge, renders=eval_renders, seed=seed + 10_000)
    curve = [round(float(np.mean(losses[i : i + 100])), 5) for i in range(0, len(losses), 100)]
    info = {
        "family": FAMILY,
        "command": f"python -m t2i_rl_bench.judges.clip --out {out} --steps {steps} --seed {seed}",
        "spec": asdict(spec),
        "tokenizer": "word-level (t2i_rl_bench.world.tokenizer), pool at [EOS]",
        "image_normalisation": {"mean": IMAGE_MEAN, "std": IMAGE_STD},
        "pretraining": {
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seconds": round(seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "logit_scale": round(model.logit_scale.exp().item(), 3),
            "loss_per_100_steps": curve,
        },
        "retrieval": retrieval,
    }
    save_clip(judge, out, info)
    return out


def save_clip(judge: ClipJudge, out: str | Path, info: dict) -> None:
    from safetensors.torch import save_file

    from t2i_rl_bench.models.checkpoint import write_manifest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in judge.model.state_dict().items()}
    save_file(state, out / WEIGHTS)
    judge.tokenizer.save_pretrained(out / "tokenizer")
    write_manifest(out, info)


def load_clip(folder: str | Path, device: str | torch.device = "cpu", lean: bool | None = None) -> ClipJudge:
    """The in-house CLIP saved by `pretrain_clip`, in eval mode: the plain-torch mirror
    (lean=None: unless T2I_RL_BENCH_LEAN_MODELS=0) or open_clip's `CLIP` with transformers'
    tokenizer (the same numbers bit for bit: tests/test_clip_equivalence.py). Raises
    FileNotFoundError naming the folder when it is not an in-house CLIP folder, ValueError naming
    the key when its settings or weights are outside what the mirror computes."""
    from safetensors.torch import load_file

    from t2i_rl_bench.models.checkpoint import read_manifest
    from t2i_rl_bench.models.embedded import lean_models

    folder = Path(folder)
    info = read_manifest(folder)
    if info.get("family") != FAMILY or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{folder} is not an in-house CLIP folder (family {info.get('family')!r}, "
            f"{WEIGHTS} {'present' if (folder / WEIGHTS).is_file() else 'missing'})"
        )
    unknown = sorted(set(info.get("spec", {})) - set(ClipSpec.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{folder / 'bench_model.json'}: spec key {unknown[0]!r} is not a ClipSpec setting")
    spec = ClipSpec(**info["spec"])
    if lean_models() if lean is None else lean:
        from t2i_rl_bench.judges.lean_clip import JudgeTokenizer

        tokenizer = JudgeTokenizer(folder / "tokenizer")
        ids = (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        model = build_clip(spec, *ids, lean=True, context_length=tokenizer.model_max_length)
        missing, unexpected = model.load_state_dict(load_file(folder / WEIGHTS), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{folder / WEIGHTS}: weights the lean CLIP does not mirror: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]} (load it with T2I_RL_BENCH_LEAN_MODELS=0)"
            )
    else:
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer", local_files_only=True)
        model = build_clip(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        model.load_state_dict(load_file(folder / WEIGHTS))
    return ClipJudge(model, tokenizer, spec).to(device).eval().requires_grad_(False)


def image_features(folder: str | Path, device: str | torch.device = "cpu") -> ImageFeatures:
    """The in-house CLIP's image tower as an `nn.Module` feature network with `num_features`."""
    return ImageFeatures(load_clip(folder, device)).eval()


@torch.no_grad()
def retrieval_accuracy(judge: ClipJudge, renders: int = 4, seed: int = 10_000) -> dict:
    """Top-1 retrieval on fresh renders (jitter from a seed the training never drew) of the world's
    full captions: image->caption (each image ranks the captions of the set) and caption->image (each
    caption ranks one render of every caption of the set), averaged over `renders` rounds, for the 96
    held-out-prompt scenes and for all 384 scenes."""
    rng = np.random.default_rng(seed)
    sets = {"heldout": prompt_sets()["heldout"], "all": [caption(s) for s in all_scenes()]}
    out = {"renders": renders, "seed": seed}
    for name, captions in sets.items():
        txt = judge.encode_texts(captions)
        i2t, t2i = [], []
        for _ in range(renders):
            images = np.stack([render(Scene(**parse(c)), judge.spec.resolution, sample_jitter(rng)) for c in captions])
            sim = judge.encode_images(torch.from_numpy(images)) @ txt.T  # (images, captions)
            target = torch.arange(len(captions))
            i2t.append((sim.argmax(1) == target).float().mean().item())
            t2i.append((sim.argmax(0) == target).float().mean().item())
        out[name] = {
            "captions": len(captions),
            "image_to_text_top1": round(float(np.mean(i2t)), 4),
            "text_to_image_top1": round(float(np.mean(t2i)), 4),
        }
    return out


def main() -> None:  # pragma: no cover - the documented command
    import argparse

    parser = argparse.ArgumentParser(description="Pretrain the in-house CLIP judge (one thread).")
    parser.add_argument("--out", default="results/models/clip16")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = pretrain_clip(args.out, steps=args.steps, seed=args.seed)
    print(json.dumps(json.loads((folder / "bench_model.json").read_text())["retrieval"], indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
