"""Real spherical harmonics up to degree 3, with 3D Gaussian Splatting's conventions.

Colours of a Gaussian are stored as SH coefficients ``[N, K, 3]`` with ``K = (degree+1)^2``;
the colour seen from direction ``d`` is ``max(0, sum_k c_k Y_k(d) + 0.5)`` (Kerbl et al.
2023, "3D Gaussian Splatting for Real-Time Radiance Field Rendering", Sec. 4 and its
reference code's ``eval_sh``; gsplat uses the same basis and offset). The constants are
the normalisation factors of the real SH basis (Sloan 2008, "Stupid Spherical Harmonics
(SH) Tricks", Appendix A1), with the sign pattern of the 3DGS code so that PLY files
written by either interoperate.
"""

from __future__ import annotations

import math

import torch

from ddpo3d.utils.typing import Float, Optional, Tensor

#: Y_0^0 = 1 / (2 sqrt(pi))
SH_C0 = 0.28209479177387814
#: degree 1: sqrt(3) / (2 sqrt(pi))
SH_C1 = 0.4886025119029199
#: degree 2 factors (xy, yz, 3z^2-1, xz, x^2-y^2)
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
#: degree 3 factors
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for a degree (0..3): ``(degree+1)^2``."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh_degree must be 0, 1, 2 or 3, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(num_bases: int) -> int:
    """Inverse of :func:`num_sh_bases` (raises for a count that is not a square up to 16)."""
    degree = int(round(math.sqrt(num_bases))) - 1
    if degree not in (0, 1, 2, 3) or (degree + 1) ** 2 != num_bases:
        raise ValueError(f"{num_bases} SH coefficients per channel is not (d+1)^2 for d in 0..3")
    return degree


def eval_sh_bases(degree: int, dirs: Float[Tensor, "... 3"]) -> Float[Tensor, "... K"]:
    """Evaluate the real SH basis functions ``Y_k(d)`` for unit directions.

    Args:
        degree: SH degree 0..3.
        dirs: unit view directions (from the camera to the Gaussian).

    Returns:
        ``[..., (degree+1)^2]`` basis values in 3DGS's coefficient order.
    """
    K = num_sh_bases(degree)
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    assert len(out) == K
    return torch.stack(out, dim=-1)


def eval_sh(
    degree: int,
    coeffs: Float[Tensor, "... K D"],
    dirs: Optional[Float[Tensor, "... 3"]] = None,
) -> Float[Tensor, "... D"]:
    """Colour from SH coefficients: ``sum_k c_k Y_k(d)`` (no offset, no clamp).

    Only the first ``(degree+1)^2`` coefficients are used, so a model can raise its active
    degree during training (3DGS's ``oneupSHdegree``). ``dirs`` need not be normalised;
    it may be omitted for ``degree == 0``.

    Args:
        degree: active SH degree 0..3.
        coeffs: ``[..., K, D]`` coefficients, ``K >= (degree+1)^2``.
        dirs: ``[..., 3]`` view directions, broadcastable with ``coeffs[..., 0, :]``'s batch dims.

    Returns:
        ``[..., D]`` raw SH values; 3DGS colours are ``(value + 0.5).clamp_min(0)``
        (see :func:`sh_to_rgb`).
    """
    K = num_sh_bases(degree)
    if coeffs.shape[-2] < K:
        raise ValueError(f"SH degree {degree} needs {K} coefficients, tensor has {coeffs.shape[-2]}")
    if degree == 0:
        return SH_C0 * coeffs[..., 0, :]
    if dirs is None:
        raise ValueError(f"eval_sh with degree {degree} > 0 needs view directions")
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bases = eval_sh_bases(degree, dirs)  # [..., K]
    return (bases[..., :, None] * coeffs[..., :K, :]).sum(dim=-2)


def sh_to_rgb(
    degree: int, coeffs: Float[Tensor, "... K 3"], dirs: Optional[Float[Tensor, "... 3"]] = None
) -> Float[Tensor, "... 3"]:
    """3DGS colour: ``clamp_min(eval_sh + 0.5, 0)`` (Kerbl et al. 2023 reference code)."""
    return torch.clamp_min(eval_sh(degree, coeffs, dirs) + 0.5, 0.0)


def rgb_to_sh0(rgb: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
    """Degree-0 coefficient giving colour ``rgb`` from every direction: ``(rgb - 0.5) / C0``."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
    """Inverse of :func:`rgb_to_sh0` (without the clamp)."""
    return sh0 * SH_C0 + 0.5
