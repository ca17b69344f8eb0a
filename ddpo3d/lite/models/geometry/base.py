"""Geometry base classes (threestudio's ``models/geometry/base.py`` names and config keys)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.isosurface import IsosurfaceHelper, MarchingCubeCPUHelper, resolve_threshold
from ddpo3d.lite.models.mesh import Mesh
from ddpo3d.lite.utils.base import BaseModule
from ddpo3d.lite.utils.ops import chunk_batch, scale_tensor
from ddpo3d.utils.typing import Any, Dict, DictConfig, Float, Optional, Tensor, Tuple, Union


def contract_to_unisphere(
    x: Float[Tensor, "... 3"], bbox: Float[Tensor, "2 3"], unbounded: bool = False
) -> Float[Tensor, "... 3"]:
    """Map points to ``[0, 1]^3``: the bbox affinely; with ``unbounded`` the space outside the
    unit ball is contracted as in Mip-NeRF 360 (Barron et al. 2022, Eq. 10) to ``[0, 1]``.
    """
    if unbounded:
        x = scale_tensor(x, bbox, (0, 1)) * 2 - 1  # bbox -> [-1, 1]
        mag = x.norm(dim=-1, keepdim=True)
        outside = mag > 1
        # contract(x) = (2 - 1/|x|) x/|x| outside the unit ball
        x = torch.where(outside, (2 - 1 / mag.clamp(min=1e-12)) * (x / mag.clamp(min=1e-12)), x)
        return x / 4 + 0.5
    return scale_tensor(x, bbox, (0, 1))


class BaseGeometry(BaseModule):
    """Any geometry representation."""

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    @staticmethod
    def create_from(other: "BaseGeometry", cfg: Optional[Union[dict, DictConfig]] = None, **kwargs) -> "BaseGeometry":
        raise TypeError(f"Cannot create {BaseGeometry.__name__} from {other.__class__.__name__}")

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {}


class BaseImplicitGeometry(BaseGeometry):
    """A field over the bounding box ``[-radius, radius]^3`` with isosurface extraction.

    Config keys (threestudio's): ``radius``, ``isosurface``, ``isosurface_method``
    (``"mc-cpu"``; ``"mt"``, threestudio's default, runs the same marching cubes here, with a
    notice, since marching tetrahedra needs threestudio's ``load/tets`` grids),
    ``isosurface_resolution``, ``isosurface_threshold`` (a float or ``"auto"``: mean of the
    field where it exceeds 1e-5), ``isosurface_chunk``, ``isosurface_coarse_to_fine``,
    ``isosurface_deformable_grid`` (not supported: warned and ignored, as threestudio's
    implicit volume does), ``isosurface_remove_outliers``,
    ``isosurface_outlier_n_faces_threshold``.
    """

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        isosurface: bool = True
        isosurface_method: str = "mt"
        isosurface_resolution: int = 128
        isosurface_threshold: Union[float, str] = 0.0
        isosurface_chunk: int = 0
        isosurface_coarse_to_fine: bool = True
        isosurface_deformable_grid: bool = False
        isosurface_remove_outliers: bool = True
        isosurface_outlier_n_faces_threshold: Union[int, float] = 0.01

    cfg: Config

    def configure(self) -> None:
        self.bbox: Float[Tensor, "2 3"]
        r = self.cfg.radius
        self.register_buffer("bbox", torch.as_tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
        self.isosurface_helper: Optional[IsosurfaceHelper] = None
        self.unbounded: bool = False

    def _initilize_isosurface_helper(self) -> None:  # (sic) threestudio's spelling
        if self.cfg.isosurface and self.isosurface_helper is None:
            method = self.cfg.isosurface_method
            if method == "mt":
                threestudio.info(
                    "isosurface_method 'mt' (marching tetrahedra on threestudio's load/tets grids) is "
                    "served by marching cubes (scikit-image) in the built-in runtime: same level set, "
                    "different triangulation. Set isosurface_method: mc-cpu to silence this."
                )
            elif method != "mc-cpu":
                raise ValueError(
                    f"Unknown isosurface_method {method!r}: the built-in runtime supports 'mc-cpu' and 'mt'"
                )
            self.isosurface_helper = MarchingCubeCPUHelper(self.cfg.isosurface_resolution).to(self.bbox.device)

    def forward(self, points: Float[Tensor, "*N Di"], output_normal: bool = False) -> Dict[str, Float[Tensor, "..."]]:
        raise NotImplementedError

    def forward_field(
        self, points: Float[Tensor, "*N Di"]
    ) -> Tuple[Float[Tensor, "*N 1"], Optional[Float[Tensor, "*N 3"]]]:
        """The implicit field (density / SDF) and an optional grid deformation."""
        raise NotImplementedError

    def forward_level(self, field: Float[Tensor, "*N 1"], threshold: float) -> Float[Tensor, "*N 1"]:
        """The level-set function whose zero set is the surface (negative inside)."""
        raise NotImplementedError

    def _isosurface(self, bbox: Float[Tensor, "2 3"], fine_stage: bool = False) -> Mesh:
        helper = self.isosurface_helper
        assert helper is not None

        def batch_func(x):
            field, deformation = self.forward_field(scale_tensor(x.to(bbox.device), helper.points_range, bbox))
            field = field.to(x.device)
            if deformation is not None:
                deformation = deformation.to(x.device)
            return field, deformation

        field, deformation = chunk_batch(batch_func, self.cfg.isosurface_chunk, helper.grid_vertices)

        threshold = resolve_threshold(field, self.cfg.isosurface_threshold, "isosurface_threshold")
        if isinstance(self.cfg.isosurface_threshold, str):
            threestudio.info(f"Automatically determined isosurface threshold: {threshold}")

        level = self.forward_level(field, threshold)
        mesh = helper(level, deformation=deformation)
        if mesh.v_pos.shape[0] == 0:
            raise ValueError(
                f"{type(self).__name__}.isosurface: no surface at isosurface_threshold={threshold:g}; the field "
                f"ranges over [{field.min().item():.4g}, {field.max().item():.4g}] in the box. "
                "Train longer or set isosurface_threshold (e.g. 'auto')."
            )
        mesh.v_pos = scale_tensor(mesh.v_pos, helper.points_range, bbox)
        mesh.add_extra("bbox", bbox)
        if self.cfg.isosurface_remove_outliers:
            mesh = mesh.remove_outlier(self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh

    def isosurface(self) -> Mesh:
        """Extract the surface mesh (coarse pass for a tight box, then a fine pass when
        ``isosurface_coarse_to_fine``).

        Returns:
            A :class:`~ddpo3d.lite.models.mesh.Mesh` in world coordinates.

        Raises:
            NotImplementedError: when ``isosurface`` is disabled.
            ValueError: when the field has no surface at the threshold.
        """
        if not self.cfg.isosurface:
            raise NotImplementedError("Isosurface is not enabled in the current configuration")
        self._initilize_isosurface_helper()
        if self.cfg.isosurface_coarse_to_fine:
            threestudio.debug("First run isosurface to get a tight bounding box ...")
            with torch.no_grad():
                mesh_coarse = self._isosurface(self.bbox)
            vmin, vmax = mesh_coarse.v_pos.amin(dim=0), mesh_coarse.v_pos.amax(dim=0)
            vmin_ = (vmin - (vmax - vmin) * 0.1).max(self.bbox[0])
            vmax_ = (vmax + (vmax - vmin) * 0.1).min(self.bbox[1])
            threestudio.debug("Run isosurface again with the tight bounding box ...")
            return self._isosurface(torch.stack([vmin_, vmax_], dim=0), fine_stage=True)
        return self._isosurface(self.bbox)


class BaseExplicitGeometry(BaseGeometry):
    """An explicit representation (meshes, Gaussians) inside ``[-radius, radius]^3``."""

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self) -> None:
        r = self.cfg.radius
        self.register_buffer("bbox", torch.as_tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
