"""``deep-floyd-guidance``: score distillation with DeepFloyd IF stage I in pixel space.

Same class name, config keys, attributes and call signature as threestudio 0.2.3's
``DeepFloydGuidance`` (the DDPO3D guidance subclasses it on both hosts): ``pipe``, ``unet``,
``scheduler``, ``alphas``, ``num_train_timesteps``, ``min_step`` / ``max_step``,
``weights_dtype``, ``grad_clip_val``, ``forward_unet``, ``set_min_max_steps``,
``update_step``, ``guidance_eval``.

IF works on pixels, so there is no VAE: ``x_0 = 2·rgb - 1`` after a bilinear resize to the
UNet's native resolution. IF's UNet predicts 6 channels, ε (the first 3) and the
learned-range variance interpolation (Nichol & Dhariwal 2021, arXiv 2102.09672, eq. 15),
which SDS ignores. The SDS estimate itself is :class:`ddpo3d.objectives.sds.SDS` over a
pixel-mode :class:`ddpo3d.diffusion.UNetNoisePredictor` wrapping ``self.unet`` /
``self.alphas``.

One generalisation: threestudio resizes renders to 64 px (IF-I's size); here the size is
``unet.config.sample_size`` (64 for IF-I, 32 for the tiny test pipeline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
from ddpo3d.utils.typing import Any, Dict, Float, Int, Optional, Tensor
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
    ``max_items_eval`` (items previewed by ``guidance_eval``).
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
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
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

        self.predictor = UNetNoisePredictor.from_guidance(self)  # pixel mode: no vae
        self.sds = self.build_sds()
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
            guidance_eval: also return denoising previews under ``"eval"``.

        Returns:
            ``{"loss_sds", "grad_norm", "min_step", "max_step"}`` (+ ``"eval"`` with
            ``guidance_eval``). ``loss_sds`` backpropagates ``w(t)(ε̂ - ε) / B`` into the
            resized pixels and on to ``rgb``.
        """
        if rgb_as_latents:
            raise ValueError(
                f"rgb_as_latents=True: there is no latent space in {type(self).__name__} (IF is pixel space)"
            )
        if getattr(prompt_utils, "use_perp_neg", False):
            raise NotImplementedError("Perp-Neg prompts are not supported by the built-in runtime")
        latents = self.encode_images(rgb.permute(0, 3, 1, 2))

        out, text_embeddings = self.sample_sds(latents, prompt_utils, elevation, azimuth, camera_distances)
        guidance_out = sds_outputs(out, self.min_step, self.max_step)
        if guidance_eval:
            self.add_guidance_eval(guidance_out, out, text_embeddings, elevation, azimuth, camera_distances)
        return guidance_out

    @torch.no_grad()
    def get_noise_pred(self, latents_noisy: Tensor, t: Tensor, text_embeddings: Tensor) -> Float[Tensor, "B 6 h w"]:
        """CFG ε ``eps_c + s (eps_c - eps_u)`` concatenated with the conditional branch's
        predicted variance (what ``DDPMScheduler.step`` with ``learned_range`` expects)."""
        model_input = torch.cat([latents_noisy] * 2, dim=0)
        t_in = torch.as_tensor(t, device=self.device).reshape(-1)
        t_in = t_in.expand(latents_noisy.shape[0]) if t_in.numel() == 1 else t_in
        noise_pred = self.forward_unet(model_input, torch.cat([t_in] * 2), encoder_hidden_states=text_embeddings)
        noise_pred_text, noise_pred_uncond = noise_pred.chunk(2)
        noise_pred_text, predicted_variance = noise_pred_text.split(3, dim=1)
        noise_pred_uncond, _ = noise_pred_uncond.split(3, dim=1)
        guided = noise_pred_text + self.cfg.guidance_scale * (noise_pred_text - noise_pred_uncond)
        return torch.cat([guided, predicted_variance], dim=1)

    @torch.no_grad()
    def guidance_eval(
        self,
        t_orig: Int[Tensor, " B"],
        text_embeddings: Float[Tensor, "BB N Nf"],
        latents_noisy: Float[Tensor, "B 3 h w"],
        noise_pred: Float[Tensor, "B 3 h w"],
    ) -> Dict[str, Any]:
        """Previews of what the guidance sees: the noisy input, one DDPM step, the one-step x0
        estimate, and a full denoising over 50 steps from ``t``, for the first
        ``max_items_eval`` items (images ``[bs, h, w, 3]`` in [0, 1]).

        ``noise_pred`` is the guided ε (3 channels, as :class:`SDS` returns it); the learned
        variance the scheduler also needs is recomputed with one extra UNet call.
        """
        n = latents_noisy.shape[0]
        bs, idxs, t, fracs = eval_timesteps(self.scheduler, t_orig, n, self.cfg.max_items_eval, self.device)

        def to_img(x: Tensor) -> Tensor:
            return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

        variance = self.get_noise_pred(latents_noisy, t_orig, text_embeddings)[:, 3:]
        noise_pred = torch.cat([noise_pred, variance], dim=1)
        latents_1step, pred_1orig, latents_final = denoise_previews(
            self.scheduler, noise_pred, t, idxs, latents_noisy, text_embeddings, n, self.get_noise_pred
        )
        return {
            "bs": bs,
            "noise_levels": fracs,
            "imgs_noisy": to_img(latents_noisy[:bs]),
            "imgs_1step": to_img(latents_1step),
            "imgs_1orig": to_img(pred_1orig),
            "imgs_final": to_img(latents_final),
        }

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.update_grad_clip(epoch, global_step)
        self.update_step_range(epoch, global_step)
