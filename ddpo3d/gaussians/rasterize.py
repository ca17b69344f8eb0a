"""Gaussian rasterisation: a tiled pure-PyTorch rasteriser, a dense reference, and a
backend selector that uses gsplat's CUDA kernels when the tensors live on a GPU.

All three take gsplat's ``rasterization`` arguments (names, shapes and semantics) so a
caller can switch backends without touching its code:

* :func:`rasterize_torch`: CPU/GPU, autograd for every input. Gaussians are binned into
  ``tile_size`` x ``tile_size`` pixel tiles (3DGS's tile-based rasteriser, Kerbl et al.
  2023, Sec. 6), sorted by depth inside each tile, and composited front to back for all
  tiles at once, in chunks of depth-sorted Gaussians.
* :func:`rasterize_reference`: the same maths for every (pixel, Gaussian) pair, no tiles.
  Slow; it exists to test the tiled path.
* :func:`rasterize`: ``backend="auto" | "gsplat" | "torch"``.

Compositing (3DGS Eq. 3 and its reference CUDA kernel; gsplat ``rasterize_to_pixels``)::

    sigma_i = 0.5 (a dx^2 + c dy^2) + b dx dy           (conic = Sigma'^-1 = [[a, b], [b, c]])
    alpha_i = min(alpha_max, o_i exp(-sigma_i)),  skipped if alpha_i < 1/255
    C = sum_i c_i alpha_i T_i,   T_i = prod_{j<i} (1 - alpha_j)

(gsplat also skips ``sigma_i < 0``, impossible for the positive-definite conics left after
culling), and a pixel stops at the first Gaussian whose ``T_i (1 - alpha_i)`` would fall to
``<= 1e-4`` (that Gaussian is not added). ``alpha_max`` defaults to gsplat's 0.999; the
original 3DGS kernel uses 0.99. The accumulated alpha is ``1 - T_final = sum_i alpha_i T_i``.
"""

from __future__ import annotations

import math

import torch

from ddpo3d.gaussians.projection import camera_positions_from_viewmats, project_gaussians
from ddpo3d.gaussians.sh import eval_sh
from ddpo3d.utils.typing import Any, Dict, Float, Optional, Tensor, Tuple

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_EPS = 1e-4
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


class GsplatUnavailableError(RuntimeError):
    """``backend="gsplat"`` was asked for where gsplat cannot run (no CUDA tensors, not installed)."""


# --------------------------------------------------------------------------------------
# shared preparation: projection, colours, render modes
# --------------------------------------------------------------------------------------


def _check_inputs(means, quats, scales, opacities, viewmats, Ks, width, height, render_mode):
    N = means.shape[0]
    if means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    if quats.shape != (N, 4):
        raise ValueError(f"quats must be [N, 4] = [{N}, 4], got {tuple(quats.shape)}")
    if scales.shape != (N, 3):
        raise ValueError(f"scales must be [N, 3] = [{N}, 3], got {tuple(scales.shape)}")
    C = viewmats.shape[0]
    if opacities.shape not in ((N,), (C, N)):
        raise ValueError(f"opacities must be [N] or [C, N], got {tuple(opacities.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    if Ks.shape != (C, 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3] = [{C}, 3, 3], got {tuple(Ks.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")


def _view_colors(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: Optional[int]) -> Float[Tensor, "C N D"]:
    """Per-camera colours: given directly (``[N, D]`` / ``[C, N, D]``) or from SH
    coefficients (``[N, K, 3]`` / ``[C, N, K, 3]``) seen from each camera centre."""
    C, N = viewmats.shape[0], means.shape[0]
    if sh_degree is None:
        if colors.dim() == 2 and colors.shape[0] == N:
            return colors[None].expand(C, N, colors.shape[-1])
        if colors.dim() == 3 and colors.shape[:2] == (C, N):
            return colors
        raise ValueError(
            f"with sh_degree=None colors must be [N, D] or [C, N, D] (N={N}, C={C}), got {tuple(colors.shape)}"
        )
    if colors.dim() == 3 and colors.shape[0] == N:
        coeffs = colors[None].expand(C, *colors.shape)
    elif colors.dim() == 4 and colors.shape[:2] == (C, N):
        coeffs = colors
    else:
        raise ValueError(
            f"with sh_degree={sh_degree} colors must be SH coefficients [N, K, 3] or [C, N, K, 3] "
            f"(N={N}, C={C}), got {tuple(colors.shape)}"
        )
    campos = camera_positions_from_viewmats(viewmats)  # [C, 3]
    dirs = means[None, :, :] - campos[:, None, :]  # camera -> Gaussian (3DGS convention)
    return torch.clamp_min(eval_sh(sh_degree, coeffs, dirs) + 0.5, 0.0)


def _prepare(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    near_plane,
    far_plane,
    eps2d,
    sh_degree,
    render_mode,
):
    _check_inputs(means, quats, scales, opacities, viewmats, Ks, width, height, render_mode)
    means2d, conics, depths, radii, cov2d = project_gaussians(
        means,
        quats,
        scales,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
    )
    C, N = depths.shape
    feats = []
    if render_mode in ("RGB", "RGB+D", "RGB+ED"):
        feats.append(_view_colors(means, colors, viewmats, sh_degree))
    if render_mode != "RGB":
        feats.append(depths[..., None])
    feats = feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)
    opac = opacities[None].expand(C, N) if opacities.dim() == 1 else opacities
    meta = {
        "means2d": means2d,
        "conics": conics,
        "depths": depths,
        "radii": radii,
        "cov2d": cov2d,
        "opacities": opac,
        "width": int(width),
        "height": int(height),
        "n_cameras": C,
        "render_mode": render_mode,
    }
    return means2d, conics, depths, radii, opac, feats, meta


def _finish(render: Tensor, alpha: Tensor, render_mode: str, backgrounds: Optional[Tensor]):
    """Expected depth normalisation and background compositing (gsplat semantics)."""
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp_min(1e-10)], dim=-1)
    if backgrounds is not None:
        bg = backgrounds
        if render_mode in ("RGB+D", "RGB+ED"):
            bg = torch.cat([bg, torch.zeros_like(bg[..., :1])], dim=-1)
        elif render_mode in ("D", "ED"):
            bg = torch.zeros(bg.shape[:-1] + (1,), dtype=bg.dtype, device=bg.device)
        render = render + bg[:, None, None, :] * (1.0 - alpha)
    return render, alpha


# --------------------------------------------------------------------------------------
# tiled rasteriser
# --------------------------------------------------------------------------------------


@torch.no_grad()
def intersect_tiles(
    means2d: Float[Tensor, "C N 2"],
    radii: Tensor,
    depths: Float[Tensor, "C N"],
    tile_size: int,
    width: int,
    height: int,
) -> Dict[str, Any]:
    """Bin Gaussians into tiles and sort each tile's list by depth (3DGS Sec. 6).

    A Gaussian goes to every tile its ``radii`` box overlaps. Keys ``tile * N + depth_rank``
    are sorted once, which orders by tile, then by depth (ties by index, as a stable sort).

    Returns:
        dict with ``tile_width``, ``tile_height``, ``rows`` (tile ids of the non-empty tiles,
        most-populated first), ``table`` (``[rows, K_max]`` flat Gaussian ids ``c * N + n``
        in depth order, ``-1`` padded), ``counts`` (per row, descending), ``n_isects``,
        ``tiles_per_gaussian`` ``[C, N]``.
    """
    C, N = depths.shape
    device = means2d.device
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    r = radii.to(means2d.dtype)
    mx, my = means2d[..., 0], means2d[..., 1]
    x0 = torch.floor((mx - r[..., 0]) / tile_size).clamp(0, tw).long()
    x1 = torch.ceil((mx + r[..., 0]) / tile_size).clamp(0, tw).long()
    y0 = torch.floor((my - r[..., 1]) / tile_size).clamp(0, th).long()
    y1 = torch.ceil((my + r[..., 1]) / tile_size).clamp(0, th).long()
    nx, ny = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
    visible = (radii > 0).all(-1)
    n_tiles = torch.where(visible, nx * ny, torch.zeros_like(nx))  # [C, N]

    order = torch.argsort(depths, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=device).expand(C, N).contiguous())

    flat_counts = n_tiles.reshape(-1)
    sel = torch.nonzero(flat_counts > 0).squeeze(1)  # flat ids c*N+n
    counts = flat_counts[sel]
    M = int(counts.sum().item())
    rep = torch.repeat_interleave(torch.arange(sel.numel(), device=device), counts)
    local = torch.arange(M, device=device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    gid = sel[rep]
    cam = gid // N
    nx_r = nx.reshape(-1)[gid]
    tx = x0.reshape(-1)[gid] + local % nx_r
    ty = y0.reshape(-1)[gid] + local // nx_r
    tile = cam * (th * tw) + ty * tw + tx
    key = tile * N + rank.reshape(-1)[gid]
    perm = torch.argsort(key)
    tile, gid = tile[perm], gid[perm]

    tile_counts = torch.bincount(tile, minlength=C * th * tw)
    nonempty = torch.nonzero(tile_counts > 0).squeeze(1)
    rows = nonempty[torch.argsort(tile_counts[nonempty], descending=True, stable=True)]
    row_of_tile = torch.full((C * th * tw,), -1, dtype=torch.long, device=device)
    row_of_tile[rows] = torch.arange(rows.numel(), device=device)
    start = torch.cumsum(tile_counts, 0) - tile_counts
    pos = torch.arange(M, device=device) - start[tile]
    k_max = int(tile_counts.max().item()) if M > 0 else 0
    table = torch.full((rows.numel(), k_max), -1, dtype=torch.long, device=device)
    table[row_of_tile[tile], pos] = gid
    return {
        "tile_width": tw,
        "tile_height": th,
        "rows": rows,
        "table": table,
        "counts": tile_counts[rows],
        "n_isects": M,
        "tiles_per_gaussian": n_tiles,
    }


def _composite_chunk(pix_feats, ox, oy, ids, means2d, conics, opac, feats, T_carry, done, alpha_max):
    """Front-to-back compositing of one depth-ordered chunk of Gaussians for many tiles.

    The Mahalanobis term is evaluated as a quadratic polynomial in tile-local pixel
    coordinates, ``sigma = [1, x, y, x^2, y^2, xy] @ coef``, one batched matmul instead of
    seven elementwise passes over ``[R, P, B]``; local coordinates keep the polynomial's
    terms small (cancellation error ~1e-5 of sigma in float32).

    Args:
        pix_feats: ``[P, 6]`` monomials ``[1, x, y, x^2, y^2, xy]`` of tile-local pixel centres.
        ox, oy: ``[R]`` pixel origin of each tile row.
        ids: ``[R, B]`` flat Gaussian ids (``-1``: padding).
        means2d, conics, opac, feats: flat ``[C*N, ...]`` attributes.
        T_carry: ``[R, P]`` transmittance in front of this chunk.
        done: ``[R, P]`` pixels that terminated in an earlier chunk.

    Returns:
        colour ``[R, P, D]``, accumulated weight ``[R, P]``, the new transmittance and
        the new ``done`` mask.
    """
    pad = ids < 0
    ids_c = ids.clamp_min(0)
    m = means2d[ids_c]  # [R, B, 2]
    a, b, c = conics[ids_c].unbind(-1)  # [R, B]
    o = torch.where(pad, torch.zeros_like(a), opac[ids_c])
    mx = m[..., 0] - ox[:, None]
    my = m[..., 1] - oy[:, None]
    # 0.5 a (x-mx)^2 + 0.5 c (y-my)^2 + b (x-mx)(y-my), expanded in x, y
    coef = torch.stack(
        [
            0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my,
            -(a * mx + b * my),
            -(c * my + b * mx),
            0.5 * a,
            0.5 * c,
            b,
        ],
        dim=1,
    )  # [R, 6, B]
    sigma = torch.matmul(pix_feats, coef)  # [R, P, B]
    alpha = torch.clamp_max(o[:, None, :] * torch.exp(-sigma), alpha_max)
    with torch.no_grad():
        # conics are positive definite after culling, so sigma >= 0 up to rounding: only
        # the 1/255 threshold and termination decide. A pixel stops at the first Gaussian
        # that would take T to <= 1e-4 (that one is skipped too).
        ok = alpha >= ALPHA_THRESHOLD
        raw = T_carry[:, :, None] * torch.cumprod(1.0 - alpha * ok, dim=-1)
        keep = ok & (raw > TRANSMITTANCE_EPS) & ~done[:, :, None]
        done = done | (raw[..., -1] <= TRANSMITTANCE_EPS)
    alpha = alpha * keep
    trans = torch.cumprod(1.0 - alpha, dim=-1)  # inclusive
    trans_excl = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
    w = alpha * trans_excl  # [R, P, B], weights relative to T_carry
    color = torch.bmm(w, feats[ids_c]) * T_carry[:, :, None]
    return color, w.sum(-1) * T_carry, T_carry * trans[..., -1], done


def rasterize_torch(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Tensor,
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    tile_size: int = 8,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    alpha_max: float = 0.999,
    chunk_elements: int = 1 << 18,
) -> Tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"], Dict[str, Any]]:
    """Rasterise N 3D Gaussians into C images with a tiled pure-PyTorch rasteriser.

    Same arguments and outputs as ``gsplat.rasterization`` (non-packed, pinhole, classic
    mode); gradients for every input come from autograd.

    Args:
        means: world-space centres.
        quats: rotations ``(w, x, y, z)``, not necessarily normalised.
        scales: per-axis standard deviations (activated, not log).
        opacities: ``[N]`` or per-view ``[C, N]`` opacities in ``[0, 1]`` (activated).
        colors: ``[N, D]`` / ``[C, N, D]`` features, or with ``sh_degree`` SH coefficients
            ``[N, K, 3]`` / ``[C, N, K, 3]`` (colour = ``max(SH(d) + 0.5, 0)``).
        viewmats: world-to-camera matrices, OpenCV axes.
        Ks: pinhole intrinsics.
        width: image width (px).
        height: image height (px).
        near_plane: camera-depth culling plane.
        far_plane: camera-depth culling plane.
        eps2d: screen-space dilation in px^2 (0.3 as in 3DGS).
        sh_degree: active SH degree or ``None`` for plain features.
        tile_size: tile edge in pixels (8 is fastest on CPU at 64-128 px).
        backgrounds: ``[C, D]`` colour composited behind: ``render + (1 - alpha) bg``.
        render_mode: ``"RGB" | "D" | "ED" | "RGB+D" | "RGB+ED"`` (D: accumulated depth
            ``sum w z``; ED: expected depth ``sum w z / alpha``), appended as a last channel.
        alpha_max: per-Gaussian alpha clamp (gsplat 0.999, original 3DGS 0.99).
        chunk_elements: memory knob: at most about this many (pixel, Gaussian) pairs are
            materialised per compositing chunk.

    Returns:
        ``render_colors [C, H, W, D]``, ``render_alphas [C, H, W, 1]`` and ``meta`` with
        ``means2d`` ``[C, N, 2]`` (call ``retain_grad()`` on it for densification),
        ``radii`` ``[C, N, 2]`` (0: not rendered), ``depths``, ``conics``, ``opacities``,
        ``width``, ``height``, ``n_cameras``, ``tile_size``, ``n_isects``,
        ``tiles_per_gaussian``.

    Example:
        >>> rgb, alpha, meta = rasterize_torch(means, quats, scales, opacities, colors,
        ...                                    viewmats, Ks, 64, 64)
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    means2d, conics, depths, radii, opac, feats, meta = _prepare(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        eps2d,
        sh_degree,
        render_mode,
    )
    C, N = depths.shape
    D = feats.shape[-1]
    ts = int(tile_size)
    P = ts * ts
    isect = intersect_tiles(means2d.detach(), radii, depths.detach(), ts, width, height)
    tw, th = isect["tile_width"], isect["tile_height"]
    rows, table, counts = isect["rows"], isect["table"], isect["counts"]
    R = rows.numel()
    device, dtype = means.device, feats.dtype

    # tile origins of each non-empty tile row, and tile-local pixel-centre monomials
    within = rows % (th * tw)
    oy = ((within // tw) * ts).to(dtype)
    ox = ((within % tw) * ts).to(dtype)
    p = torch.arange(P, device=device)
    lx, ly = (p % ts).to(dtype) + 0.5, (p // ts).to(dtype) + 0.5
    pix_feats = torch.stack([torch.ones_like(lx), lx, ly, lx * lx, ly * ly, lx * ly], dim=-1)  # [P, 6]

    flat_m = means2d.reshape(C * N, 2)
    flat_c = conics.reshape(C * N, 3)
    flat_o = opac.reshape(C * N)
    flat_f = feats.reshape(C * N, D)

    color_rows = torch.zeros(R, P, D, dtype=dtype, device=device)
    acc_rows = torch.zeros(R, P, dtype=dtype, device=device)
    T_rows = torch.ones(R, P, dtype=dtype, device=device)
    done = torch.zeros(R, P, dtype=torch.bool, device=device)
    k_max = table.shape[1] if R > 0 else 0
    chunk = max(8, min(k_max, chunk_elements // max(1, R * P))) if k_max > 0 else 0
    counts_list = counts.tolist()
    k0 = 0
    while k0 < k_max:
        # rows are sorted by count, so the tiles that still have Gaussians form a prefix
        active = sum(1 for c in counts_list if c > k0)
        ids = table[:active, k0 : k0 + chunk]
        col, acc, T_new, done_new = _composite_chunk(
            pix_feats,
            ox[:active],
            oy[:active],
            ids,
            flat_m,
            flat_c,
            flat_o,
            flat_f,
            T_rows[:active],
            done[:active],
            alpha_max,
        )
        done = torch.cat([done_new, done[active:]], dim=0)
        color_rows = torch.cat([color_rows[:active] + col, color_rows[active:]], dim=0)
        acc_rows = torch.cat([acc_rows[:active] + acc, acc_rows[active:]], dim=0)
        T_rows = torch.cat([T_new, T_rows[active:]], dim=0)
        k0 += chunk
        # fewer tiles remain active deeper in the lists: widen the chunk to the same budget
        chunk = max(8, min(k_max, chunk_elements // max(1, active * P)))

    n_all = C * th * tw
    img = torch.zeros(n_all, P, D + 1, dtype=dtype, device=device)
    img = img.index_copy(0, rows, torch.cat([color_rows, acc_rows[..., None]], dim=-1))
    # keep the output in the autograd graph even when nothing is visible (zero gradients,
    # instead of a "does not require grad" error in the caller's backward)
    img = img + 0.0 * (flat_m.sum() + flat_c.sum() + flat_o.sum() + flat_f.sum())
    img = img.reshape(C, th, tw, ts, ts, D + 1).permute(0, 1, 3, 2, 4, 5).reshape(C, th * ts, tw * ts, D + 1)
    img = img[:, :height, :width]
    render, alpha = img[..., :D], img[..., D:]
    render, alpha = _finish(render, alpha, render_mode, backgrounds)
    meta.update(
        tile_size=ts,
        tile_width=tw,
        tile_height=th,
        n_isects=isect["n_isects"],
        tiles_per_gaussian=isect["tiles_per_gaussian"],
    )
    return render, alpha, meta


# --------------------------------------------------------------------------------------
# dense reference
# --------------------------------------------------------------------------------------


def rasterize_reference(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Tensor,
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    alpha_max: float = 0.999,
    **unused: Any,
) -> Tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"], Dict[str, Any]]:
    """Brute-force rasteriser: every visible Gaussian against every pixel, no tiles.

    Same arguments, maths and outputs as :func:`rasterize_torch` (``tile_size`` and
    ``chunk_elements`` are accepted and ignored). Memory is ``H * W * N`` per camera, so
    keep it to small scenes; it is the ground truth for tests and the "dense" column of
    the benchmark.
    """
    means2d, conics, depths, radii, opac, feats, meta = _prepare(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        eps2d,
        sh_degree,
        render_mode,
    )
    C, N = depths.shape
    device, dtype = means.device, feats.dtype
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)  # [HW, 1]
    renders, alphas = [], []
    for c in range(C):
        order = torch.argsort(depths[c].detach(), stable=True)
        ids = order[(radii[c] > 0).all(-1)[order]]  # visible, front to back
        m, con, o, f = means2d[c, ids], conics[c, ids], opac[c, ids], feats[c, ids]
        dx, dy = px - m[None, :, 0], py - m[None, :, 1]  # [HW, n]
        sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
        alpha = torch.clamp_max(o * torch.exp(-sigma), alpha_max)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
        with torch.no_grad():
            keep = torch.cumprod(1.0 - alpha, dim=-1) > TRANSMITTANCE_EPS
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        T = torch.cumprod(1.0 - alpha, dim=-1)
        T_excl = torch.cat([torch.ones_like(T[:, :1]), T[:, :-1]], dim=-1)
        w = alpha * T_excl
        renders.append((w @ f).reshape(height, width, -1))
        alphas.append(w.sum(-1).reshape(height, width, 1))
    render, alpha = torch.stack(renders), torch.stack(alphas)
    render, alpha = _finish(render, alpha, render_mode, backgrounds)
    return render, alpha, meta


# --------------------------------------------------------------------------------------
# backend selection
# --------------------------------------------------------------------------------------


def gsplat_available() -> bool:
    """True when ``gsplat`` imports and CUDA is present (its rasteriser needs CUDA)."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Resolve ``"auto" | "gsplat" | "torch"`` to the backend that will run.

    ``auto`` picks gsplat only for CUDA tensors with gsplat importable; an explicit
    ``gsplat`` elsewhere raises :class:`GsplatUnavailableError` saying why.
    """
    if backend not in ("auto", "gsplat", "torch"):
        raise ValueError(f"backend must be 'auto', 'gsplat' or 'torch', got {backend!r}")
    if backend == "torch":
        return "torch"
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "gsplat" if on_cuda and gsplat_available() else "torch"
    if not on_cuda:
        raise GsplatUnavailableError(
            f"backend='gsplat' needs CUDA tensors (gsplat's rasteriser is a CUDA kernel), "
            f"but the Gaussians are on {device}. Use backend='torch' or 'auto' on CPU."
        )
    try:
        import gsplat  # noqa: F401
    except Exception as exc:
        raise GsplatUnavailableError(
            f"backend='gsplat' but gsplat does not import ({exc}); `pip install gsplat` "
            f"(tested with 1.5.3) or use backend='torch'."
        ) from exc
    return "gsplat"


def rasterize(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Tensor,
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    backend: str = "auto",
    tile_size: int = 8,
    **kwargs: Any,
) -> Tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"], Dict[str, Any]]:
    """Rasterise with gsplat (CUDA) or the pure-torch tiled rasteriser.

    Args:
        backend: ``"auto"`` (gsplat for CUDA tensors when importable, else torch),
            ``"gsplat"`` (error if it cannot run) or ``"torch"``.
        tile_size: tile edge in pixels for either backend.
        **kwargs: the other ``gsplat.rasterization`` / :func:`rasterize_torch` arguments
            (``near_plane``, ``far_plane``, ``eps2d``, ``sh_degree``, ``backgrounds``,
            ``render_mode``). ``alpha_max`` / ``chunk_elements`` apply to torch only.

    Returns:
        As :func:`rasterize_torch`; ``meta["backend"]`` names the backend used.
        ``meta["means2d"]`` / ``meta["radii"]`` are ``[C, N, 2]`` for both backends.
    """
    chosen = resolve_backend(backend, means.device)
    if chosen == "torch":
        render, alpha, meta = rasterize_torch(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, tile_size=tile_size, **kwargs
        )
    else:
        from gsplat import rasterization

        kwargs.pop("chunk_elements", None)
        if kwargs.pop("alpha_max", 0.999) != 0.999:
            raise ValueError("alpha_max is fixed to 0.999 in gsplat's kernels; use backend='torch' to change it")
        render, alpha, meta = rasterization(
            means,
            quats,
            scales,
            opacities,
            colors,
            viewmats,
            Ks,
            width,
            height,
            tile_size=tile_size,
            packed=False,
            **kwargs,
        )
        meta = dict(meta)
        meta.setdefault("n_cameras", viewmats.shape[0])
    meta["backend"] = chosen
    return render, alpha, meta
