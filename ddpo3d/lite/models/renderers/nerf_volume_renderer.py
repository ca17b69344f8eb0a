"""``nerf-volume-renderer``: NeRF volume rendering in pure PyTorch (no nerfacc)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.background.base import BaseBackground
from ddpo3d.lite.models.geometry.base import BaseImplicitGeometry
from ddpo3d.lite.models.materials.base import BaseMaterial
from ddpo3d.lite.models.renderers.base import VolumeRenderer
from ddpo3d.lite.models.renderers.volume_rendering import (
    accumulate,
    ray_segments,
    render_weights_from_density,
    sample_pdf,
    stratified_samples,
)
from ddpo3d.utils.typing import Any, Dict, Float, Optional, Tensor

ESTIMATORS = ("occgrid", "importance")


@threestudio.register("nerf-volume-renderer")
class NeRFVolumeRenderer(VolumeRenderer):
    """Render rays through an implicit geometry, a material and a background.

    Sampling (``estimator``):

    * ``occgrid`` (threestudio's default): ``num_samples_per_ray`` stratified samples on the
      part of each ray inside the box ``[-radius, radius]^3`` (and ``[near_plane,
      far_plane]``). nerfacc marches with a fixed step ``1.732 * 2 * radius /
      num_samples_per_ray`` and skips cells an occupancy grid marks empty
      (``grid_prune``); here every ray gets exactly ``num_samples_per_ray`` samples and no
      cell is skipped. Skipped cells hold (almost) no density, so images agree; the cost is
      more samples. ``grid_prune`` / ``prune_alpha_threshold`` are accepted and logged.
    * ``importance``: ``num_samples_per_ray_importance`` stratified samples evaluated without
      gradient, then ``num_samples_per_ray`` intervals drawn from their weight PDF (NeRF
      hierarchical sampling), as nerfacc's ``ImportanceEstimator``.
    * ``proposal`` (learned proposal networks) is not supported: an error.

    Output keys (threestudio's): ``comp_rgb``, ``comp_rgb_fg``, ``comp_rgb_bg``,
    ``opacity``, ``depth``, ``z_variance`` as ``[B, H, W, C]``; in training also the packed
    per-sample tensors ``weights [N, 1]``, ``t_points [N, 1]``, ``t_intervals [N, 1]``,
    ``t_dirs [N, 3]``, ``ray_indices [N]``, ``points [N, 3]`` and the geometry outputs
    (``density``, ``features``, ``normal``, ``shading_normal``) with ``N = B*H*W *
    num_samples_per_ray`` (sample ``k`` of ray ``r`` at row ``r * Ns + k``), plus
    ``comp_normal`` (``return_comp_normal``) and ``normal_perturb``
    (``return_normal_perturb``). In evaluation rays are rendered in chunks of about
    ``eval_chunk_size`` samples and ``comp_normal`` is returned whenever normals exist.
    """

    @dataclass
    class Config(VolumeRenderer.Config):
        num_samples_per_ray: int = 512
        eval_chunk_size: int = 160000
        randomized: bool = True
        near_plane: float = 0.0
        far_plane: float = 1e10
        return_comp_normal: bool = False
        return_normal_perturb: bool = False
        # in ["occgrid", "importance"]; "proposal" is not supported by the built-in runtime
        estimator: str = "occgrid"
        # for occgrid (accepted; no occupancy grid in the built-in runtime, see the class doc)
        grid_prune: bool = True
        prune_alpha_threshold: bool = True
        # for proposal (accepted for config compatibility; the estimator itself is an error)
        proposal_network_config: Optional[dict] = None
        prop_optimizer_config: Optional[dict] = None
        prop_scheduler_config: Optional[dict] = None
        num_samples_per_ray_proposal: int = 64
        # for importance
        num_samples_per_ray_importance: int = 64

    cfg: Config

    def configure(self, geometry: BaseImplicitGeometry, material: BaseMaterial, background: BaseBackground) -> None:
        super().configure(geometry, material, background)
        if self.cfg.estimator not in ESTIMATORS:
            raise NotImplementedError(
                f"nerf-volume-renderer estimator {self.cfg.estimator!r} is not supported by the built-in "
                f"runtime; use one of {', '.join(ESTIMATORS)}"
            )
        if self.cfg.num_samples_per_ray < 1:
            raise ValueError(f"num_samples_per_ray must be >= 1, got {self.cfg.num_samples_per_ray}")
        if self.cfg.estimator == "occgrid" and self.cfg.grid_prune:
            threestudio.info(
                "nerf-volume-renderer: grid_prune is accepted but the built-in runtime has no occupancy "
                f"grid; every ray gets {self.cfg.num_samples_per_ray} samples inside the box"
            )
        self.randomized = self.cfg.randomized

    # ------------------------------------------------------------------ sampling
    def _sample(self, rays_o: Tensor, rays_d: Tensor):
        near, far = ray_segments(rays_o, rays_d, self.bbox.to(rays_o), self.cfg.near_plane, self.cfg.far_plane)
        n = self.cfg.num_samples_per_ray
        if self.cfg.estimator == "occgrid":
            t_starts, t_ends, t_positions = stratified_samples(near, far, n, self.randomized)
            return t_starts, t_ends, t_positions
        # importance: a no-grad proposal pass, then intervals from the weight PDF
        n_prop = self.cfg.num_samples_per_ray_importance
        p_starts, p_ends, p_pos = stratified_samples(near, far, n_prop, self.randomized)
        with torch.no_grad():
            positions = rays_o[:, None, :] + rays_d[:, None, :] * p_pos[..., None]
            sigma = self.geometry.forward_density(positions.reshape(-1, 3)).reshape(p_pos.shape)
            w, _, _ = render_weights_from_density(p_starts, p_ends, sigma)
        bins = torch.cat([p_starts, p_ends[:, -1:]], -1)
        edges = sample_pdf(bins, w, n + 1, self.randomized)
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
        return t_starts, t_ends, (t_starts + t_ends) / 2.0

    # ------------------------------------------------------------------ one set of rays
    def _render_rays(
        self,
        rays_o: Float[Tensor, "Nr 3"],
        rays_d: Float[Tensor, "Nr 3"],
        light_positions: Float[Tensor, "Nr 3"],
        **kwargs,
    ) -> Dict[str, Tensor]:
        n_rays = rays_o.shape[0]
        t_starts, t_ends, t_pos = self._sample(rays_o, rays_d)
        ns = t_pos.shape[1]
        positions = (rays_o[:, None, :] + rays_d[:, None, :] * t_pos[..., None]).reshape(-1, 3)
        t_dirs = rays_d[:, None, :].expand(-1, ns, -1).reshape(-1, 3)
        t_light = light_positions[:, None, :].expand(-1, ns, -1).reshape(-1, 3)
        geo_out = self.geometry(positions, output_normal=self.material.requires_normal)
        rgb_fg_all = self.material(
            viewdirs=t_dirs, positions=positions, light_positions=t_light, **geo_out, **kwargs
        )
        weights, _, _ = render_weights_from_density(t_starts, t_ends, geo_out["density"].reshape(n_rays, ns))
        opacity = accumulate(weights)
        depth = accumulate(weights, t_pos[..., None])
        comp_rgb_fg = accumulate(weights, rgb_fg_all.reshape(n_rays, ns, -1))
        # z-variance of the normalised weights (HiFA, Zhu et al. 2023, Eq. 8), kept where opaque
        w_norm = weights / opacity.clamp(min=1e-5)
        z_mean = accumulate(w_norm, t_pos[..., None])
        z_var = accumulate(w_norm, (t_pos[..., None] - z_mean[:, None, :]) ** 2)
        z_variance = z_var * (opacity > 0.5).float()
        out = {
            "comp_rgb_fg": comp_rgb_fg,
            "opacity": opacity,
            "depth": depth,
            "z_variance": z_variance,
            "_weights": weights,
            "_t_starts": t_starts,
            "_t_ends": t_ends,
            "_t_pos": t_pos,
            "_positions": positions,
            "_t_dirs": t_dirs,
            "_geo_out": geo_out,
        }
        if "normal" in geo_out:
            comp_normal = F.normalize(accumulate(weights, geo_out["normal"].reshape(n_rays, ns, 3)), dim=-1)
            out["comp_normal"] = (comp_normal + 1.0) / 2.0 * opacity  # for visualisation
        return out

    def forward(
        self,
        rays_o: Float[Tensor, "B H W 3"],
        rays_d: Float[Tensor, "B H W 3"],
        light_positions: Float[Tensor, "B 3"],
        bg_color: Optional[Tensor] = None,
        **kwargs,
    ) -> Dict[str, Float[Tensor, "..."]]:
        """Render a batch of images.

        Args:
            rays_o, rays_d: ray origins and unit directions.
            light_positions: one point light per image.
            bg_color: overrides the background: ``[B, 3]``, ``[B, H, W, 3]`` or ``[B*H*W, 3]``.
            **kwargs: passed to the material (``ambient_ratio``, ``shading``).

        Returns:
            See the class docstring.
        """
        batch_size, height, width = rays_o.shape[:3]
        rays_o_flat = rays_o.reshape(-1, 3)
        rays_d_flat = rays_d.reshape(-1, 3)
        light_flat = light_positions.reshape(-1, 1, 1, 3).expand(-1, height, width, -1).reshape(-1, 3)
        n_rays = rays_o_flat.shape[0]

        if self.training:
            res = self._render_rays(rays_o_flat, rays_d_flat, light_flat, **kwargs)
            comp_rgb_bg = self.background(dirs=rays_d)
        else:
            chunk = self.cfg.eval_chunk_size
            rays_per_chunk = n_rays if chunk <= 0 else max(1, chunk // max(self.cfg.num_samples_per_ray, 1))
            parts = [
                self._render_rays(
                    rays_o_flat[i : i + rays_per_chunk],
                    rays_d_flat[i : i + rays_per_chunk],
                    light_flat[i : i + rays_per_chunk],
                    **kwargs,
                )
                for i in range(0, n_rays, rays_per_chunk)
            ]
            res = {}
            for key in ("comp_rgb_fg", "opacity", "depth", "z_variance", "comp_normal"):
                if key in parts[0]:
                    vals = [p[key] for p in parts]
                    res[key] = torch.cat(vals if torch.is_grad_enabled() else [v.detach() for v in vals], 0)
            comp_rgb_bg = self.background(dirs=rays_d)

        opacity = res["opacity"]
        if bg_color is None:
            bg_color = comp_rgb_bg
        elif bg_color.shape[:-1] == (batch_size,):
            bg_color = bg_color[:, None, None, :].expand(-1, height, width, -1)
        if bg_color.shape[:-1] == (batch_size, height, width):
            bg_color = bg_color.reshape(batch_size * height * width, -1)
        # alpha compositing over the background (NeRF's background term)
        comp_rgb = res["comp_rgb_fg"] + bg_color * (1.0 - opacity)

        out: Dict[str, Any] = {
            "comp_rgb": comp_rgb.view(batch_size, height, width, -1),
            "comp_rgb_fg": res["comp_rgb_fg"].view(batch_size, height, width, -1),
            "comp_rgb_bg": comp_rgb_bg.view(batch_size, height, width, -1),
            "opacity": opacity.view(batch_size, height, width, 1),
            "depth": res["depth"].view(batch_size, height, width, 1),
            "z_variance": res["z_variance"].view(batch_size, height, width, 1),
        }
        if self.training:
            ns = res["_t_pos"].shape[1]
            geo_out = res["_geo_out"]
            out.update(
                {
                    "weights": res["_weights"].reshape(-1, 1),
                    "t_points": res["_t_pos"].reshape(-1, 1),
                    "t_intervals": (res["_t_ends"] - res["_t_starts"]).reshape(-1, 1),
                    "t_dirs": res["_t_dirs"],
                    "ray_indices": torch.arange(n_rays, device=rays_o.device).repeat_interleave(ns),
                    "points": res["_positions"],
                    **geo_out,
                }
            )
            if "normal" in geo_out:
                if self.cfg.return_comp_normal:
                    out["comp_normal"] = res["comp_normal"].view(batch_size, height, width, 3)
                if self.cfg.return_normal_perturb:
                    positions = res["_positions"]
                    out["normal_perturb"] = self.geometry(
                        positions + torch.randn_like(positions) * 1e-2, output_normal=self.material.requires_normal
                    )["normal"]
        elif "comp_normal" in res:
            out["comp_normal"] = res["comp_normal"].view(batch_size, height, width, 3)
        return out

    def train(self, mode: bool = True):
        self.randomized = mode and self.cfg.randomized
        return super().train(mode=mode)

    def eval(self):
        self.randomized = False
        return super().eval()
