"""``deep-floyd-guidance``: score distillation with DeepFloyd IF stage I in pixel space.

Same class name, config keys, attributes and call signature as threestudio 0.2.3's
``DeepFloydGuidance`` (the DDPO3D guidance subclasses it on both hosts): ``pipe``, ``unet``,
``scheduler``, ``alphas``, ``num_train_timesteps``, ``min_step`` / ``max_step``,
``weights_dtype``, ``grad_clip_val``, ``forward_unet``, ``set_min_max_steps``,
``update_step``.

IF works on pixels, so there is no VAE: ``x_0 = 2·rgb - 1`` after a bilinear resize to the
UNet's native resolution. IF's UNet predicts 6 channels, ε (the first 3) and the
learned-range variance interpolation (Nichol & Dhariwal 2021, arXiv 2102.09672, eq. 15),
which SDS ignores. The SDS loss is threestudio's (:meth:`DiffusersGuidanceMixin.sds_loss`,
implemented in the runtime, independently of :mod:`ddpo3d.objectives`).

One generalisation: threestudio resizes renders to 64 px (IF-I's size); here the size is
``unet.config.sample_size`` (64 for IF-I, 32 for the tiny test pipeline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.guidance.common import (
    DiffusersGuidanceMixin,
    apply_pipeline_options,
    check_weighting_strategy,
    dtype_kwarg,
    freeze,
    resolve_weights_dtype,
)
from ddpo3d.lite.models.prompt_processors.base import PromptProcessorOutput
from ddpo3d.lite.utils.base import BaseObject
from ddpo3d.utils.typing import Any, Dict, Float, Optional, Tensor
from ddpo3d.weights import resolve_pretrained


@threestudio.register("deep-floyd-guidance")
class DeepFloydGuidance(DiffusersGuidanceMixin, BaseObject):
    """SDS guidance from DeepFloyd IF stage I (DreamFusion, Poole et al. 2022, eq. 3, in
    pixel space as DreamFusion's own Imagen base model).

    Config keys are threestudio's: ``pretrained_model_name_or_path`` (default
    ``"DeepFloyd/IF-I-XL-v1.0"``; a local folder or the Hugging Face cache),
    ``enable_memory_efficient_attention`` (PyTorch 2 attention already is: a notice),
    ``enable_sequential_cpu_offload`` (CUDA + accelerate only; an error on CPU),
    ``enable_attention_slicing``, ``enable_channels_last_format``, ``guidance_scale``
    (CFG ``s`` in ``eps_c + s (eps_c - eps_u)``), ``grad_clip`` (schedule),
    ``half_precision_weights`` (fp16 on CUDA; fp32 with a notice on CPU),
    ``min_step_percent`` / ``max_step_percent`` (schedules), ``weighting_strategy``
    (``sds`` / ``uniform`` / ``fantasia3d``), ``view_dependent_prompting``,
    ``max_items_eval`` (only for ``guidance_eval`` previews, which the runtime does not
    implement: run with threestudio for them).
    """

    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = True
        guidance_scale: float = 20.0
        grad_clip: Optional[Any] = None  # e.g. [0, 2.0, 8.0, 1000] (Hong et al. 2023)
        half_precision_weights: bool = True
        min_step_percent: float = 0.02  # a number, as in threestudio (a subclass may widen it)
        max_step_percent: float = 0.98
        weighting_strategy: str = "sds"
        view_dependent_prompting: bool = True
        max_items_eval: int = 4  # items previewed by guidance_eval (-1: all)

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        check_weighting_strategy(cfg.weighting_strategy)
        threestudio.info("Loading Deep Floyd ...")
        self.weights_dtype = resolve_weights_dtype(cfg.half_precision_weights, self.device)

        from diffusers import IFPipeline

        path, local_only = resolve_pretrained(
            cfg.pretrained_model_name_or_path, f"DeepFloyd IF pipeline ({cfg.pretrained_model_name_or_path})"
        )
        kwargs: Dict[str, Any] = dict(local_files_only=local_only, **dtype_kwarg(self.weights_dtype))
        unet_dir = os.path.join(path, "unet")
        if self.weights_dtype == torch.float16 and (
            not os.path.isdir(unet_dir) or any(".fp16." in n for n in os.listdir(unet_dir))
        ):
            kwargs["variant"] = "fp16"  # IF ships fp16 weight files (threestudio loads them)
        self.pipe = IFPipeline.from_pretrained(
            path,
            text_encoder=None,  # the prompt processor owns the (large) T5 encoder
            safety_checker=None,
            watermarker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **kwargs,
        ).to(self.device)

        apply_pipeline_options(self.pipe, cfg, self.device)
        self.unet = freeze(self.pipe.unet)
        if int(self.unet.config.in_channels) != 3:
            raise ValueError(
                f"deep-floyd-guidance needs a pixel-space stage-I UNet with 3 input channels; "
                f"{cfg.pretrained_model_name_or_path} has {self.unet.config.in_channels}"
            )

        self.init_timesteps(self.pipe.scheduler)
        # native resolution: 64 for IF-I (threestudio hard-codes 64)
        self.resolution = int(self.unet.config.sample_size)
        threestudio.info("Loaded Deep Floyd!")

    # ------------------------------------------------------------------ threestudio helpers
    # set_min_max_steps and forward_unet (6 channels for IF: ε and the variance
    # interpolation) come from DiffusersGuidanceMixin
    def encode_images(self, imgs: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 R R"]:
        """Images in [0, 1] (any size) -> IF's pixel space ``[-1, 1]`` at the native size
        (bilinear, differentiable). Our addition (threestudio inlines it in ``__call__``)."""
        imgs = imgs * 2.0 - 1.0  # scale to the diffusion model's data range
        return F.interpolate(imgs, (self.resolution, self.resolution), mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ SDS
    def __call__(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: PromptProcessorOutput,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        **kwargs,
    ) -> Dict[str, Any]:
        """SDS loss for a batch of renders.

        Args:
            rgb: renders in [0, 1], ``[B, H, W, 3]``.
            prompt_utils: the prompt processor's output (T5 embeddings).
            elevation, azimuth, camera_distances: cameras (degrees), for view-dependent prompts.
            rgb_as_latents: must be false (IF has no latent space).
            guidance_eval: not implemented by the runtime (an error).

        Returns:
            ``{"loss_sds", "grad_norm", "min_step", "max_step"}``. ``loss_sds`` backpropagates
            ``w(t)(ε̂ - ε) / B`` into the resized pixels and on to ``rgb``.
        """
        self.check_call(rgb_as_latents, guidance_eval, latents_ok=False)
        x = self.encode_images(rgb.permute(0, 3, 1, 2))
        t = self.sample_t(rgb.shape[0])
        text_embeddings = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
        )
        with torch.no_grad():  # ε̂ without the UNet Jacobian
            noise = torch.randn_like(x)
            x_noisy = self.scheduler.add_noise(x, noise, t)
            noise_pred = self.forward_unet(torch.cat([x_noisy] * 2), torch.cat([t] * 2), text_embeddings)
        # IF predicts [ε, variance interpolation]; SDS uses ε (the first 3 channels) only
        eps_c, eps_u = noise_pred[:, :3].chunk(2)  # threestudio's order: [cond, uncond]
        return self.sds_loss(x, eps_c + self.cfg.guidance_scale * (eps_c - eps_u), noise, t)
