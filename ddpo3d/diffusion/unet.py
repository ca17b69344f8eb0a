"""Adapter from a diffusers ``UNet2DConditionModel`` (+ optional ``AutoencoderKL``) to the protocol.

Two modes:

* latent (Stable Diffusion): ``x_0 = vae.encode(2·image - 1).latent_dist.sample() · s`` with
  ``s = vae.config.scaling_factor`` (0.18215 for SD 1.x), as threestudio's
  ``StableDiffusionGuidance.encode_images``; ``decode`` is ``vae.decode(x_0 / s)`` mapped back to
  [0, 1] and clamped.
* pixel (DeepFloyd IF): no VAE, ``x_0 = 2·image - 1``. IF's UNet predicts 6 channels (ε and the
  learned-variance interpolation of Nichol & Dhariwal 2021); the first ``C`` channels are ε.

``prediction_type="v_prediction"`` outputs are converted to ε with
``ε = sqrt(ᾱ) v + sqrt(1-ᾱ) x_t`` (Salimans & Ho 2022, arXiv 2202.00512).

The wrapped modules are held by reference and NOT registered as submodules, so a
threestudio guidance that wraps its own ``self.unet`` / ``self.vae`` does not get their weights
copied into checkpoints (threestudio keeps them out of ``state_dict`` on purpose).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpo3d.diffusion.base import NoisePredictor, v_to_eps
from ddpo3d.diffusion.schedule import gather_alphas
from ddpo3d.utils.typing import Any, Float, Int, Optional, Tensor, Tuple


class _Held:
    """Plain holder so nn.Module does not register the wrapped models."""

    def __init__(self, unet: Any, vae: Any):
        self.unet = unet
        self.vae = vae


class UNetNoisePredictor(NoisePredictor):
    """ε̂ from a diffusers UNet, in latent (with ``vae``) or pixel space (``vae=None``).

    Args:
        unet: a ``UNet2DConditionModel`` (already loaded, any dtype/device).
        vae: an ``AutoencoderKL`` for latent mode, or None for pixel mode.
        alphas_cumprod: ᾱ schedule [T] (e.g. ``scheduler.alphas_cumprod``).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        weights_dtype: dtype the UNet / VAE run in (inputs are cast to it, outputs back to float32).
        resolution: if set, images are bilinearly resized to ``resolution``² before encoding
            (512 for SD, 64 for IF, as threestudio's guidances do).
        vae_scaling_factor: latent scale; default ``vae.config.scaling_factor`` or 0.18215.
        final_alpha_cumprod: ᾱ for t < 0 (default ᾱ_0: SD's ``set_alpha_to_one=False``).
        sample_latents: draw from the VAE posterior (threestudio) instead of taking its mean.
    """

    def __init__(
        self,
        unet: Any,
        vae: Any = None,
        alphas_cumprod: Optional[Float[Tensor, " T"]] = None,
        prediction_type: str = "epsilon",
        weights_dtype: torch.dtype = torch.float32,
        resolution: Optional[int] = None,
        vae_scaling_factor: Optional[float] = None,
        final_alpha_cumprod: Optional[float] = None,
        sample_latents: bool = True,
    ):
        if alphas_cumprod is None:
            raise ValueError("UNetNoisePredictor needs alphas_cumprod (e.g. scheduler.alphas_cumprod)")
        super().__init__(alphas_cumprod, final_alpha_cumprod)
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r} is not supported: use 'epsilon' or 'v_prediction'")
        self._held = _Held(unet, vae)
        self.prediction_type = prediction_type
        self.weights_dtype = weights_dtype
        self.resolution = resolution
        if vae is not None and vae_scaling_factor is None:
            vae_scaling_factor = float(getattr(getattr(vae, "config", None), "scaling_factor", 0.18215))
        self.vae_scaling_factor = vae_scaling_factor
        self.sample_latents = sample_latents
        self.to(next(unet.parameters()).device)

    @property
    def unet(self) -> Any:
        return self._held.unet

    @property
    def vae(self) -> Any:
        return self._held.vae

    @property
    def latent_mode(self) -> bool:
        return self.vae is not None

    @property
    def pixels_per_unit(self) -> int:
        """The VAE's downsampling factor (2^(levels-1)) in latent mode, 1 in pixel mode."""
        if not self.latent_mode:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_guidance(cls, guidance: Any, **kwargs: Any) -> "UNetNoisePredictor":
        """Wrap a threestudio ``StableDiffusionGuidance`` / ``DeepFloydGuidance`` without reloading.

        Reads ``guidance.unet``, ``guidance.vae`` (absent for DeepFloyd), ``guidance.alphas``,
        ``guidance.scheduler.config.prediction_type`` and ``guidance.weights_dtype``.
        """
        scheduler = getattr(guidance, "scheduler", None)
        prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")
        final = getattr(scheduler, "final_alpha_cumprod", None)
        kw = dict(
            unet=guidance.unet,
            vae=getattr(guidance, "vae", None),
            alphas_cumprod=guidance.alphas,
            prediction_type=prediction_type,
            weights_dtype=getattr(guidance, "weights_dtype", torch.float32),
            final_alpha_cumprod=None if final is None else float(final),
        )
        kw.update(kwargs)
        return cls(**kw)

    # ------------------------------------------------------------------ layout
    def encode(self, images: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] -> x_0 (latents or pixels in [-1, 1]); differentiable."""
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode expects images [B, H, W, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2)
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        if not self.latent_mode:
            return x
        posterior = self.vae.encode(x.to(self.weights_dtype)).latent_dist
        latents = posterior.sample() if self.sample_latents else posterior.mean
        return latents.float() * self.vae_scaling_factor

    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B H W 3"]:
        """x_0 -> images in [0, 1] (clamped)."""
        if self.latent_mode:
            x = self.vae.decode((x0 / self.vae_scaling_factor).to(self.weights_dtype)).sample.float()
        else:
            x = x0
        return ((x + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ ε
    def _forward(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        out = self.unet(x_t.to(self.weights_dtype), t, encoder_hidden_states=emb.to(self.weights_dtype))
        out = getattr(out, "sample", out).float()
        if out.shape[1] != x_t.shape[1]:
            # DeepFloyd IF: [ε, variance interpolation] concatenated on channels.
            out = out[:, : x_t.shape[1]]
        return out

    def predict_eps_pair(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        cond: Float[Tensor, "B L D"],
        uncond: Optional[Float[Tensor, "B L D"]] = None,
    ) -> Tuple[Float[Tensor, "B C h w"], Optional[Float[Tensor, "B C h w"]]]:
        """One UNet call on ``[x_t, x_t]`` with ``[cond, uncond]`` embeddings (threestudio's order)."""
        t = torch.as_tensor(t, device=x_t.device).long()
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        if uncond is None:
            out = self._forward(x_t, t, cond)
            x_in, t_in = x_t, t
        else:
            x_in, t_in = torch.cat([x_t, x_t], 0), torch.cat([t, t], 0)
            out = self._forward(x_in, t_in, torch.cat([cond, uncond], 0))
        if self.prediction_type == "v_prediction":
            ab = gather_alphas(self.alphas_cumprod, t_in, self.final_alpha_cumprod, ndim=x_in.dim())
            out = v_to_eps(out, x_in.float(), ab)
        if uncond is None:
            return out, None
        eps_c, eps_u = out.chunk(2, dim=0)
        return eps_c, eps_u
