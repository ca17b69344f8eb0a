"""``ddpo3d-gaussian-splat-renderer``: renders ``ddpo3d-gaussian-splat`` geometry from
threestudio's camera batch with gsplat (CUDA) or the pure-torch tiled rasteriser.

Camera: the batch's ``c2w`` (OpenGL axes, threestudio's ``data/uncond.py``) is turned into
an OpenCV view matrix; the focal length is ``0.5 H / tan(fovy / 2)`` as in threestudio's
ray directions, from ``fovy`` when the batch has it, else from ``proj_mtx``, else from
``mvp_mtx @ c2w``. So pixel ``(u, v)`` of the output sees along the batch's ``rays_d[v, u]``.

Output keys (threestudio's NeRF renderer's, plus densification inputs):
``comp_rgb = comp_rgb_fg + (1 - opacity) * comp_rgb_bg``, ``comp_rgb_fg`` (premultiplied
splat colour), ``comp_rgb_bg`` (the background module at ``rays_d``, or ``bg_color``),
``opacity`` ``[B, H, W, 1]``, ``depth`` ``[B, H, W, 1]`` (accumulated camera-z depth
``sum w_i z_i``, 0 on the background, like the NeRF renderer's unnormalised depth),
``viewspace_points`` ``[B, N, 2]`` (projected means; their ``.grad`` is retained in
training), ``visibility_filter`` ``[B, N]`` and ``radii`` ``[B, N]`` (max pixel radius).

Material: colours come from the Gaussians' SH coefficients; the material module is not
used (a non-``no-material`` material triggers a one-time warning), as in DreamGaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpo3d.gaussians.projection import (
    fovy_from_mvp,
    fovy_from_projection,
    intrinsics_from_fovy,
    opengl_c2w_to_viewmats,
)
from ddpo3d.gaussians.rasterize import rasterize, resolve_backend
from ddpo3d.host import BaseModule, register, warn
from ddpo3d.utils.typing import Any, Dict, Float, Optional, Tensor


@register("ddpo3d-gaussian-splat-renderer")
class GaussianSplatRenderer(BaseModule):
    """Rasterises Gaussian geometry for threestudio systems (``renderer(**batch)``)."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0  # threestudio Renderer key (scene box); unused by splatting
        backend: str = "auto"  # "auto" (gsplat on CUDA, else torch) | "gsplat" | "torch"
        tile_size: int = 8  # pixels per tile edge (torch: 8 fastest on CPU; gsplat default 16)
        near_plane: float = 0.01  # cull Gaussians closer than this (camera z)
        far_plane: float = 1e10  # cull Gaussians farther than this
        eps2d: float = 0.3  # screen-space dilation (px^2), 3DGS low-pass filter
        alpha_max: float = 0.999  # per-Gaussian alpha clamp (torch backend; gsplat fixes 0.999)
        chunk_elements: int = 262144  # torch backend memory/speed knob (pixel-Gaussian pairs per chunk)

    cfg: Config

    def configure(self, geometry: Any, material: Any = None, background: Any = None) -> None:
        if self.cfg.backend not in ("auto", "gsplat", "torch"):
            raise ValueError(
                f"ddpo3d-gaussian-splat-renderer: backend must be 'auto', 'gsplat' or 'torch', got {self.cfg.backend!r}"
            )

        # references, not submodules: the system owns their parameters (threestudio's Renderer)
        @dataclass
        class SubModules:
            geometry: Any
            material: Any
            background: Any

        self.sub_modules = SubModules(geometry, material, background)
        self._warned_material = False

    @property
    def geometry(self) -> Any:
        return self.sub_modules.geometry

    @property
    def material(self) -> Any:
        return self.sub_modules.material

    @property
    def background(self) -> Any:
        return self.sub_modules.background

    def set_geometry(self, geometry: Any) -> None:
        self.sub_modules.geometry = geometry

    def set_material(self, material: Any) -> None:
        self.sub_modules.material = material

    def set_background(self, background: Any) -> None:
        self.sub_modules.background = background

    @staticmethod
    def _fovy(batch: Dict[str, Any], c2w: Tensor) -> Tensor:
        if batch.get("fovy") is not None:
            fovy = torch.as_tensor(batch["fovy"], dtype=c2w.dtype, device=c2w.device)
            return fovy.reshape(-1).expand(c2w.shape[0]) if fovy.numel() == 1 else fovy.reshape(-1)
        if batch.get("proj_mtx") is not None:
            return fovy_from_projection(batch["proj_mtx"].to(c2w))
        if batch.get("mvp_mtx") is not None:
            return fovy_from_mvp(batch["mvp_mtx"].to(c2w), c2w)
        raise KeyError("ddpo3d-gaussian-splat-renderer: the camera batch needs 'fovy', 'proj_mtx' or 'mvp_mtx'")

    @staticmethod
    def _ray_dirs(c2w: Tensor, fovy: Tensor, height: int, width: int) -> Float[Tensor, "B H W 3"]:
        """World ray directions as threestudio's ``get_ray_directions`` + ``get_rays``."""
        focal = 0.5 * height / torch.tan(0.5 * fovy)
        v, u = torch.meshgrid(
            torch.arange(height, device=c2w.device, dtype=c2w.dtype) + 0.5,
            torch.arange(width, device=c2w.device, dtype=c2w.dtype) + 0.5,
            indexing="ij",
        )
        f = focal[:, None, None]
        d = torch.stack([(u - 0.5 * width) / f, -(v - 0.5 * height) / f, -torch.ones_like(u).expand_as(f * u)], -1)
        return F.normalize(torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d), dim=-1)

    def forward(
        self,
        c2w: Float[Tensor, "B 4 4"],
        height: int,
        width: int,
        rays_d: Optional[Float[Tensor, "B H W 3"]] = None,
        bg_color: Optional[Tensor] = None,
        **batch: Any,
    ) -> Dict[str, Any]:
        """Render a camera batch.

        Args:
            c2w: camera-to-world matrices (OpenGL axes).
            height: image height.
            width: image width.
            rays_d: per-pixel world ray directions (for the background); derived from the
                camera when absent.
            bg_color: optional background colour overriding the background module
                (``[3]``, ``[B, 3]`` or ``[B, H, W, 3]``), as threestudio's renderers accept.
            **batch: the rest of the datamodule batch: ``fovy`` / ``proj_mtx`` / ``mvp_mtx``
                are read, other keys are ignored.

        Returns:
            See the module docstring.
        """
        geo = self.geometry
        height, width = int(height), int(width)
        c2w = c2w.to(geo.means.device, geo.means.dtype)
        B = c2w.shape[0]
        fovy = self._fovy(batch, c2w)
        viewmats = opengl_c2w_to_viewmats(c2w)
        Ks = intrinsics_from_fovy(fovy, width, height)
        if self.material is not None and not self._warned_material and type(self.material).__name__ != "NoMaterial":
            warn(
                f"ddpo3d-gaussian-splat-renderer: material {type(self.material).__name__} is ignored; "
                f"colours come from the Gaussians' SH coefficients"
            )
            self._warned_material = True

        attrs = geo()
        kwargs: Dict[str, Any] = dict(
            near_plane=self.cfg.near_plane,
            far_plane=self.cfg.far_plane,
            eps2d=self.cfg.eps2d,
            sh_degree=attrs["sh_degree"],
            render_mode="RGB+D",
        )
        backend = resolve_backend(self.cfg.backend, attrs["means"].device)
        if backend == "torch":
            kwargs.update(alpha_max=self.cfg.alpha_max, chunk_elements=self.cfg.chunk_elements)
        render, alpha, meta = rasterize(
            attrs["means"],
            attrs["quats"],
            attrs["scales"],
            attrs["opacities"],
            attrs["colors"],
            viewmats,
            Ks,
            width,
            height,
            backend=backend,
            tile_size=self.cfg.tile_size,
            **kwargs,
        )
        comp_rgb_fg, depth = render[..., :3], render[..., 3:4]

        if bg_color is not None:
            bg = torch.as_tensor(bg_color).to(render)
            comp_rgb_bg = (bg.reshape(-1, 1, 1, 3) if bg.dim() <= 2 else bg).expand(B, height, width, 3)
        elif self.background is not None:
            dirs = rays_d.to(render) if rays_d is not None else self._ray_dirs(c2w, fovy, height, width)
            comp_rgb_bg = self.background(dirs=dirs)
        else:
            comp_rgb_bg = torch.zeros_like(comp_rgb_fg)
        comp_rgb = comp_rgb_fg + (1.0 - alpha) * comp_rgb_bg

        means2d = meta["means2d"]
        radii = meta["radii"]
        radii = radii.max(dim=-1).values if radii.dim() == 3 else radii
        if self.training and means2d.requires_grad:
            means2d.retain_grad()  # densification reads its gradient after backward
            geo.step_pre_backward(
                {
                    "viewspace_points": means2d,
                    "visibility_filter": radii > 0,
                    "radii": radii,
                    "width": width,
                    "height": height,
                }
            )
        return {
            "comp_rgb": comp_rgb,
            "comp_rgb_fg": comp_rgb_fg,
            "comp_rgb_bg": comp_rgb_bg,
            "opacity": alpha,
            "depth": depth,
            "viewspace_points": means2d,
            "visibility_filter": radii > 0,
            "radii": radii,
        }
