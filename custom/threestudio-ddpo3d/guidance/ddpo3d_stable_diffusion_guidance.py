"""``ddpo3d-stable-diffusion-guidance``: Stable Diffusion SDS plus a reward objective.

Extends the host's ``stable-diffusion-guidance`` (threestudio's or the built-in runtime's):
same config keys, weights and attributes, plus ``reward``, ``objective``, ``reward_prompts``
and ``seed``. Returns ``loss_sds`` and ``loss_ddpo`` (``objective.type: ddpo3d``) or
``loss_reward`` (``reward-backprop``), so a system weighting ``loss_*`` by ``lambda_*`` picks
them up; add ``lambda_ddpo`` / ``lambda_reward`` to ``system.loss``. ``use_img_loss`` (HiFA's
image-space loss) and ``use_sjc`` (score Jacobian chaining) replace the SDS loss the
objective computes, so they are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ddpo3d.diffusion.unet import UNetNoisePredictor
from ddpo3d.host import StableDiffusionGuidance, register
from ddpo3d.utils.typing import Any, Float, Optional, Tensor, Tuple

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
    unhonoured_keys = {"use_img_loss": False, "use_sjc": False}

    def configure(self) -> None:
        super().configure()
        # wrap the already-loaded UNet / VAE (nothing is loaded twice)
        self.predictor = UNetNoisePredictor.from_guidance(self)
        self.latent_size = int(self.unet.config.sample_size)
        self.resolution = self.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.configure_alignment()

    def model_input(
        self, rgb: Float[Tensor, "B H W C"], rgb_as_latents: bool
    ) -> Tuple[Optional[Float[Tensor, "B 4 h w"]], Float[Tensor, "B H W 3"]]:
        """Latents: the VAE encoding of the render resized to the native size, or (latent-NeRF
        style, ``rgb_as_latents``) ``rgb`` resized to the latent size, whose decoding the
        reward then scores."""
        rgb_BCHW = rgb.permute(0, 3, 1, 2)
        if rgb_as_latents:
            size = (self.latent_size, self.latent_size)
            x0 = F.interpolate(rgb_BCHW, size, mode="bilinear", align_corners=False)
            return x0, self.predictor.decode(x0.detach())
        size = (self.resolution, self.resolution)
        return self.encode_images(F.interpolate(rgb_BCHW, size, mode="bilinear", align_corners=False)), rgb
