"""SDS as threestudio-mvdream computes it: one t per batch, and the x0-reconstruction loss.

MVDream (Shi et al. 2023, arXiv 2308.16512, Sec. 3.2 and appendix) replaces the SDS target by an
x0 reconstruction: with the guided ε̂ and ``x̂0 = (x_t - sqrt(1-ᾱ) ε̂) / sqrt(ᾱ)``,

    loss = 0.5 / B · Σ ||x0 - stopgrad(x̂0')||²,   ∂loss/∂x0 = (x0 - x̂0') / B,

where ``x̂0'`` blends x̂0 with x̂0 rescaled to the per-object std of the text-only estimate
(``recon_std_rescale`` r: ``x̂0' = r · x̂0 · std(x̂0_text)/std(x̂0) + (1 - r) · x̂0``; std over the
``n_view`` views of an object). Without rescale this is SDS with ``w(t) = sqrt((1-ᾱ)/ᾱ)``.
``recon_loss: false`` is plain SDS with ``w(t) = 1 - ᾱ``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpo3d.diffusion.base import NoisePredictor
from ddpo3d.objectives.dreamfl import predict_x0, rescale_x0
from ddpo3d.objectives.sds import SDS, SDSOutput, sample_noise
from ddpo3d.utils.typing import Any, Float, Int, Optional, Tensor

__all__ = ["MVDreamSDS"]


class MVDreamSDS(SDS):
    """threestudio-mvdream's loss_sds; :class:`SDS` otherwise (schedules, grad clip, t range).

    Args:
        cfg: :class:`~ddpo3d.objectives.sds.SDSConfig` keys.
        recon_loss: the x0-reconstruction loss (MVDream's default) instead of SDS.
        recon_std_rescale: r above.
        n_view: views per object.
    """

    def __init__(self, cfg: Any = None, recon_loss: bool = True, recon_std_rescale: float = 0.5, n_view: int = 4):
        super().__init__(cfg)
        self.recon_loss = bool(recon_loss)
        self.recon_std_rescale = float(recon_std_rescale)
        self.n_view = int(n_view)

    def sample_timesteps(
        self, batch_size: int, device: Any = None, generator: Optional[torch.Generator] = None
    ) -> Int[Tensor, " B"]:
        """One t ~ U{min_step, ..., max_step} for the whole batch (drawn as threestudio-mvdream draws it)."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(
            self.min_step, self.max_step + 1, [1], generator=generator, device=gen_device, dtype=torch.long
        )
        t = t.to(device) if device is not None else t
        return t.repeat(batch_size)

    def __call__(
        self,
        x0: Float[Tensor, "B C h w"],
        predictor: NoisePredictor,
        cond: Any,
        uncond: Any = None,
        t: Optional[Int[Tensor, " B"]] = None,
        noise: Optional[Float[Tensor, "B C h w"]] = None,
        eps_pred: Optional[Float[Tensor, "B C h w"]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> SDSOutput:
        if not self.recon_loss:
            return super().__call__(x0, predictor, cond, uncond, t, noise, eps_pred, generator)
        self.num_train_timesteps = predictor.num_train_timesteps
        B = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(B, x0.device, generator)
        if noise is None:
            noise = sample_noise(x0, generator)
        x_t = predictor.add_noise(x0.detach(), noise, t)
        if eps_pred is None:
            with torch.no_grad():
                eps_pred = predictor.predict_eps(x_t, t, cond, uncond, self.cfg.guidance_scale)
        eps_pred = eps_pred.detach().to(x0.dtype)
        with torch.no_grad():
            x0_hat = predict_x0(x_t, eps_pred, predictor.alphas_cumprod, t)
            if self.recon_std_rescale > 0:
                pair = getattr(predictor, "last_pair", None)
                eps_text = eps_pred if pair is None else pair[0].to(x0.dtype)
                x0_text = predict_x0(x_t, eps_text, predictor.alphas_cumprod, t)
                x0_hat = rescale_x0(x0_hat, x0_text, self.recon_std_rescale, self.n_view)
        loss = 0.5 * F.mse_loss(x0, x0_hat.detach(), reduction="sum") / B
        grad = (x0.detach() - x0_hat).detach()
        return SDSOutput(
            loss_sds=loss,
            grad=grad,
            t=t,
            noise=noise,
            x_t=x_t.detach(),
            eps_pred=eps_pred,
            w=torch.ones(B, 1, 1, 1, device=x0.device, dtype=x0.dtype),
            grad_norm=float(grad.flatten(1).norm(dim=1).mean()),
            min_step=self.min_step,
            max_step=self.max_step,
        )
