"""Image quality against real reference images: FID and KID through torchmetrics with a named
custom feature network (Inception weights cannot be downloaded here, and a small in-house network
is the honest choice at 16x16 px), a clean-fid path that gives the same FID on the same features,
and the CLIP score of given embeddings. No Frechet distance or MMD is written here by hand.

The feature network is any `nn.Module` mapping images (N, 3, H, W), float in [0, 1], to features
(N, D), on any device (the metrics follow it). torchmetrics' FID reads D from a `num_features`
attribute (int or tensor); a module without one is measured here on one real image (torchmetrics'
own fallback probes with a 299x299 CPU image). The module receives the images as they are
(torchmetrics' `normalize` only rescales for its own Inception).
FID is only comparable between numbers computed with the same network, the same N and the same
reference set: report all three beside it.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch


def _device_of(module: torch.nn.Module, fallback: torch.Tensor) -> torch.device:
    return next(iter(module.parameters()), fallback).device


class _WithNumFeatures(torch.nn.Module):
    """The feature network with the `num_features` torchmetrics' FID reads, measured on one real
    image on the network's own device (torchmetrics' fallback probes with a CPU tensor of its
    default size 299x299)."""

    def __init__(self, feature: torch.nn.Module, probe: torch.Tensor):
        super().__init__()
        self.feature = feature
        self.num_features = int(feature(probe).shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature(images)


def _accumulate(metric, feature: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int) -> None:
    """Feed both sets in batches on the feature network's device (the metric's states follow it,
    so the caller's network never moves)."""
    device = _device_of(feature, real)
    metric.to(device)
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, images.shape[0], batch_size):
            metric.update(images[i : i + batch_size].to(device), real=is_real)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def _check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} images must be (N, 3, H, W), got {tuple(images.shape)}")
    if images.is_floating_point() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"{name} images must be floats in [0, 1]")
    return images


def fid(real: torch.Tensor, fake: torch.Tensor, feature: torch.nn.Module, batch_size: int = 256) -> float:
    """Frechet Inception Distance (Heusel et al. 2017) between two image sets in the feature space
    of `feature`, by `torchmetrics.image.fid.FrechetInceptionDistance(feature=module,
    normalize=True)`; statistics accumulate in float64. Needs N >= 2 per set (and N > D for a
    full-rank covariance, else the number is still defined but noisy)."""
    from t2i_rl_bench.models.imports import fid_kid_classes

    FrechetInceptionDistance = fid_kid_classes()[0]  # torchmetrics' class (docs/performance.md#start-up-fid-and-kid)
    real, fake = _check_images(real, "real"), _check_images(fake, "fake")
    with _eval_mode(feature):
        if not hasattr(feature, "num_features"):
            feature = _WithNumFeatures(feature, real[:1].to(_device_of(feature, real)))
        metric = FrechetInceptionDistance(feature=feature, normalize=True)
        _accumulate(metric, feature, real, fake, batch_size)
        return float(metric.compute())


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    feature: torch.nn.Module,
    subset_size: int = 1000,
    subsets: int = 100,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with the cubic
    polynomial kernel (x.y/D + 1)^3, averaged over `subsets` random subsets of `subset_size` per set,
    by `torchmetrics.image.kid.KernelInceptionDistance(feature=module)`. Returns (mean, std over
    subsets). The subsets are drawn from a forked, seeded torch generator, so KID reproduces and the
    caller's random state is untouched. `subset_size` must not exceed either set's size."""
    from t2i_rl_bench.models.imports import fid_kid_classes

    KernelInceptionDistance = fid_kid_classes()[1]  # torchmetrics' class (docs/performance.md#start-up-fid-and-kid)
    real, fake = _check_images(real, "real"), _check_images(fake, "fake")
    with _eval_mode(feature), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        metric = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size, normalize=True)
        _accumulate(metric, feature, real, fake, batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return float(mean), float(std)


def _write_npy_folder(images: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, img in enumerate(images.detach().cpu().float().numpy()):
        np.save(folder / f"{i:06d}.npy", np.ascontiguousarray(img.transpose(1, 2, 0)))  # (H, W, 3)


def _as_float32(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32)


def clean_fid(real: torch.Tensor, fake: torch.Tensor, feature: torch.nn.Module, batch_size: int = 256) -> float:
    """The same FID by clean-fid (Parmar et al. 2022): `cleanfid.fid.compute_fid` on two folders
    with `custom_feat_extractor=feature`, `num_workers=0`, on the feature network's device.

    The images are written as float32 .npy files (clean-fid reads .npy) rather than PNG, and
    clean-fid's resize to 299x299 is replaced by a float32 cast, so the feature network sees exactly
    the (N, 3, H, W) [0, 1] tensors that `fid` gives it (clean-fid otherwise feeds 0-255 floats at
    299 px, which a custom network at 16 px does not expect). With that, clean-fid and torchmetrics
    differ only in the matrix square root (scipy `sqrtm` vs eigenvalues of Sigma1 Sigma2)."""
    from cleanfid import fid as cleanfid_fid

    real, fake = _check_images(real, "real"), _check_images(fake, "fake")
    device = _device_of(feature, real)
    with _eval_mode(feature), tempfile.TemporaryDirectory(prefix="clean_fid_") as tmp:
        _write_npy_folder(real, Path(tmp) / "real")
        _write_npy_folder(fake, Path(tmp) / "fake")
        return float(
            cleanfid_fid.compute_fid(
                str(Path(tmp) / "real"),
                str(Path(tmp) / "fake"),
                mode="clean",
                custom_feat_extractor=feature,
                custom_fn_resize=_as_float32,
                num_workers=0,
                batch_size=batch_size,
                device=device,
                verbose=False,
            )
        )


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(N,) CLIP score of each image with its caption: 100 * max(cos(E_I, E_C), 0) (Hessel et al.
    2021 with w = 100, the formula torchmetrics' CLIPScore documents). Average it for a table.
    torchmetrics' implementation clamps the average instead of each pair; the two agree whenever
    no pair has a negative cosine, which is the case for any trained CLIP in practice."""
    img = torch.nn.functional.normalize(image_emb.to(torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(text_emb.to(torch.float64), dim=-1)
    return 100.0 * (img * txt).sum(-1).clamp_min(0.0)
