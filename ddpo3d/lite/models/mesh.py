"""Triangle mesh container (threestudio's ``models/mesh.py`` names, the parts exporters use).

``Mesh(v_pos, t_pos_idx)`` with ``extras``, ``remove_outlier``, vertex normals, and
``to_trimesh`` / ``export`` helpers writing OBJ / PLY / GLB (via trimesh).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import ddpo3d.lite as threestudio
from ddpo3d.utils.typing import Any, Dict, Float, Integer, Optional, Tensor, Union


class Mesh:
    """A triangle mesh.

    Args:
        v_pos: vertex positions ``[Nv, 3]``.
        t_pos_idx: triangle vertex indices ``[Nf, 3]`` (int64).
        **kwargs: extra attributes stored in ``extras`` (e.g. ``bbox``).
    """

    def __init__(self, v_pos: Float[Tensor, "Nv 3"], t_pos_idx: Integer[Tensor, "Nf 3"], **kwargs) -> None:
        self.v_pos = v_pos
        self.t_pos_idx = t_pos_idx
        self._v_nrm: Optional[Tensor] = None
        self._v_rgb: Optional[Tensor] = None
        self.extras: Dict[str, Any] = {}
        for k, v in kwargs.items():
            self.add_extra(k, v)

    def add_extra(self, k: str, v: Any) -> None:
        self.extras[k] = v

    @property
    def requires_grad(self) -> bool:
        return self.v_pos.requires_grad

    @property
    def v_nrm(self) -> Float[Tensor, "Nv 3"]:
        """Area-weighted vertex normals (sum of adjacent face normals, normalised)."""
        if self._v_nrm is None:
            self._v_nrm = self._compute_vertex_normal()
        return self._v_nrm

    @property
    def v_rgb(self) -> Optional[Float[Tensor, "Nv 3"]]:
        return self._v_rgb

    def set_vertex_color(self, v_rgb: Float[Tensor, "Nv 3"]) -> None:
        """Attach per-vertex colours in ``[0, 1]`` (written by :meth:`export`)."""
        if v_rgb.shape != self.v_pos.shape:
            raise ValueError(f"vertex colours {tuple(v_rgb.shape)} do not match vertices {tuple(self.v_pos.shape)}")
        self._v_rgb = v_rgb

    def _compute_vertex_normal(self) -> Float[Tensor, "Nv 3"]:
        i0, i1, i2 = self.t_pos_idx[:, 0], self.t_pos_idx[:, 1], self.t_pos_idx[:, 2]
        v0, v1, v2 = self.v_pos[i0], self.v_pos[i1], self.v_pos[i2]
        face_normals = torch.cross(v1 - v0, v2 - v0, dim=-1)  # |n| = 2 * area
        v_nrm = torch.zeros_like(self.v_pos)
        for i in (i0, i1, i2):
            v_nrm = v_nrm.index_add(0, i, face_normals)
        # vertices without faces get an arbitrary unit normal
        v_nrm = torch.where(v_nrm.norm(dim=-1, keepdim=True) > 1e-20, v_nrm, torch.tensor([0.0, 0.0, 1.0]).to(v_nrm))
        return F.normalize(v_nrm, dim=-1)

    def to_trimesh(self):
        """This mesh as a ``trimesh.Trimesh`` (vertex colours included when set)."""
        import trimesh

        kwargs = {}
        if self._v_rgb is not None:
            rgb = (self._v_rgb.detach().clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
            kwargs["vertex_colors"] = rgb
        return trimesh.Trimesh(
            vertices=self.v_pos.detach().cpu().numpy(),
            faces=self.t_pos_idx.detach().cpu().numpy(),
            process=False,
            **kwargs,
        )

    def export(self, path: str) -> str:
        """Write the mesh; the format follows the extension (``.obj``, ``.ply``, ``.glb``...).

        Returns:
            ``path``.
        """
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.to_trimesh().export(path)
        return path

    def remove_outlier(self, outlier_n_faces_threshold: Union[int, float]) -> "Mesh":
        """Drop connected components with fewer faces than the threshold.

        Args:
            outlier_n_faces_threshold: an int (face count) or a float (fraction of the
                largest component's face count).

        Returns:
            A new mesh (``extras`` kept); ``self`` when differentiable or empty.
        """
        if self.requires_grad:
            threestudio.debug("Mesh is differentiable, not removing outliers")
            return self
        if self.t_pos_idx.shape[0] == 0:
            return self
        import trimesh

        mesh = trimesh.Trimesh(
            vertices=self.v_pos.detach().cpu().numpy(), faces=self.t_pos_idx.detach().cpu().numpy(), process=False
        )
        components = mesh.split(only_watertight=False)
        if len(components) == 0:
            return self
        if isinstance(outlier_n_faces_threshold, float):
            n_faces_threshold = int(max(c.faces.shape[0] for c in components) * outlier_n_faces_threshold)
        else:
            n_faces_threshold = int(outlier_n_faces_threshold)
        kept = [c for c in components if c.faces.shape[0] >= n_faces_threshold]
        merged = trimesh.util.concatenate(kept)
        clean = Mesh(
            torch.from_numpy(merged.vertices).to(self.v_pos), torch.from_numpy(merged.faces).to(self.t_pos_idx)
        )
        clean.extras = self.extras
        return clean
