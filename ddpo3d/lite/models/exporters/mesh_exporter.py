"""``mesh-exporter``: marching cubes on the geometry's field, OBJ (vertex colours) or PLY.

The config is threestudio's, defaults included (``fmt: obj-mtl``, ``save_uv: true``). threestudio
unwraps UVs with xatlas and bakes textures with nvdiffrast for ``obj-mtl``; this runtime has
neither, so it writes ``fmt: obj`` (per-vertex albedo) or ``ply`` and names the two keys to set
(``system.exporter.fmt=obj system.exporter.save_uv=false``) when asked for ``obj-mtl`` or UVs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddpo3d.lite import info, register, warn
from ddpo3d.lite.models.exporters.base import Exporter, ExporterOutput
from ddpo3d.lite.models.isosurface import isosurface_from_field
from ddpo3d.lite.models.mesh import Mesh
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Any, List

FORMATS = ("obj", "ply")


@register("mesh-exporter")
class MeshExporter(Exporter):
    """Extract the geometry's isosurface and write it as ``<save_name>.obj`` / ``.ply``.

    The mesh comes from ``geometry.isosurface()`` when the geometry provides it, else from
    marching cubes over ``geometry.forward_field`` / ``forward_level`` on its ``bbox`` with
    the geometry's ``isosurface_resolution`` / ``isosurface_threshold`` (threestudio's
    ``BaseImplicitGeometry`` names). Vertex colours are the material's ``albedo`` from
    ``material.export(points, **geometry.export(points))`` when available.
    """

    @dataclass
    class Config(Exporter.Config):
        fmt: str = "obj-mtl"  # threestudio's default; here "obj" (vertex colours) or "ply" (obj-mtl: error)
        save_name: str = "model"  # file name without extension
        save_normal: bool = False  # write vertex normals (OBJ only)
        save_uv: bool = True  # threestudio's default; UV unwrapping needs xatlas: set false here
        save_texture: bool = True  # write per-vertex albedo when the material provides it
        texture_size: int = 1024  # kept for config compatibility (texture baking unsupported)
        texture_format: str = "jpg"  # kept for config compatibility
        xatlas_chart_options: dict = field(default_factory=dict)  # kept for config compatibility
        xatlas_pack_options: dict = field(default_factory=dict)  # kept for config compatibility
        context_type: str = "gl"  # kept for config compatibility (no rasteriser here)

    cfg: Config

    def configure(self, geometry: Any, material: Any, background: Any) -> None:
        super().configure(geometry, material, background)
        if self.cfg.fmt not in FORMATS:
            raise ConfigError(
                f"mesh-exporter: fmt {self.cfg.fmt!r} is not supported by the built-in runtime "
                f"(no xatlas / nvdiffrast for 'obj-mtl'); use one of {', '.join(FORMATS)}, e.g. "
                "system.exporter.fmt=obj system.exporter.save_uv=false"
            )
        if self.cfg.save_uv:
            raise ConfigError(
                "mesh-exporter: save_uv=true (threestudio's default) needs xatlas, which the built-in runtime "
                "does not ship; set system.exporter.save_uv=false"
            )

    def extract_mesh(self) -> Mesh:
        """The geometry's isosurface in world coordinates."""
        geometry = self.geometry
        if callable(getattr(geometry, "isosurface", None)):
            return geometry.isosurface()
        if not (
            callable(getattr(geometry, "forward_field", None)) and callable(getattr(geometry, "forward_level", None))
        ):
            raise TypeError(
                f"mesh-exporter: geometry {type(geometry).__name__} has neither isosurface() nor "
                "forward_field()/forward_level(), so no mesh can be extracted"
            )
        gcfg = getattr(geometry, "cfg", None)
        resolution = int(getattr(gcfg, "isosurface_resolution", 128))
        threshold = getattr(gcfg, "isosurface_threshold", 0.0)
        chunk = int(getattr(gcfg, "isosurface_chunk", 0))
        bbox = getattr(geometry, "bbox", None)
        if bbox is None:
            radius = float(getattr(gcfg, "radius", 1.0))
            bbox = torch.tensor([[-radius] * 3, [radius] * 3])
        return isosurface_from_field(geometry, bbox, resolution, threshold, chunk)

    def __call__(self) -> List[ExporterOutput]:
        mesh = self.extract_mesh()
        info(f"mesh-exporter: {mesh.v_pos.shape[0]} vertices, {mesh.t_pos_idx.shape[0]} faces")
        with_color = False
        if self.cfg.save_texture and mesh.v_pos.shape[0] > 0:
            with torch.no_grad():
                geo_out = self.geometry.export(points=mesh.v_pos) if hasattr(self.geometry, "export") else {}
                mat_out = self.material.export(points=mesh.v_pos, **geo_out) if hasattr(self.material, "export") else {}
            if "albedo" in mat_out:
                mesh.set_vertex_color(mat_out["albedo"].reshape(-1, 3).clamp(0, 1))
                with_color = True
            else:
                warn("mesh-exporter: save_texture is true but the material exports no albedo; no vertex colours")
        name = f"{self.cfg.save_name}.{self.cfg.fmt}"
        if self.cfg.fmt == "obj":
            params = {"mesh": mesh, "save_normal": self.cfg.save_normal, "save_vertex_color": with_color}
        else:
            params = {"mesh": mesh, "save_vertex_color": with_color}
        return [ExporterOutput(save_name=name, save_type=self.cfg.fmt, params=params)]
