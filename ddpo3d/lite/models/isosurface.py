"""Isosurface extraction helpers (threestudio's ``models/isosurface.py`` names).

``MarchingCubeCPUHelper`` runs marching cubes (Lorensen & Cline 1987) on a regular grid
with scikit-image instead of PyMCubes. threestudio's default ``"mt"`` (marching
tetrahedra on a precomputed tet grid from ``load/tets``) is served by the same marching
cubes helper in the built-in runtime (see ``BaseImplicitGeometry``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.mesh import Mesh
from ddpo3d.utils.typing import Any, Float, Optional, Tensor, Tuple


class IsosurfaceHelper(nn.Module):
    points_range: Tuple[float, float] = (0, 1)

    @property
    def grid_vertices(self) -> Float[Tensor, "N 3"]:
        raise NotImplementedError


class MarchingCubeCPUHelper(IsosurfaceHelper):
    """Marching cubes on a ``resolution^3`` grid spanning ``[0, 1]^3``.

    ``forward(level)`` takes the level-set function at :attr:`grid_vertices` (the surface is
    where it crosses 0, inside is negative as in threestudio's ``forward_level``) and returns
    a :class:`Mesh` with vertices in ``[0, 1]^3``.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"isosurface_resolution must be >= 2, got {resolution}")
        self.resolution = resolution
        self._grid_vertices: Optional[Tensor] = None
        self.register_buffer("_dummy", torch.zeros(0, dtype=torch.float32), persistent=False)

    @property
    def grid_vertices(self) -> Float[Tensor, "N3 3"]:
        if self._grid_vertices is None:
            # kept on CPU so that large resolutions fit; chunk_batch moves chunks to the model
            lin = torch.linspace(*self.points_range, self.resolution)
            x, y, z = torch.meshgrid(lin, lin, lin, indexing="ij")
            self._grid_vertices = torch.stack([x, y, z], -1).reshape(-1, 3)
        return self._grid_vertices

    def forward(self, level: Float[Tensor, "N3 1"], deformation: Optional[Tensor] = None) -> Mesh:
        if deformation is not None:
            threestudio.warn(f"{type(self).__name__} does not support deformation. Ignoring.")
        r = self.resolution
        field = -level.detach().reshape(r, r, r).float().cpu().numpy()  # surface at 0, inside > 0
        device = self._dummy.device
        if not (field.min() < 0.0 < field.max()):
            # no crossing: an empty mesh (PyMCubes' behaviour); callers report it
            return Mesh(torch.zeros(0, 3, device=device), torch.zeros(0, 3, dtype=torch.long, device=device))
        try:
            from skimage.measure import marching_cubes
        except ImportError as exc:
            raise ImportError(
                "mesh export on the built-in runtime needs scikit-image: pip install 'threestudio-ddpo3d[export]' "
                "(or pip install scikit-image)"
            ) from exc

        verts, faces, _, _ = marching_cubes(field, level=0.0)
        # skimage winds faces so that their normals point towards increasing values (inwards
        # here); swap two indices so that the normals point out of the surface
        faces = faces[:, [0, 2, 1]]
        v_pos = torch.from_numpy(np.ascontiguousarray(verts)).float().to(device) / (r - 1.0)
        t_pos_idx = torch.from_numpy(np.ascontiguousarray(faces).astype(np.int64)).to(device)
        return Mesh(v_pos=v_pos, t_pos_idx=t_pos_idx)


def resolve_threshold(field: Float[Tensor, "..."], threshold: Any, name: str = "isosurface threshold") -> float:
    """A level value, or for ``"auto"`` the mean of the field values above 1e-5 (threestudio's rule).

    Args:
        field: the sampled field.
        threshold: a number or ``"auto"``.
        name: how error messages call the setting.

    Returns:
        the threshold as a float.

    Raises:
        TypeError: a string other than ``"auto"``.
        ValueError: ``"auto"`` on a field that is nowhere above 1e-5.
    """
    if isinstance(threshold, str):
        if threshold != "auto":
            raise TypeError(f"Unknown {name} {threshold!r}: use a number or 'auto'")
        positive = field[field > 1.0e-5]
        if positive.numel() == 0:
            raise ValueError(f"{name} 'auto': the field is nowhere above 1e-5 (empty scene)")
        threshold = positive.mean().item()
    return float(threshold)


def isosurface_from_field(geometry, bbox: Float[Tensor, "2 3"], resolution: int, threshold, chunk: int = 0) -> Mesh:
    """Marching cubes over any geometry with ``forward_field`` / ``forward_level``.

    Args:
        geometry: has ``forward_field(points) -> (field, deformation)`` and
            ``forward_level(field, threshold)`` (threestudio's implicit-geometry API).
        bbox: ``[2, 3]`` world box to sample.
        resolution: grid vertices per axis.
        threshold: level value (float) or ``"auto"`` (mean field value above 1e-5).
        chunk: points per ``forward_field`` call (``<= 0``: all at once).

    Returns:
        The mesh in world coordinates (``extras["bbox"]`` set).

    Raises:
        ValueError: when the field has no crossing at the threshold.
    """
    from ddpo3d.lite.utils.ops import chunk_batch, scale_tensor

    bbox = torch.as_tensor(bbox, dtype=torch.float32)
    helper = MarchingCubeCPUHelper(resolution).to(bbox.device)
    with torch.no_grad():
        field, _ = chunk_batch(
            lambda x: geometry.forward_field(scale_tensor(x.to(bbox.device), helper.points_range, bbox)),
            chunk,
            helper.grid_vertices,
        )
    threshold = resolve_threshold(field, threshold)
    mesh = helper(geometry.forward_level(field, threshold))
    if mesh.v_pos.shape[0] == 0:
        raise ValueError(
            f"no surface at isosurface threshold {float(threshold):g}: the field ranges over "
            f"[{field.min().item():.4g}, {field.max().item():.4g}] in the box"
        )
    mesh.v_pos = scale_tensor(mesh.v_pos, helper.points_range, bbox)
    mesh.add_extra("bbox", bbox)
    return mesh
