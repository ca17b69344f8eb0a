"""``stable-diffusion-guidance``: score distillation with a diffusers Stable Diffusion pipeline.

Same class name, config keys, attributes and call signature as threestudio 0.2.3's
``StableDiffusionGuidance`` (the DDPO3D guidance subclasses it on both hosts). The SDS
estimate itself is :class:`ddpo3d.objectives.sds.SDS` over a
:class:`ddpo3d.diffusion.UNetNoisePredictor` wrapping ``self.unet`` / ``self.vae`` /
``self.alphas``.

One generalisation: threestudio resizes renders to 512 px (SD's native size); here the
size is the pipeline's own, ``unet.config.sample_size * vae_scale_factor`` (512 for SD 2.1
base, 64 for the tiny test pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import ddpo3d.lite as threestudio
from ddpo3d.diffusion import UNetNoisePredictor
from ddpo3d.lite.models.guidance.common import (
    DiffusersGuidanceMixin,
    apply_pipeline_options,
    check_weighting_strategy,
    denoise_previews,
    dtype_kwarg,
    eval_timesteps,
    freeze,
    resolve_weights_dtype,
    sds_outputs,
)
from ddpo3d.lite.models.prompt_processors.base import PromptProcessorOutput
from ddpo3d.lite.utils.base import BaseObject
from ddpo3d.lite.utils.misc import C
from ddpo3d.utils.typing import Any, Dict, Float, Int, Optional, Tensor
from ddpo3d.weights import resolve_pretrained


@threestudio.register("stable-diffusion-guidance")
class StableDiffusionGuidance(DiffusersGuidanceMixin, BaseObject):
    """SDS guidance from Stable Diffusion (DreamFusion, Poole et al. 2022, Eq. 3).

    Config keys are threestudio's: ``pretrained_model_name_or_path``,
    ``enable_memory_efficient_attention`` (PyTorch 2 attention is already memory-efficient:
    a notice), ``enable_sequential_cpu_offload`` (CUDA + accelerate only; an error on CPU),
    ``enable_attention_slicing``, ``enable_channels_last_format``, ``guidance_scale``,
    ``grad_clip`` (schedule), ``half_precision_weights`` (fp16 on CUDA; fp32 with a notice
    on CPU), ``min_step_percent`` / ``max_step_percent`` (schedules), ``sqrt_anneal``,
    ``trainer_max_steps``, ``use_img_loss`` (HiFA image-space SDS, ``loss_sds_img``),
    ``use_sjc`` (not supported: an error), ``var_red``, ``weighting_strategy``
    (``sds`` / ``uniform`` / ``fantasia3d``), ``token_merging`` (needs ``tomesd``),
    ``token_merging_params``, ``view_dependent_prompting``, ``max_items_eval``.
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
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
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

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.use_sjc:
            raise NotImplementedError(
                "use_sjc=true (score Jacobian chaining) is not supported by the built-in runtime's "
                "stable-diffusion-guidance; set system.guidance.use_sjc=false or install threestudio"
            )
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

        if cfg.token_merging:
            try:
                import tomesd
            except ImportError as exc:
                raise ImportError("token_merging=true needs the 'tomesd' package (pip install tomesd)") from exc
            tomesd.apply_patch(self.unet, **(cfg.token_merging_params or {}))

        self.init_timesteps(DDIMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=local_only))

        # native image size (512 for SD 2.1 base) and latent size (64)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_size = int(self.unet.config.sample_size)
        self.resolution = self.latent_size * self.vae_scale_factor

        self.predictor = UNetNoisePredictor.from_guidance(self)
        self.sds = self.build_sds(sqrt_anneal=cfg.sqrt_anneal, trainer_max_steps=cfg.trainer_max_steps)
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
            guidance_eval: also return denoising previews under ``"eval"``.

        Returns:
            ``{"loss_sds", "grad_norm", "min_step", "max_step"}`` (+ ``"loss_sds_img"`` with
            ``use_img_loss``, ``"eval"`` with ``guidance_eval``).
        """
        if getattr(prompt_utils, "use_perp_neg", False):
            raise NotImplementedError("Perp-Neg prompts are not supported by the built-in runtime")
        batch_size = rgb.shape[0]
        rgb_BCHW = rgb.permute(0, 3, 1, 2)
        rgb_BCHW_native = F.interpolate(
            rgb_BCHW, (self.resolution, self.resolution), mode="bilinear", align_corners=False
        )
        if rgb_as_latents:
            latents = F.interpolate(
                rgb_BCHW, (self.latent_size, self.latent_size), mode="bilinear", align_corners=False
            )
        else:
            latents = self.encode_images(rgb_BCHW_native)

        out, text_embeddings = self.sample_sds(latents, prompt_utils, elevation, azimuth, camera_distances)
        guidance_out = sds_outputs(out, self.min_step, self.max_step)

        if self.cfg.use_img_loss:
            # HiFA (Zhu et al. 2023) image-space SDS: x0_hat = (x_t - sigma eps_hat) / alpha,
            # grad_img = w (x - D(x0_hat)) alpha / sigma, applied with the same target trick.
            ab = self.alphas[out.t].view(-1, 1, 1, 1).to(out.x_t)
            alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
            with torch.no_grad():
                image_denoised = self.decode_latents((out.x_t - sigma * out.eps_pred) / alpha)
                image_denoised = F.interpolate(
                    image_denoised, rgb_BCHW_native.shape[-2:], mode="bilinear", align_corners=False
                )
            grad_img = torch.nan_to_num(out.w * (rgb_BCHW_native - image_denoised) * alpha / sigma)
            if self.grad_clip_val is not None:
                grad_img = grad_img.clamp(-self.grad_clip_val, self.grad_clip_val)
            target_img = (rgb_BCHW_native - grad_img).detach()
            guidance_out["loss_sds_img"] = 0.5 * F.mse_loss(rgb_BCHW_native, target_img, reduction="sum") / batch_size

        if guidance_eval:
            self.add_guidance_eval(guidance_out, out, text_embeddings, elevation, azimuth, camera_distances)
        return guidance_out

    @torch.no_grad()
    def get_noise_pred(self, latents_noisy: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """CFG noise prediction ``eps_c + s (eps_c - eps_u)`` for one timestep (no grad)."""
        latent_model_input = torch.cat([latents_noisy] * 2, dim=0)
        t_in = torch.cat([t.reshape(1)] * 2).to(self.device).expand(latent_model_input.shape[0])
        noise_pred = self.forward_unet(latent_model_input, t_in, encoder_hidden_states=text_embeddings)
        noise_pred_text, noise_pred_uncond = noise_pred.chunk(2)
        return noise_pred_text + self.cfg.guidance_scale * (noise_pred_text - noise_pred_uncond)

    @torch.no_grad()
    def guidance_eval(
        self, t_orig: Int[Tensor, " B"], text_embeddings: Tensor, latents_noisy: Tensor, noise_pred: Tensor
    ) -> Dict[str, Any]:
        """Previews of what the guidance sees: the noisy input, one DDIM step, the one-step
        x0 estimate, and a full 50-step DDIM denoising (eta=1) from ``t``, for the first
        ``max_items_eval`` items."""
        bs, idxs, t, fracs = eval_timesteps(
            self.scheduler, t_orig, latents_noisy.shape[0], self.cfg.max_items_eval, self.device
        )
        imgs_noisy = self.decode_latents(latents_noisy[:bs]).permute(0, 2, 3, 1)
        latents_1step, pred_1orig, latents_final = denoise_previews(
            self.scheduler,
            noise_pred,
            t,
            idxs,
            latents_noisy,
            text_embeddings,
            text_embeddings.shape[0] // 2,
            self.get_noise_pred,
            eta=1,
        )
        imgs_1step = self.decode_latents(latents_1step).permute(0, 2, 3, 1)
        imgs_1orig = self.decode_latents(pred_1orig).permute(0, 2, 3, 1)
        imgs_final = self.decode_latents(latents_final).permute(0, 2, 3, 1)
        return {
            "bs": bs,
            "noise_levels": fracs,
            "imgs_noisy": imgs_noisy,
            "imgs_1step": imgs_1step,
            "imgs_1orig": imgs_1orig,
            "imgs_final": imgs_final,
        }

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.update_grad_clip(epoch, global_step)
        if self.cfg.sqrt_anneal:
            # HiFA: one t annealed from max to min with sqrt(progress)
            percentage = (float(global_step) / self.cfg.trainer_max_steps) ** 0.5
            mx = self.cfg.max_step_percent
            max_step_percent = mx if isinstance(mx, (float, int)) else mx[1]
            min_p = C(self.cfg.min_step_percent, epoch, global_step)
            curr = (max_step_percent - min_p) * (1 - percentage) + min_p
            self.set_min_max_steps(min_step_percent=curr, max_step_percent=curr)
        else:
            self.update_step_range(epoch, global_step)
