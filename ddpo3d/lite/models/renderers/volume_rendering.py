"""Stateless volume-rendering functions in pure PyTorch (what nerfacc does on CUDA).

Samples are dense ``[Nr, Ns]`` per ray (every ray has the same number of samples), so the
"packed" tensors threestudio's systems read (``weights``, ``t_dirs``, ``normal`` ... of
shape ``[Nr * Ns, C]`` with ``ray_indices``) are plain reshapes of these.
"""

from __future__ import annotations

import torch

from ddpo3d.utils.typing import Float, Optional, Tensor, Tuple


def ray_aabb_intersect(
    rays_o: Float[Tensor, "Nr 3"], rays_d: Float[Tensor, "Nr 3"], aabb: Float[Tensor, "2 3"]
) -> Tuple[Float[Tensor, " Nr"], Float[Tensor, " Nr"]]:
    """Entry and exit distances of rays through an axis-aligned box (slab method,
    Kay & Kajiya 1986). A miss gives ``t_near > t_far``.

    Returns:
        ``(t_near, t_far)``.
    """
    d = torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    inv = 1.0 / d
    t0 = (aabb[0] - rays_o) * inv
    t1 = (aabb[1] - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


def ray_segments(
    rays_o: Float[Tensor, "Nr 3"],
    rays_d: Float[Tensor, "Nr 3"],
    aabb: Float[Tensor, "2 3"],
    near_plane: float = 0.0,
    far_plane: float = 1e10,
) -> Tuple[Float[Tensor, " Nr"], Float[Tensor, " Nr"]]:
    """The part ``[near, far]`` of each ray inside the box and the near/far planes;
    rays that miss get ``near == far`` (a zero-length segment: no contribution)."""
    t_near, t_far = ray_aabb_intersect(rays_o, rays_d, aabb)
    near = t_near.clamp(min=near_plane)
    far = t_far.clamp(max=far_plane)
    far = torch.maximum(far, near)
    return near, far


def stratified_samples(
    near: Float[Tensor, " Nr"], far: Float[Tensor, " Nr"], n_samples: int, randomized: bool
) -> Tuple[Float[Tensor, "Nr Ns"], Float[Tensor, "Nr Ns"], Float[Tensor, "Nr Ns"]]:
    """Split ``[near, far]`` into ``n_samples`` equal bins and place one sample per bin,
    uniformly at random inside it when ``randomized`` (NeRF's stratified sampling,
    Mildenhall et al. 2020, Eq. 2), else at its centre.

    Returns:
        ``(t_starts, t_ends, t_positions)`` of the bins and samples.
    """
    steps = torch.arange(n_samples + 1, dtype=near.dtype, device=near.device) / n_samples
    edges = near[:, None] + (far - near)[:, None] * steps  # [Nr, Ns + 1]
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    u = torch.rand_like(t_starts) if randomized else torch.full_like(t_starts, 0.5)
    return t_starts, t_ends, t_starts + (t_ends - t_starts) * u


def render_weights_from_density(
    t_starts: Float[Tensor, "Nr Ns"], t_ends: Float[Tensor, "Nr Ns"], sigmas: Float[Tensor, "Nr Ns"]
) -> Tuple[Float[Tensor, "Nr Ns"], Float[Tensor, "Nr Ns"], Float[Tensor, "Nr Ns"]]:
    """Quadrature of the volume-rendering integral (Max 1995; NeRF Eq. 3):
    ``alpha_i = 1 - exp(-sigma_i delta_i)``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)``,
    ``w_i = T_i alpha_i``.

    Returns:
        ``(weights, transmittance, alphas)``.
    """
    tau = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-tau)
    # exclusive cumulative sum: optical depth accumulated before sample i
    depth_before = torch.cumsum(tau, dim=-1) - tau
    trans = torch.exp(-depth_before)
    return trans * alphas, trans, alphas


def sample_pdf(
    bins: Float[Tensor, "Nr Nb1"], weights: Float[Tensor, "Nr Nb"], n_samples: int, randomized: bool, eps: float = 1e-5
) -> Float[Tensor, "Nr Ns"]:
    """Inverse-transform sampling of the piecewise-constant PDF given by ``weights`` over the
    bin edges ``bins`` (NeRF's hierarchical sampling, Mildenhall et al. 2020, Sec. 5.2).

    Args:
        bins: ``Nb + 1`` sorted edges per ray.
        weights: ``Nb`` non-negative bin weights (``eps`` is added so flat rays sample uniformly).
        n_samples: number of points.
        randomized: stratified ``u`` (one uniform per stratum) instead of the stratum centres.

    Returns:
        Sorted sample distances ``[Nr, n_samples]`` (no gradient).
    """
    weights = weights.detach() + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [Nr, Nb + 1]
    cdf = cdf / cdf[:, -1:]
    strata = torch.arange(n_samples, dtype=bins.dtype, device=bins.device)
    jitter = torch.rand(bins.shape[0], n_samples, dtype=bins.dtype, device=bins.device) if randomized else 0.5
    u = ((strata + jitter) / n_samples).expand(bins.shape[0], n_samples).contiguous()
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    bin_lo, bin_hi = bins.gather(-1, idx - 1), bins.gather(-1, idx)
    frac = (u - cdf_lo) / (cdf_hi - cdf_lo).clamp(min=1e-12)
    return (bin_lo + frac.clamp(0, 1) * (bin_hi - bin_lo)).detach()


def accumulate(
    weights: Float[Tensor, "Nr Ns"], values: Optional[Float[Tensor, "Nr Ns C"]] = None
) -> Float[Tensor, "Nr C"]:
    """``sum_i w_i v_i`` along each ray (``values=None``: ``sum_i w_i``, the opacity)."""
    if values is None:
        return weights.sum(-1, keepdim=True)
    return (weights[..., None] * values).sum(-2)
