"""JPEG (in)compressibility, the DDPO tasks (Black et al. 2023, Sec. 6.1; ddpo-pytorch rewards.py):
the size of the image saved as JPEG at quality 95, in kB; compressibility is minus the size."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def jpeg_kilobytes(images: torch.Tensor, quality: int = 95) -> np.ndarray:
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for img in arr:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000)
    return np.asarray(sizes)


class JpegCompressibility:
    """Reward = -(JPEG size in kB) at quality 95: smaller files score higher."""

    def __init__(self, quality: int = 95):
        self.quality = quality

    def __call__(self, images, prompts, metadata):
        kb = jpeg_kilobytes(images, self.quality)
        return -kb, {"kilobytes": kb}


class JpegIncompressibility(JpegCompressibility):
    """Reward = +(JPEG size in kB) at quality 95."""

    def __call__(self, images, prompts, metadata):
        kb = jpeg_kilobytes(images, self.quality)
        return kb, {"kilobytes": kb}
