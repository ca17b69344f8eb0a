"""Projection of 3D Gaussians to screen-space 2D Gaussians (EWA splatting).

Conventions follow gsplat: ``viewmats`` are world-to-camera matrices in the OpenCV camera
frame (x right, y down, z forward), ``Ks`` are pinhole intrinsics, pixel ``(u, v)`` has its
centre at ``(u + 0.5, v + 0.5)``. Quaternions are ``(w, x, y, z)`` and need not be unit.

Maths (Zwicker et al. 2001, "EWA Volume Splatting", Eq. 31; Kerbl et al. 2023, Eq. 5-6):
``Sigma = R S S^T R^T`` (3DGS Eq. 6), camera covariance ``W Sigma W^T``, image covariance
``Sigma' = J W Sigma W^T J^T`` with the affine (first-order) Jacobian ``J`` of the
perspective projection at the Gaussian's centre, plus ``eps2d * I`` (0.3 px^2, the
screen-space low-pass filter of 3DGS / gsplat). As in both reference implementations the
centre is clamped to 1.3x the field of view before evaluating ``J`` so that Gaussians far
outside the frustum do not get exploding Jacobians.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ddpo3d.utils.typing import Float, Int, Tensor, Tuple

#: Footprint radius in standard deviations. alpha = o exp(-d^2/2) >= 1/255 with o <= 1
#: needs d^2 <= 2 ln 255, i.e. d <= 3.3290; so a 3.33-sigma box loses no visible pixel.
RADIUS_SIGMAS = 3.33


def quat_to_rotmat(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Rotation matrices from (not necessarily unit) quaternions ``(w, x, y, z)``."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """World-space covariance ``R diag(s)^2 R^T`` (3DGS Eq. 6)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Tuple[
    Float[Tensor, "C N 2"], Float[Tensor, "C N 3"], Float[Tensor, "C N"], Int[Tensor, "C N 2"], Float[Tensor, "C N 2 2"]
]:
    """Project N Gaussians into C pinhole cameras.

    Args:
        means: world-space centres.
        quats: rotations ``(w, x, y, z)``.
        scales: per-axis standard deviations (not log).
        viewmats: world-to-camera (OpenCV) matrices.
        Ks: intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
        width: image width in pixels.
        height: image height in pixels.
        eps2d: isotropic screen-space dilation in px^2 (3DGS's 0.3 low-pass filter).
        near_plane: Gaussians with camera depth ``<= near_plane`` are culled.
        far_plane: Gaussians with camera depth ``>= far_plane`` are culled.

    Returns:
        ``means2d`` (pixels), ``conics`` (upper triangle ``(a, b, c)`` of ``Sigma'^-1``, so that
        ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``), ``depths`` (camera z), ``radii``
        (integer per-axis footprint half-extent in pixels, 0 for culled Gaussians) and the
        dilated 2D covariances ``cov2d``.
    """
    R = viewmats[:, :3, :3]  # [C,3,3]
    t = viewmats[:, :3, 3]  # [C,3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C,N,3]
    cov3d = covariance_3d(quats, scales)  # [N,3,3]
    cov_c = torch.einsum("cij,njk,clk->cnil", R, cov3d, R)  # W Sigma W^T

    x, y, z = means_c.unbind(-1)
    valid = (z > near_plane) & (z < far_plane)
    z_safe = torch.where(valid, z, torch.ones_like(z))  # keeps culled rows finite (and their grads 0)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]

    # clamp the centre to 1.3x the frustum before the Jacobian (3DGS / gsplat)
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.clamp(x / z_safe, min=-lim_x_neg, max=lim_x_pos)
    ty = z_safe * torch.clamp(y / z_safe, min=-lim_y_neg, max=lim_y_pos)

    # J = d(u, v)/d(x, y, z) of u = fx x / z + cx, v = fy y / z + cy  (EWA Eq. 29)
    zeros = torch.zeros_like(z_safe)
    J = torch.stack(
        [fx / z_safe, zeros, -fx * tx / z_safe**2, zeros, fy / z_safe, -fy * ty / z_safe**2], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)

    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = a * c - b * b
    valid = valid & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    with torch.no_grad():
        radii = torch.ceil(RADIUS_SIGMAS * torch.sqrt(torch.stack([a, c], dim=-1).clamp_min(0)))
        inside = (
            (means2d[..., 0] + radii[..., 0] > 0)
            & (means2d[..., 0] - radii[..., 0] < width)
            & (means2d[..., 1] + radii[..., 1] > 0)
            & (means2d[..., 1] - radii[..., 1] < height)
        )
        keep = valid & inside & torch.isfinite(radii).all(-1)
        radii = torch.where(keep[..., None], radii, torch.zeros_like(radii)).long()
    return means2d, conics, z, radii, cov2d


def camera_positions_from_viewmats(viewmats: Float[Tensor, "C 4 4"]) -> Float[Tensor, "C 3"]:
    """World-space camera centres ``-R^T t`` of world-to-camera matrices."""
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    return -torch.einsum("cji,cj->ci", R, t)


def opengl_c2w_to_viewmats(c2w: Float[Tensor, "C 4 4"]) -> Float[Tensor, "C 4 4"]:
    """threestudio camera-to-world (OpenGL: x right, y up, looking down -z) to gsplat's
    world-to-camera (OpenCV: x right, y down, looking down +z).

    The OpenCV camera axes are the OpenGL ones with y and z negated, so
    ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)`` and the view matrix is its rigid inverse.
    """
    flip = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device)
    c2w_cv = c2w * flip[None, None, :]  # scales the columns
    R = c2w_cv[:, :3, :3]
    t = c2w_cv[:, :3, 3]
    view = torch.zeros_like(c2w)
    view[:, :3, :3] = R.transpose(1, 2)
    view[:, :3, 3] = -torch.einsum("cji,cj->ci", R, t)
    view[:, 3, 3] = 1.0
    return view


def intrinsics_from_fovy(fovy: Float[Tensor, " C"], width: int, height: int) -> Float[Tensor, "C 3 3"]:
    """Pinhole intrinsics matching threestudio's ray directions.

    threestudio's random-camera data uses ``focal = 0.5 H / tan(fovy / 2)`` for both axes
    and the principal point ``(W/2, H/2)`` (``utils/ops.py:get_ray_directions``).
    """
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    K = torch.zeros(fovy.shape[0], 3, 3, dtype=fovy.dtype, device=fovy.device)
    K[:, 0, 0] = focal
    K[:, 1, 1] = focal
    K[:, 0, 2] = 0.5 * width
    K[:, 1, 2] = 0.5 * height
    K[:, 2, 2] = 1.0
    return K


def fovy_from_projection(proj: Float[Tensor, "C 4 4"]) -> Float[Tensor, " C"]:
    """Vertical field of view of an OpenGL projection matrix (threestudio's
    ``get_projection_matrix`` puts ``-1 / tan(fovy/2)`` at ``[1, 1]``)."""
    return 2.0 * torch.atan(1.0 / proj[:, 1, 1].abs())


def fovy_from_mvp(mvp: Float[Tensor, "C 4 4"], c2w: Float[Tensor, "C 4 4"]) -> Float[Tensor, " C"]:
    """Field of view from ``mvp = P @ w2c``: ``P = mvp @ c2w``."""
    return fovy_from_projection(mvp @ c2w)


def fov_to_focal(fov: float, pixels: int) -> float:
    """Focal length in pixels for a field of view in radians."""
    return 0.5 * pixels / math.tan(0.5 * fov)
