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
from ddpo3d.lite.models.guidance.stable_diffusion_guidance import _dtype_kwarg
from ddpo3d.lite.models.prompt_processors.base import PromptProcessorOutput, resolve_pretrained
from ddpo3d.lite.utils.base import BaseObject
from ddpo3d.lite.utils.misc import C, cleanup
from ddpo3d.objectives.sds import SDS, WEIGHTINGS
from ddpo3d.utils.typing import Any, Dict, Float, Int, Optional, Tensor


@threestudio.register("deep-floyd-guidance")
class DeepFloydGuidance(BaseObject):
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
        if cfg.weighting_strategy not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting strategy: {cfg.weighting_strategy!r} (use one of {WEIGHTINGS})")
        threestudio.info("Loading Deep Floyd ...")
        on_cuda = self.device.type == "cuda"
        if cfg.half_precision_weights and not on_cuda:
            threestudio.info("half_precision_weights=true: fp16 needs CUDA; using float32 weights on CPU")
        self.weights_dtype = torch.float16 if (cfg.half_precision_weights and on_cuda) else torch.float32

        from diffusers import IFPipeline

        path, local_only = resolve_pretrained(
            cfg.pretrained_model_name_or_path, f"DeepFloyd IF pipeline ({cfg.pretrained_model_name_or_path})"
        )
        kwargs: Dict[str, Any] = dict(local_files_only=local_only, **_dtype_kwarg(self.weights_dtype))
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

        if cfg.enable_memory_efficient_attention:
            threestudio.info("PyTorch 2 uses memory efficient attention by default.")
        if cfg.enable_sequential_cpu_offload:
            if not on_cuda:
                raise NotImplementedError("enable_sequential_cpu_offload=true needs CUDA (and accelerate)")
            self.pipe.enable_sequential_cpu_offload()
        if cfg.enable_attention_slicing:
            self.pipe.enable_attention_slicing(1)
        if cfg.enable_channels_last_format:
            self.pipe.unet.to(memory_format=torch.channels_last)
        cleanup()

        self.unet = self.pipe.unet.eval()
        for p in self.unet.parameters():
            p.requires_grad_(False)
        if int(self.unet.config.in_channels) != 3:
            raise ValueError(
                f"deep-floyd-guidance needs a pixel-space stage-I UNet with 3 input channels; "
                f"{cfg.pretrained_model_name_or_path} has {self.unet.config.in_channels}"
            )

        self.scheduler = self.pipe.scheduler
        self.num_train_timesteps = self.scheduler.config.num_train_timesteps
        self.set_min_max_steps()  # defaults until the first update_step
        self.alphas: Float[Tensor, "T"] = self.scheduler.alphas_cumprod.to(self.device)
        self.grad_clip_val: Optional[float] = None
        # native resolution: 64 for IF-I (threestudio hard-codes 64)
        self.resolution = int(self.unet.config.sample_size)

        self.predictor = UNetNoisePredictor.from_guidance(self)  # pixel mode: no vae
        self.sds = SDS(
            {
                "guidance_scale": cfg.guidance_scale,
                "min_step_percent": cfg.min_step_percent,
                "max_step_percent": cfg.max_step_percent,
                "weighting_strategy": cfg.weighting_strategy,
                "grad_clip": cfg.grad_clip,
            },
            num_train_timesteps=self.num_train_timesteps,
        )
        threestudio.info("Loaded Deep Floyd!")

    # ------------------------------------------------------------------ threestudio helpers
    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        """The timestep range ``[int(T·min), int(T·max)]`` SDS samples from."""
        self.min_step = int(self.num_train_timesteps * min_step_percent)
        self.max_step = int(self.num_train_timesteps * max_step_percent)

    def forward_unet(
        self, latents: Float[Tensor, "..."], t: Tensor, encoder_hidden_states: Float[Tensor, "..."]
    ) -> Float[Tensor, "B 6 h w"]:
        """``unet(x, t, text)`` in the weights' dtype, returned in the input's dtype (6 channels
        for IF: ε and the variance interpolation)."""
        input_dtype = latents.dtype
        return self.unet(
            latents.to(self.weights_dtype),
            t.to(self.weights_dtype),
            encoder_hidden_states=encoder_hidden_states.to(self.weights_dtype),
        ).sample.to(input_dtype)

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
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
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
            raise ValueError(f"rgb_as_latents=True: there is no latent space in {type(self).__name__} (IF is pixel space)")
        if getattr(prompt_utils, "use_perp_neg", False):
            raise NotImplementedError("Perp-Neg prompts are not supported by the built-in runtime")
        batch_size = rgb.shape[0]
        latents = self.encode_images(rgb.permute(0, 3, 1, 2))

        # t ~ U{min_step, ..., max_step} from this object's range (subclasses and update_step set it)
        t = torch.randint(self.min_step, self.max_step + 1, [batch_size], dtype=torch.long, device=self.device)
        text_embeddings = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
        )
        cond, uncond = text_embeddings.chunk(2)  # threestudio's order: [cond, uncond]
        self.sds.grad_clip_val = self.grad_clip_val
        # DreamFusion eq. 3 with the target trick, see ddpo3d.objectives.sds
        out = self.sds(latents, self.predictor, cond, uncond, t=t)
        guidance_out: Dict[str, Any] = {
            "loss_sds": out.loss_sds,
            "grad_norm": out.grad.norm(),
            "min_step": self.min_step,
            "max_step": self.max_step,
        }
        if guidance_eval:
            eval_out = self.guidance_eval(out.t, text_embeddings, out.x_t, out.eps_pred)
            eval_out["texts"] = [
                f"n{n:.02f}\ne{e.item():.01f}\na{a.item():.01f}\nc{c.item():.02f}"
                for n, e, a, c in zip(eval_out["noise_levels"], elevation, azimuth, camera_distances)
            ]
            guidance_out["eval"] = eval_out
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
        t_orig: Int[Tensor, "B"],
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
        self.scheduler.set_timesteps(50)
        timesteps = self.scheduler.timesteps.to(self.device)
        n = latents_noisy.shape[0]
        bs = min(self.cfg.max_items_eval, n) if self.cfg.max_items_eval > 0 else n
        # the first of the 50 timesteps not larger than t
        large_enough = timesteps.expand([bs, -1]) > t_orig[:bs].unsqueeze(-1)
        idxs = torch.min(large_enough, dim=1)[1]
        t = timesteps[idxs]
        fracs = list((t / self.scheduler.config.num_train_timesteps).cpu().numpy())

        def to_img(x: Tensor) -> Tensor:
            return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

        variance = self.get_noise_pred(latents_noisy, t_orig, text_embeddings)[:, 3:]
        noise_pred = torch.cat([noise_pred, variance], dim=1)
        latents_1step, pred_1orig = [], []
        for b in range(bs):
            step = self.scheduler.step(noise_pred[b : b + 1], t[b], latents_noisy[b : b + 1])
            latents_1step.append(step["prev_sample"])
            pred_1orig.append(step["pred_original_sample"])
        latents_1step = torch.cat(latents_1step)
        pred_1orig = torch.cat(pred_1orig)
        latents_final = []
        for b, i in enumerate(idxs):
            latents = latents_1step[b : b + 1]
            text_emb = text_embeddings[[b, b + n], ...]
            for tt in self.scheduler.timesteps[i + 1 :]:
                latents = self.scheduler.step(self.get_noise_pred(latents, tt, text_emb), tt, latents)["prev_sample"]
            latents_final.append(latents)
        return {
            "bs": bs,
            "noise_levels": fracs,
            "imgs_noisy": to_img(latents_noisy[:bs]),
            "imgs_1step": to_img(latents_1step),
            "imgs_1orig": to_img(pred_1orig),
            "imgs_final": to_img(torch.cat(latents_final)),
        }

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        # grad clipping (Hong et al. 2023, "Debiasing Scores and Prompts of 2D Diffusion",
        # arXiv 2303.15413)
        if self.cfg.grad_clip is not None:
            self.grad_clip_val = C(self.cfg.grad_clip, epoch, global_step)
        self.set_min_max_steps(
            min_step_percent=C(self.cfg.min_step_percent, epoch, global_step),
            max_step_percent=C(self.cfg.max_step_percent, epoch, global_step),
        )
