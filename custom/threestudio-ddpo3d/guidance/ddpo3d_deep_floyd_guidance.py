"""``ddpo3d-deep-floyd-guidance``: DeepFloyd IF (stage I, pixel space) SDS plus a reward objective.

Extends the host's ``deep-floyd-guidance``: same keys, weights and attributes, plus
``reward``, ``objective``, ``reward_prompts`` and ``seed``. IF has no VAE, so the policy's
actions and the ``x0_pred`` reward targets are images directly (no decode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ddpo3d.diffusion.unet import UNetNoisePredictor
from ddpo3d.host import DeepFloydGuidance, register
from ddpo3d.utils.typing import Any, Float, Optional, Tensor, Tuple

from .alignment import AlignmentConfig, RewardAlignmentMixin


@register("ddpo3d-deep-floyd-guidance")
class DDPO3DDeepFloydGuidance(RewardAlignmentMixin, DeepFloydGuidance):
    """DeepFloyd IF guidance with DDPO3D / reward-backprop alignment."""

    @dataclass
    class Config(DeepFloydGuidance.Config, AlignmentConfig):
        # widened from the base's float: a number or a schedule [start_step, start, end, end_step]
        # (threestudio's C(), resolved in update_step on both hosts)
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.predictor = UNetNoisePredictor.from_guidance(self)  # pixel mode: no VAE
        # threestudio resizes to IF-I's 64 px; the UNet's own sample size generalises that
        self.resolution = int(self.unet.config.sample_size)
        self.configure_alignment()

    def model_input(
        self, rgb: Float[Tensor, "B H W C"], rgb_as_latents: bool
    ) -> Tuple[Optional[Float[Tensor, "B 3 h w"]], Float[Tensor, "B H W 3"]]:
        """Pixels: the render resized to the UNet's size, scaled to [-1, 1]."""
        if rgb_as_latents:
            raise NotImplementedError(f"{type(self).__name__} takes RGB renders only (rgb_as_latents=True)")
        size = (self.resolution, self.resolution)
        return F.interpolate(rgb.permute(0, 3, 1, 2), size, mode="bilinear", align_corners=False) * 2.0 - 1.0, rgb
