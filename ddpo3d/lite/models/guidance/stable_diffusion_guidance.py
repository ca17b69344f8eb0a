"""``stable-diffusion-guidance``: score distillation with a diffusers Stable Diffusion pipeline.

Same class name, config keys, attributes and call signature as threestudio 0.2.3's
``StableDiffusionGuidance`` (the DDPO3D guidance subclasses it on both hosts), and the same
SDS semantics (its ``compute_grad_sds`` without Perp-Neg), implemented here
(:meth:`DiffusersGuidanceMixin.sds_loss`), independently of :mod:`ddpo3d.objectives`.

One generalisation: threestudio resizes renders to 512 px (SD's native size); here the
size is the pipeline's own, ``unet.config.sample_size * vae_scale_factor`` (512 for SD 2.1
base, 64 for the tiny test pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@threestudio.register("stable-diffusion-guidance")
class StableDiffusionGuidance(DiffusersGuidanceMixin, BaseObject):
    """SDS guidance from Stable Diffusion (DreamFusion, Poole et al. 2022, eq. 3).

    Config keys are threestudio's: ``pretrained_model_name_or_path``,
    ``enable_memory_efficient_attention`` (PyTorch 2 attention is already memory-efficient:
    a notice), ``enable_sequential_cpu_offload`` (CUDA + accelerate only; an error on CPU),
    ``enable_attention_slicing``, ``enable_channels_last_format``, ``guidance_scale``,
    ``grad_clip`` (schedule), ``half_precision_weights`` (fp16 on CUDA; fp32 with a notice
    on CPU), ``min_step_percent`` / ``max_step_percent`` (schedules), ``weighting_strategy``
    (``sds`` / ``uniform`` / ``fantasia3d``), ``view_dependent_prompting``.
    ``trainer_max_steps``, ``var_red`` and ``max_items_eval`` only act through features
    listed in ``unsupported_keys`` (HiFA's ``sqrt_anneal`` and ``use_img_loss``, SJC, token
    merging): those must keep their defaults here, and ``guidance_eval`` previews are not
    implemented (run with threestudio for them).
    """

    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = False
        guidance_scale: float = 100.0
        grad_clip: Optional[Any] = None
        half_precision_weights: bool = True
        min_step_percent: float = 0.02  # a number, as in threestudio (a subclass may widen it)
        max_step_percent: float = 0.98
        sqrt_anneal: bool = False
        trainer_max_steps: int = 25000
        use_img_loss: bool = False
        use_sjc: bool = False
        var_red: bool = True
        weighting_strategy: str = "sds"
        token_merging: bool = False
        token_merging_params: Optional[dict] = field(default_factory=dict)
        view_dependent_prompting: bool = True
        max_items_eval: int = 4

    cfg: Config
    unsupported_keys = ("sqrt_anneal", "use_img_loss", "use_sjc", "token_merging", "token_merging_params")

    def configure(self) -> None:
        cfg = self.cfg
        check_weighting_strategy(cfg.weighting_strategy)
        threestudio.info("Loading Stable Diffusion ...")
        self.weights_dtype = resolve_weights_dtype(cfg.half_precision_weights, self.device)

        from diffusers import DDIMScheduler, StableDiffusionPipeline

        path, local_only = resolve_pretrained(
            cfg.pretrained_model_name_or_path, f"Stable Diffusion pipeline ({cfg.pretrained_model_name_or_path})"
        )
        self.pipe = StableDiffusionPipeline.from_pretrained(
            path,
            tokenizer=None,
            text_encoder=None,  # threestudio loads and deletes it; the prompt processor owns text
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=local_only,
            **dtype_kwarg(self.weights_dtype),
        ).to(self.device)

        apply_pipeline_options(self.pipe, cfg, self.device)
        self.vae = freeze(self.pipe.vae)
        self.unet = freeze(self.pipe.unet)
        self.init_timesteps(DDIMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=local_only))

        # native image size (512 for SD 2.1 base) and latent size (64)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_size = int(self.unet.config.sample_size)
        self.resolution = self.latent_size * self.vae_scale_factor
        threestudio.info("Loaded Stable Diffusion!")

    # ------------------------------------------------------------------ threestudio helpers
    # set_min_max_steps and forward_unet come from DiffusersGuidanceMixin
    def encode_images(self, imgs: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 4 h w"]:
        """Images in [0, 1] -> VAE posterior sample * scaling_factor (differentiable)."""
        input_dtype = imgs.dtype
        imgs = imgs * 2.0 - 1.0
        posterior = self.vae.encode(imgs.to(self.weights_dtype)).latent_dist
        latents = posterior.sample() * self.vae.config.scaling_factor
        return latents.to(input_dtype)

    def decode_latents(
        self, latents: Float[Tensor, "B 4 h w"], latent_height: Optional[int] = None, latent_width: Optional[int] = None
    ) -> Float[Tensor, "B 3 H W"]:
        """Latents -> images in [0, 1] (resized to the native latent size first; threestudio
        defaults to 64, here the pipeline's own)."""
        input_dtype = latents.dtype
        size = (latent_height or self.latent_size, latent_width or self.latent_size)
        latents = F.interpolate(latents, size, mode="bilinear", align_corners=False)
        latents = 1 / self.vae.config.scaling_factor * latents
        image = self.vae.decode(latents.to(self.weights_dtype)).sample
        return (image * 0.5 + 0.5).clamp(0, 1).to(input_dtype)

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
            rgb: renders in [0, 1] (or latents when ``rgb_as_latents``).
            prompt_utils: the prompt processor's output.
            elevation, azimuth, camera_distances: cameras (degrees), for view-dependent prompts.
            rgb_as_latents: treat ``rgb`` as 4-channel latents (resized to the latent size).
            guidance_eval: not implemented by the runtime (an error).

        Returns:
            ``{"loss_sds", "grad_norm", "min_step", "max_step"}``.
        """
        self.check_call(rgb_as_latents, guidance_eval, latents_ok=True)
        rgb_BCHW = rgb.permute(0, 3, 1, 2)
        if rgb_as_latents:
            size = (self.latent_size, self.latent_size)
            latents = F.interpolate(rgb_BCHW, size, mode="bilinear", align_corners=False)
        else:
            size = (self.resolution, self.resolution)
            latents = self.encode_images(F.interpolate(rgb_BCHW, size, mode="bilinear", align_corners=False))
        t = self.sample_t(rgb.shape[0])
        text_embeddings = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
        )
        with torch.no_grad():  # ε̂ without the UNet Jacobian
            noise = torch.randn_like(latents)
            latents_noisy = self.scheduler.add_noise(latents, noise, t)
            noise_pred = self.forward_unet(
                torch.cat([latents_noisy] * 2), torch.cat([t] * 2), encoder_hidden_states=text_embeddings
            )
        eps_c, eps_u = noise_pred.chunk(2)  # threestudio's order: [cond, uncond]
        return self.sds_loss(latents, eps_c + self.cfg.guidance_scale * (eps_c - eps_u), noise, t)
