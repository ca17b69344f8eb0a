"""``ddpo3d-stable-diffusion-guidance``: Stable Diffusion SDS plus a reward objective.

Extends the host's ``stable-diffusion-guidance`` (threestudio's or the built-in runtime's):
same config keys, weights and attributes, plus ``reward``, ``objective``, ``reward_prompts``
and ``seed``. Returns ``loss_sds`` and ``loss_ddpo`` (``objective.type: ddpo3d``) or
``loss_reward`` (``reward-backprop``), so a system weighting ``loss_*`` by ``lambda_*`` picks
them up; add ``lambda_ddpo`` / ``lambda_reward`` to ``system.loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ddpo3d.diffusion.unet import UNetNoisePredictor
from ddpo3d.host import StableDiffusionGuidance, register
from ddpo3d.utils.typing import Any

from .alignment import AlignmentConfig, RewardAlignmentMixin


@register("ddpo3d-stable-diffusion-guidance")
class DDPO3DStableDiffusionGuidance(RewardAlignmentMixin, StableDiffusionGuidance):
    """Stable Diffusion guidance with DDPO3D / reward-backprop alignment."""

    @dataclass
    class Config(StableDiffusionGuidance.Config, AlignmentConfig):
        # widened from the base's float: a number or a schedule [start_step, start, end, end_step]
        # (threestudio's C(), resolved in update_step on both hosts)
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if getattr(self.cfg, "use_sjc", False):
            raise NotImplementedError("guidance.use_sjc is not supported by ddpo3d-stable-diffusion-guidance")
        # wrap the already-loaded UNet / VAE (nothing is loaded twice)
        self.predictor = UNetNoisePredictor.from_guidance(self)
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = int(self.unet.config.sample_size) * vae_factor
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
            rgb: renders ``[B, H, W, 3]`` in [0, 1] (``comp_rgb``).
            prompt_utils: the prompt processor's output.
            elevation, azimuth, camera_distances: camera parameters ``[B]`` (degrees).
            rgb_as_latents: ``rgb`` already holds 4-channel latents (latent-NeRF style).
            guidance_eval: not supported with alignment (raises).
        """
        cond, uncond, prompts = self.text_conditions(
            prompt_utils, elevation, azimuth, camera_distances, rgb_as_latents, guidance_eval, latents_ok=True
        )
        if rgb_as_latents:
            latent_hw = self.resolution // (2 ** (len(self.vae.config.block_out_channels) - 1))
            x0 = F.interpolate(rgb.permute(0, 3, 1, 2), (latent_hw, latent_hw), mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(
                rgb.permute(0, 3, 1, 2), (self.resolution, self.resolution), mode="bilinear", align_corners=False
            )
            x0 = self.encode_images(x)
        images = rgb if not rgb_as_latents else self.predictor.decode(x0.detach())
        return self.align(images, self.predictor, cond, uncond, prompts, x0=x0)
