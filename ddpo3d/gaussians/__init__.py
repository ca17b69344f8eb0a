"""Gaussian splatting core: projection, spherical harmonics, rasterisation, PLY I/O, and
adaptive density control (stateless operations plus the small :class:`DensifyStrategy`, as
gsplat splits them). No threestudio / runtime imports; the registered geometry, its
densification callback and the renderer live in ``custom/threestudio-ddpo3d``.
"""

from ddpo3d.gaussians.densify import knn_mean_sq_dist, optimizer_replace_param, split_gaussians  # noqa: F401
from ddpo3d.gaussians.ply import load_gaussians_ply, read_ply_vertices, save_gaussians_ply  # noqa: F401
from ddpo3d.gaussians.projection import (  # noqa: F401
    camera_positions_from_viewmats,
    covariance_3d,
    fovy_from_mvp,
    fovy_from_projection,
    intrinsics_from_fovy,
    opengl_c2w_to_viewmats,
    project_gaussians,
    quat_to_rotmat,
)
from ddpo3d.gaussians.rasterize import (  # noqa: F401
    GsplatUnavailableError,
    gsplat_available,
    intersect_tiles,
    rasterize,
    rasterize_reference,
    rasterize_torch,
    resolve_backend,
)
from ddpo3d.gaussians.sh import SH_C0, eval_sh, num_sh_bases, rgb_to_sh0, sh0_to_rgb, sh_to_rgb  # noqa: F401
from ddpo3d.gaussians.strategy import DensifyStrategy, duplicate, remove, reset_opacity, split  # noqa: F401
