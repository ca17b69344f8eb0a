"""JPEG (in)compressibility rewards, DDPO's definition.

Black et al. 2023, "Training Diffusion Models with Reinforcement Learning" (DDPO), Sec. 6.1:
the reward is the size of the image after JPEG compression at quality 95, in kilobytes;
*incompressibility* is the size, *compressibility* its negative. Following the reference
implementation (kvablack/ddpo-pytorch, ``ddpo_pytorch/rewards.py``), images are quantised
as ``uint8 = round(255 * x)`` (clamped to ``[0, 255]``) and kB means bytes / 1000.

One definition with a sign, so both registered types live in this file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Float, List, Tensor

__all__ = ["jpeg_size_kb", "JpegCompressibility", "JpegIncompressibility"]


def to_uint8(images: Float[Tensor, "B H W 3"]) -> np.ndarray:
    """``[B, H, W, 3]`` floats in ``[0, 1]`` -> ``uint8`` array via ``round(255 * clamp(x, 0, 1))``."""
    x = images.detach().float().clamp(0.0, 1.0).mul(255.0).round()
    return x.to(torch.uint8).cpu().numpy()


def jpeg_size_kb(images: Float[Tensor, "B H W 3"], quality: int = 95) -> Float[Tensor, " B"]:
    """JPEG file size of each image in kB (bytes / 1000), PIL encoder.

    Args:
        images: ``[B, H, W, 3]`` floats in ``[0, 1]``.
        quality: JPEG quality (DDPO uses 95).

    Returns:
        ``Float[Tensor, " B"]`` sizes (float32, on ``images.device``, no gradient).
    """
    from PIL import Image

    sizes = []
    for arr in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class _JpegSizeReward(Reward):
    """``sign * jpeg_size_kb(images)``; subclasses fix the sign."""

    differentiable = False
    sign: float = 1.0

    @dataclass
    class Config:
        quality: int = 95  # JPEG quality passed to PIL (1..100); DDPO uses 95

    def configure(self) -> None:
        if not 1 <= int(self.cfg.quality) <= 100:
            raise ConfigError(f"reward {self.name!r}: quality must be in 1..100, got {self.cfg.quality}")

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """JPEG size in kB times ``sign`` (prompts are ignored)."""
        return self.sign * jpeg_size_kb(images, self.cfg.quality)


@register_reward("jpeg-compressibility")
class JpegCompressibility(_JpegSizeReward):
    """Negative JPEG size in kB: higher for images that compress well (DDPO)."""

    sign = -1.0


@register_reward("jpeg-incompressibility")
class JpegIncompressibility(_JpegSizeReward):
    """JPEG size in kB: higher for images that compress badly (DDPO)."""

    sign = 1.0
