"""An analytic noise predictor: the exact E[ε | x_t] of a Gaussian-mixture data distribution.

Data model, per batch item b: ``x_0 ~ (1/K) Σ_k N(μ_{b,k}, σ_d² I)`` in pixel space
(``x_0 = 2·image - 1``, the DeepFloyd layout), with the component means passed as the
condition ``cond: Float[B, K, C, h, w]``. Under the VP forward process
``x_t = a x_0 + b ε`` with ``a = sqrt(ᾱ_t)``, ``b = sqrt(1-ᾱ_t)`` the marginal is again a mixture,

    p_t(x) = (1/K) Σ_k N(x; a μ_k, v I),   v = a² σ_d² + b²,

so its score is ``∇ log p_t(x) = Σ_k r_k(x) (a μ_k - x) / v`` with responsibilities
``r_k ∝ exp(-||x - a μ_k||² / 2v)``, and by Tweedie's formula (Efron 2011; the ε-form used by
DDPM, Ho et al. 2020 eq. 11 / Song et al. 2021 arXiv 2011.13456 eq. 6)

    E[ε | x_t] = -b ∇ log p_t(x_t) = b (x_t - a Σ_k r_k μ_k) / v.

This is exactly what a perfectly trained ε-prediction network outputs, so every estimator that
uses this predictor can be checked against closed forms. ``uncond`` is another mixture (e.g.
the union of all conditions' components), which makes classifier-free guidance meaningful.
"""

from __future__ import annotations

import math

import torch

from ddpo3d.diffusion.base import NoisePredictor
from ddpo3d.diffusion.schedule import gather_alphas, make_alphas_cumprod
from ddpo3d.utils.typing import Float, Int, Optional, Tensor, Tuple


class AnalyticGaussianPrior(NoisePredictor):
    """Exact ε̂ for an equal-weight isotropic Gaussian mixture per batch item.

    Args:
        sigma_data: σ_d, the std of every mixture component (in x_0 units, x_0 = 2·image - 1).
        alphas_cumprod: ᾱ schedule [T]; default Stable Diffusion's scaled_linear betas
            0.00085 .. 0.012 over ``num_train_timesteps``.
        num_train_timesteps: T for the default schedule.
        beta_start, beta_end, beta_schedule: the default schedule's parameters.
        clamp_decode: clamp decoded images to [0, 1] (the model itself is unbounded; tests of
            linear rewards turn this off so that the decode stays affine).
        final_alpha_cumprod: ᾱ for t < 0 (default ᾱ_0, as Stable Diffusion's DDIM config).

    ``encode(images) = 2·images - 1`` as ``[B, 3, H, W]``; ``decode`` is its inverse.
    """

    def __init__(
        self,
        sigma_data: float = 0.1,
        alphas_cumprod: Optional[Float[Tensor, " T"]] = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        clamp_decode: bool = True,
        final_alpha_cumprod: Optional[float] = None,
    ):
        if alphas_cumprod is None:
            alphas_cumprod = make_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule)
        super().__init__(alphas_cumprod, final_alpha_cumprod)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)
        self.clamp_decode = bool(clamp_decode)

    # ------------------------------------------------------------------ layout
    def encode(self, images: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 3 H W"]:
        """x_0 = 2·image - 1, channels first (differentiable)."""
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode expects images [B, H, W, 3], got {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2) * 2.0 - 1.0

    def decode(self, x0: Float[Tensor, "B 3 h w"]) -> Float[Tensor, "B h w 3"]:
        """image = (x_0 + 1) / 2, channels last; clamped to [0, 1] if ``clamp_decode``."""
        if x0.dim() != 4 or x0.shape[1] != 3:
            raise ValueError(f"decode expects x0 [B, 3, h, w], got {tuple(x0.shape)}")
        images = ((x0 + 1.0) * 0.5).permute(0, 2, 3, 1)
        return images.clamp(0.0, 1.0) if self.clamp_decode else images

    # ------------------------------------------------------------------ closed forms
    def _means(self, means: Tensor, x_t: Tensor) -> Tensor:
        if not torch.is_tensor(means) or means.dim() != 5:
            raise ValueError(
                "AnalyticGaussianPrior expects cond/uncond as component means Float[B, K, C, h, w], "
                f"got {type(means).__name__} with shape {tuple(getattr(means, 'shape', ()))}"
            )
        if means.shape[2:] != x_t.shape[1:] or means.shape[0] not in (1, x_t.shape[0]):
            raise ValueError(
                f"component means {tuple(means.shape)} do not match x_t {tuple(x_t.shape)} (need [B or 1, K, C, h, w])"
            )
        return means.to(dtype=x_t.dtype, device=x_t.device)

    def _moments(self, x_t: Tensor, t: Int[Tensor, " B"]) -> Tuple[Tensor, Tensor, Tensor]:
        ab = gather_alphas(self.alphas_cumprod, t, self.final_alpha_cumprod, ndim=x_t.dim()).to(x_t.dtype)
        if ab.dim() == 0:
            ab = ab.expand(x_t.shape[0]).view(-1, *([1] * (x_t.dim() - 1)))
        a = ab.sqrt()
        var = ab * self.sigma_data**2 + (1.0 - ab)
        return ab, a, var

    def responsibilities(
        self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, " B"], means: Float[Tensor, "B K C h w"]
    ) -> Float[Tensor, "B K"]:
        """Posterior component weights r_k(x_t) ∝ exp(-||x_t - a μ_k||² / 2v)."""
        means = self._means(means, x_t)
        _, a, var = self._moments(x_t, t)
        diff = x_t.unsqueeze(1) - a.unsqueeze(1) * means  # [B, K, C, h, w]
        logits = -(diff**2).flatten(2).sum(-1) / (2.0 * var.flatten())[:, None]
        return torch.softmax(logits, dim=1)

    def score(
        self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, " B"], means: Float[Tensor, "B K C h w"]
    ) -> Float[Tensor, "B C h w"]:
        """∇_x log p_t(x_t) = Σ_k r_k (a μ_k - x_t) / v (exact)."""
        means = self._means(means, x_t)
        _, a, var = self._moments(x_t, t)
        r = self.responsibilities(x_t, t, means)
        mean_mix = (r[:, :, None, None, None] * means).sum(1)
        return (a * mean_mix - x_t) / var

    def log_density(
        self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, " B"], means: Float[Tensor, "B K C h w"]
    ) -> Float[Tensor, " B"]:
        """log p_t(x_t) of the noised mixture (exact, normalised)."""
        means = self._means(means, x_t)
        _, a, var = self._moments(x_t, t)
        dim = x_t[0].numel()
        diff = x_t.unsqueeze(1) - a.unsqueeze(1) * means
        sq = (diff**2).flatten(2).sum(-1)  # [B, K]
        v = var.flatten()
        return (
            torch.logsumexp(-sq / (2.0 * v[:, None]), dim=1)
            - math.log(means.shape[1])
            - 0.5 * dim * torch.log(2.0 * math.pi * v)
        )

    def eps_exact(
        self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, " B"], means: Float[Tensor, "B K C h w"]
    ) -> Float[Tensor, "B C h w"]:
        """E[ε | x_t] = -sqrt(1-ᾱ_t) ∇ log p_t(x_t) (Tweedie)."""
        ab, _, _ = self._moments(x_t, t)
        return -(1.0 - ab).sqrt() * self.score(x_t, t, means)

    def predict_eps_pair(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        cond: Float[Tensor, "B K C h w"],
        uncond: Optional[Float[Tensor, "B K2 C h w"]] = None,
    ) -> Tuple[Float[Tensor, "B C h w"], Optional[Float[Tensor, "B C h w"]]]:
        """Exact conditional and unconditional ε̂ (differentiable w.r.t. ``x_t``)."""
        eps_c = self.eps_exact(x_t, t, cond)
        eps_u = None if uncond is None else self.eps_exact(x_t, t, uncond)
        return eps_c, eps_u
