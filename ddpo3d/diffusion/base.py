"""The noise-predictor protocol every objective talks to.

A noise predictor is "ε̂(x_t, t | condition)" plus the ᾱ schedule it was trained with and the
map between images (``[B, H, W, 3]`` in [0, 1]) and its input space ``x_0`` (``[B, C, h, w]``):
Stable Diffusion latents, DeepFloyd pixels, or the analytic prior's pixels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpo3d.diffusion.schedule import add_noise
from ddpo3d.utils.typing import Any, Float, Int, Optional, Tensor, Tuple


def cfg_combine(
    eps_cond: Float[Tensor, "B C h w"],
    eps_uncond: Optional[Float[Tensor, "B C h w"]],
    guidance_scale: float,
) -> Float[Tensor, "B C h w"]:
    """Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598, eq. 6) in threestudio's form.

    threestudio writes ``eps = eps_c + s * (eps_c - eps_u)``, i.e. Ho & Salimans' ``w = s``
    (diffusers' ``guidance_scale`` would be ``s + 1``). ``eps_uncond=None`` means no guidance.

    Args:
        eps_cond: conditional prediction.
        eps_uncond: unconditional prediction, or None.
        guidance_scale: ``s``.

    Returns:
        The guided ε̂.
    """
    if eps_uncond is None:
        return eps_cond
    return eps_cond + guidance_scale * (eps_cond - eps_uncond)


def v_to_eps(
    v: Float[Tensor, "B C h w"], x_t: Float[Tensor, "B C h w"], alpha_prod_t: Float[Tensor, "B 1 1 1"]
) -> Float[Tensor, "B C h w"]:
    """Convert a v-prediction to ε (Salimans & Ho 2022, arXiv 2202.00512, appendix D).

    With ``v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0`` and ``x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε``:
    ``ε = sqrt(ᾱ) v + sqrt(1-ᾱ) x_t``.
    """
    return alpha_prod_t.sqrt() * v + (1.0 - alpha_prod_t).sqrt() * x_t


class NoisePredictor(nn.Module):
    """Base class: ε̂ with classifier-free guidance, its ᾱ schedule, encode / decode.

    Subclasses implement :meth:`encode`, :meth:`decode` and :meth:`predict_eps_pair`.

    Attributes:
        alphas_cumprod: ``Float[T]`` buffer, ᾱ_t on the predictor's device.
        final_alpha_cumprod: ᾱ used for timesteps < 0 (a step "past" t = 0).
    """

    alphas_cumprod: Tensor

    def __init__(self, alphas_cumprod: Float[Tensor, " T"], final_alpha_cumprod: Optional[float] = None):
        super().__init__()
        alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().float()
        if alphas_cumprod.dim() != 1 or alphas_cumprod.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D tensor [T], got shape {tuple(alphas_cumprod.shape)}")
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)
        self.final_alpha_cumprod = float(alphas_cumprod[0] if final_alpha_cumprod is None else final_alpha_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        """Number of training timesteps T."""
        return int(self.alphas_cumprod.shape[0])

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def add_noise(
        self, x0: Float[Tensor, "B C h w"], noise: Float[Tensor, "B C h w"], t: Int[Tensor, " B"]
    ) -> Float[Tensor, "B C h w"]:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε (differentiable)."""
        return add_noise(self.alphas_cumprod, x0, noise, t)

    def encode(self, images: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] to the model's x_0 (differentiable)."""
        raise NotImplementedError

    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B H W 3"]:
        """The model's x_0 to images in [0, 1]."""
        raise NotImplementedError

    @property
    def pixels_per_unit(self) -> int:
        """Image pixels per x_0 element along a side (8 for Stable Diffusion latents, 1 in pixel space)."""
        return 1

    def decode_at(self, x0: Float[Tensor, "B C h w"], size: Optional[int] = None) -> Float[Tensor, "B S S 3"]:
        """Decode to about ``size``² pixels by resizing x_0 first (bilinear, antialiased), so a
        latent decoder runs at the target size instead of the full one (e.g. 28² latents -> 224²
        images for a CLIP-sized reward: (28/64)² ≈ 0.19 of the decoder's cost at 512²).
        ``size=None`` is :meth:`decode`. In pixel space this is exactly resizing the decoded image.
        """
        if size is None:
            return self.decode(x0)
        side = max(1, int(round(size / self.pixels_per_unit)))
        if tuple(x0.shape[-2:]) != (side, side):
            x0 = F.interpolate(x0, (side, side), mode="bilinear", antialias=True, align_corners=False)
        return self.decode(x0)

    def predict_eps_pair(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        cond: Any,
        uncond: Any = None,
    ) -> Tuple[Float[Tensor, "B C h w"], Optional[Float[Tensor, "B C h w"]]]:
        """Conditional and unconditional ε̂ from one (batched) model evaluation.

        Returns:
            ``(eps_cond, eps_uncond)``; ``eps_uncond`` is None when ``uncond`` is None.
        """
        raise NotImplementedError

    def predict_eps(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        cond: Any,
        uncond: Any = None,
        guidance_scale: float = 0.0,
    ) -> Float[Tensor, "B C h w"]:
        """Guided ε̂ = eps_c + s (eps_c - eps_u) (threestudio's CFG); ``uncond=None``: no CFG.

        Args:
            x_t: noisy input.
            t: integer timesteps [B].
            cond: condition (text embeddings [B, L, D] for a UNet; component means for the
                analytic prior).
            uncond: unconditional condition or None.
            guidance_scale: ``s``.

        Returns:
            ε̂, same shape as ``x_t``; differentiable w.r.t. ``x_t`` unless called under no_grad.
        """
        eps_c, eps_u = self.predict_eps_pair(x_t, t, cond, uncond)
        return cfg_combine(eps_c, eps_u, guidance_scale)
