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
from ddpo3d.utils.typing import Any

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

    def __call__(
        self,
        rgb,
        prompt_utils,
        elevation,
        azimuth,
        camera_distances,
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        **kwargs,
    ):
        """threestudio's guidance call; returns ``loss_sds``, ``loss_ddpo``/``loss_reward`` and scalars.

        Args:
            rgb: renders ``[B, H, W, 3]`` in [0, 1].
            prompt_utils: the (DeepFloyd) prompt processor's output.
            elevation, azimuth, camera_distances: camera parameters ``[B]`` (degrees).
        """
        cond, uncond, prompts = self.text_conditions(
            prompt_utils, elevation, azimuth, camera_distances, rgb_as_latents, guidance_eval
        )
        x = F.interpolate(
            rgb.permute(0, 3, 1, 2), (self.resolution, self.resolution), mode="bilinear", align_corners=False
        )
        x0 = x * 2.0 - 1.0
        return self.align(rgb, self.predictor, cond, uncond, prompts, x0=x0)
