"""A tiny CPU twin of MVDream's model object (seeded, offline) for tests and the built-in runtime.

It has the interface threestudio-mvdream's guidance uses of ``mvdream.model_zoo.build_model(...)``
(an ldm ``LatentDiffusion``): the ᾱ buffers (``alphas_cumprod``, ``sqrt_alphas_cumprod``,
``sqrt_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``, ``sqrt_recipm1_alphas_cumprod``),
``q_sample``, ``predict_start_from_noise``, ``apply_model(x, t, {context, camera, num_frames})``,
``encode_first_stage`` / ``get_first_stage_encoding`` / ``decode_first_stage``. The "UNet" is a few
convolutions conditioned on the mean text embedding, the camera and t, with the views of each
group of ``num_frames`` mixed (MVDream's cross-view attention in miniature). The "VAE" maps 8x8
pixel blocks to 4 latent channels. Select it with ``model_name: ddpo3d-tiny-mvdream``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpo3d.utils.typing import Any, Dict, Float, Optional, Tensor

__all__ = ["TINY_MVDREAM_NAME", "TinyMVDreamModel", "build_tiny_mvdream", "register_tiny_mvdream"]

TINY_MVDREAM_NAME = "ddpo3d-tiny-mvdream"


class _Posterior:
    """Stands in for ldm's ``DiagonalGaussianDistribution`` (deterministic: sample() is the mean)."""

    def __init__(self, mean: Tensor):
        self.mean = mean

    def sample(self) -> Tensor:
        return self.mean

    def mode(self) -> Tensor:
        return self.mean


def _extract(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    return a.gather(-1, t.reshape(-1)).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class TinyMVDreamModel(nn.Module):
    """Tiny MVDream-interface latent diffusion model.

    Args:
        context_dim: text embedding width (the prompt processor's).
        hidden: conv width.
        num_timesteps: T.
        seed: init seed.
    """

    def __init__(self, context_dim: int = 32, hidden: int = 16, num_timesteps: int = 1000, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.enc = nn.Conv2d(3, 4, 1)
            self.dec = nn.Conv2d(4, 3, 1)
            self.inp = nn.Conv2d(4, hidden, 3, padding=1)
            self.ctx = nn.Linear(context_dim, hidden)
            self.cam = nn.Linear(16, hidden)
            self.tim = nn.Linear(16, hidden)
            self.mix = nn.Conv2d(2 * hidden, hidden, 1)
            self.out = nn.Conv2d(hidden, 4, 3, padding=1)
        self.scale_factor = 0.18215
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_timesteps, dtype=torch.float64) ** 2  # ldm "linear"
        ac = torch.cumprod(1.0 - betas, 0)
        for name, value in {
            "betas": betas,
            "alphas_cumprod": ac,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
            "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        }.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.num_timesteps = num_timesteps

    # -- diffusion -------------------------------------------------------------------------------
    def q_sample(self, x_start: Tensor, t: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        noise = torch.randn_like(x_start) if noise is None else noise
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def predict_start_from_noise(self, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * noise
        )

    def apply_model(self, x: Float[Tensor, "B 4 h w"], t: Tensor, cond: Dict[str, Any]) -> Float[Tensor, "B 4 h w"]:
        """ε̂ of ``x`` at ``t`` given ``{"context": [B, L, D], "camera": [B, 16], "num_frames": n}``."""
        B = x.shape[0]
        half = 8
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
        tt = t.reshape(-1).float()[:, None] * freqs[None]
        temb = self.tim(torch.cat([tt.sin(), tt.cos()], -1)).expand(B, -1)
        h = self.inp(x) + (self.ctx(cond["context"].mean(1)) + temb)[:, :, None, None]
        camera = cond.get("camera")
        if camera is not None:
            h = h + self.cam(camera.to(h.dtype))[:, :, None, None]
            n = int(cond.get("num_frames", 1))
            g = h.view(B // n, n, *h.shape[1:]).mean(1, keepdim=True).expand(-1, n, -1, -1, -1).reshape_as(h)
        else:
            g = h
        h = self.mix(torch.cat([F.silu(h), g], 1))
        return self.out(F.silu(h))

    # -- first stage -----------------------------------------------------------------------------
    def encode_first_stage(self, x: Float[Tensor, "B 3 H W"]) -> _Posterior:
        return _Posterior(self.enc(F.avg_pool2d(x, 8)))

    def get_first_stage_encoding(self, posterior: Any) -> Tensor:
        z = posterior.sample() if hasattr(posterior, "sample") else posterior
        return self.scale_factor * z

    def decode_first_stage(self, z: Tensor) -> Tensor:
        return torch.tanh(F.interpolate(self.dec(z / self.scale_factor), scale_factor=8, mode="nearest"))


def build_tiny_mvdream(context_dim: int = 32, seed: int = 0) -> TinyMVDreamModel:
    """The CPU twin (frozen)."""
    model = TinyMVDreamModel(context_dim=context_dim, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def register_tiny_mvdream() -> None:
    """Let ``guidance.model_name: ddpo3d-tiny-mvdream`` build this twin in the lite MVDream guidance."""
    from ddpo3d.lite.models.guidance.mvdream_guidance import register_mvdream_model

    register_mvdream_model(TINY_MVDREAM_NAME, build_tiny_mvdream)
