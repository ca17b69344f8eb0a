"""Variance-preserving (VP) noise schedules and the forward process.

Notation (DDPM, Ho et al. 2020, arXiv 2006.11239, eq. 4; DDIM, Song et al. 2020,
arXiv 2010.02502, eq. 4): with ``ᾱ_t = prod_{s<=t} (1 - β_s)`` the forward process is

    x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε,   ε ~ N(0, I).

Timesteps are integer indices ``0 .. T-1`` into ``alphas_cumprod`` (diffusers' convention).
"""

from __future__ import annotations

import torch

from ddpo3d.utils.typing import Float, Int, Tensor, Union


def make_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
) -> Float[Tensor, " T"]:
    """ᾱ_t of a beta schedule, as diffusers builds it.

    Args:
        num_train_timesteps: number of training timesteps T.
        beta_start: β_0.
        beta_end: β_{T-1}.
        beta_schedule: ``"scaled_linear"`` (Stable Diffusion: betas linear in sqrt(β)) or
            ``"linear"`` (DDPM).

    Returns:
        ``alphas_cumprod`` of shape [T], float32.
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"Unknown beta_schedule {beta_schedule!r}: use 'scaled_linear' or 'linear'")
    return torch.cumprod(1.0 - betas, dim=0).float()


def gather_alphas(
    alphas_cumprod: Float[Tensor, " T"],
    t: Union[int, Int[Tensor, " B"]],
    final_alpha_cumprod: float = 1.0,
    ndim: int = 4,
) -> Float[Tensor, "..."]:
    """ᾱ at integer timesteps, broadcastable against a ``[B, C, h, w]`` tensor.

    Negative timesteps mean "past the last step" and get ``final_alpha_cumprod`` (diffusers'
    ``DDIMScheduler.final_alpha_cumprod``: 1.0 with ``set_alpha_to_one``, else ᾱ_0).

    Args:
        alphas_cumprod: the schedule [T].
        t: an int or integer tensor [B].
        final_alpha_cumprod: value used for t < 0.
        ndim: number of dims of the tensors this will multiply.

    Returns:
        ᾱ_t with shape [B, 1, ..., 1] (or a 0-dim tensor for an int ``t``).
    """
    if not torch.is_tensor(t):
        t = torch.tensor(int(t), device=alphas_cumprod.device)
    t = t.to(alphas_cumprod.device).long()
    if (t >= alphas_cumprod.shape[0]).any():
        raise ValueError(f"timestep {int(t.max())} out of range for a schedule of {alphas_cumprod.shape[0]} steps")
    ab = alphas_cumprod[t.clamp(min=0)]
    ab = torch.where(t < 0, torch.full_like(ab, final_alpha_cumprod), ab)
    if ab.dim() == 0:
        return ab
    return ab.view(-1, *([1] * (ndim - 1)))


def add_noise(
    alphas_cumprod: Float[Tensor, " T"],
    x0: Float[Tensor, "B C h w"],
    noise: Float[Tensor, "B C h w"],
    t: Int[Tensor, " B"],
) -> Float[Tensor, "B C h w"]:
    """The VP forward process x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (DDPM eq. 4).

    Differentiable w.r.t. ``x0`` and ``noise``.
    """
    ab = gather_alphas(alphas_cumprod, t, ndim=x0.dim()).to(x0.dtype)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
