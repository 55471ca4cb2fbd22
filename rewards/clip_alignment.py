"""CLIP alignment with the in-house CLIP (`t2i_rl_bench.judges.clip`): the cosine similarity of the image
and prompt embeddings, in [-1, 1] (not multiplied by the logit scale; 1 = same direction). The
info also carries the CLIP score 100 * max(cos, 0), the torchmetrics convention."""

from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_MODEL = "results/models/clip16"
_REPO = Path(__file__).resolve().parent.parent


def _resolve(path) -> Path:
    """A relative path is read from the working directory, else from the repository root."""
    path = Path(path)
    if path.is_absolute() or path.exists() or not (_REPO / path).exists():
        return path
    return _REPO / path


class ClipAlignment:
    """Reward = cos(E_image, E_prompt) under the in-house CLIP at `model` (a folder written by
    `t2i_rl_bench.judges.clip.pretrain_clip`). Images are resized to the CLIP's 16x16 when they differ."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 512):
        from t2i_rl_bench.judges.clip import load_clip
        from t2i_rl_bench.judges.reward_model_weights import WeightsError, default_device

        problems = self.check_weights({"model": model})
        if problems:
            raise WeightsError("; ".join(problems))
        self.judge = load_clip(_resolve(model), default_device(device))
        self.batch_size = batch_size

    @staticmethod
    def check_weights(settings: dict) -> list[str]:
        from t2i_rl_bench.models.checkpoint import MANIFEST, read_manifest, verify

        path = settings.get("model", DEFAULT_MODEL)
        folder = _resolve(path)
        where = f"clip_alignment setting 'model' ({path})"
        if not (folder / MANIFEST).is_file():
            return [f"{where}: no {MANIFEST}: not a model folder (make it with t2i_rl_bench.judges.clip.pretrain_clip)"]
        if read_manifest(folder).get("family") != "judge_clip":
            return [f"{where}: not an in-house CLIP folder (family {read_manifest(folder).get('family')!r})"]
        changed = verify(folder)
        return [f"{where}: weight files differ from their recorded hashes: {changed}"] if changed else []

    differentiable = True  # the CLIP is a network: its cosine has a gradient in the images (DRaFT, ReFL)

    def differentiable_score(self, images, prompts, metadata=None) -> torch.Tensor:
        """(B,) the cosine with autograd through the images (the CLIP's own weights stay frozen)."""
        return (self.judge.encode_images(images) * self.judge.encode_texts(prompts)).sum(-1)

    @torch.no_grad()
    def __call__(self, images, prompts, metadata=None):
        cos = (
            torch.cat(
                [
                    self.judge.cosine(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
                    for i in range(0, len(prompts), self.batch_size)
                ]
            )
            .double()
            .cpu()
        )
        return cos, {"clip_score": 100 * cos.clamp_min(0)}
