"""Normal consistency ("normal-consistency"): rendered normals agree with the rendered depth.

A geometry reward that needs no weights (Nabla-R2D3, Liu et al. 2025, arXiv 2506.15684, uses
depth-normal consistency as a 3D-aware reward). Per pixel, the surface point is
``P = rays_o + (depth / opacity) · rays_d`` (threestudio's ``depth`` is the opacity-weighted
expected ray distance, so dividing by the opacity gives the distance to the surface), the
depth normal is ``n_d = normalize((P[u+1] - P) × (P[v+1] - P))`` oriented towards the camera,
and the reward of a view is the foreground-weighted mean cosine

    R = Σ_p m_p cos(n_r(p), n_d(p)) / Σ_p m_p     in [-1, 1],

with n_r the rendered normal and m_p = 1 where the pixel and its right / lower neighbours have
opacity above ``mask_threshold``. It is differentiable in both the normal and the depth.

Renderer outputs: the reward contract is ``reward(images, prompts)``; this reward also needs
the renderer's outputs, passed as a keyword ``reward(images, prompts, render_out=...)`` with
``comp_normal`` [B, H, W, 3], ``depth`` and ``opacity`` [B, H, W, 1] (threestudio's names) and
the camera rays ``rays_o`` / ``rays_d`` [B, H, W, 3] (the batch's). Rewards that need them say
so with ``needs_render_out = True``; a caller holding the system's render output ``out`` and the
camera ``batch`` passes ``render_out={**batch, **out}``. ``comp_normal`` is threestudio's
visualisation encoding ``(n + 1)/2 · opacity`` by default (``normal_encoding: visual``, as its
and ddpo3d.lite's NeRF renderer write it) or the raw unit normal (``raw``). Renderers without
normals (geometry without ``normal_type``, the Gaussian splat renderer) raise a clear error.

Training with it: ``objective: {type: reward-backprop}`` with ``system_type: ddpo3d-system``, which
hands the guidance its render outputs during training (``configs/toy/normal-consistency-backprop.yaml``);
the gradient reaches the geometry through ``comp_normal``, ``depth`` and ``opacity``, so the renderer
must return normals in training (``system.renderer.return_comp_normal: true``, a ``normal_type`` and a
material with ``requires_normal``). Denoised predictions x̂_0 (the ``ddpo3d``, ``dreamfl``,
``reward-sds``, ``dreamdpo`` and ``reward-tilted`` objectives) have no geometry: those objectives with
this reward are a configuration error (:func:`ddpo3d.objectives.combined.check_reward_for_objective`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpo3d.rewards.base import Reward, RewardOutput, validate_inputs
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.finite import check_finite_scores
from ddpo3d.utils.typing import Any, Dict, Float, List, Optional, Sequence, Tensor

__all__ = ["NormalConsistencyReward", "depth_normals", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("comp_normal", "depth", "opacity", "rays_o", "rays_d")
ENCODINGS = ("visual", "raw")


def depth_normals(
    depth: Float[Tensor, "B H W 1"],
    opacity: Float[Tensor, "B H W 1"],
    rays_o: Float[Tensor, "B H W 3"],
    rays_d: Float[Tensor, "B H W 3"],
    eps: float = 1e-6,
) -> Float[Tensor, "B Hm1 Wm1 3"]:
    """Unit normals of the depth surface by forward differences, facing the camera.

    Args:
        depth: opacity-weighted expected ray distance (threestudio's ``depth``).
        opacity: accumulated opacity.
        rays_o, rays_d: camera rays (``rays_d`` need not be unit length; P = o + t·d).
        eps: clamp of the opacity in the division.

    Returns:
        ``[B, H-1, W-1, 3]`` normals at the top-left pixel of each 2x2 cell.
    """
    dist = depth / opacity.clamp(min=eps)
    points = rays_o + dist * rays_d
    du = points[:, :-1, 1:] - points[:, :-1, :-1]
    dv = points[:, 1:, :-1] - points[:, :-1, :-1]
    n = F.normalize(torch.cross(du, dv, dim=-1), dim=-1, eps=1e-12)
    facing = (n * rays_d[:, :-1, :-1]).sum(-1, keepdim=True)
    return torch.where(facing > 0, -n, n)


@register_reward("normal-consistency")
class NormalConsistencyReward(Reward):
    """Mean cosine between rendered normals and depth-derived normals on the foreground. Differentiable."""

    differentiable = True
    needs_render_out = True

    @dataclass
    class Config:
        normal_encoding: str = "visual"  # comp_normal is "visual" ((n+1)/2 · opacity, threestudio) | "raw" (unit n)
        mask_threshold: float = 0.5  # pixels with opacity above this (and their right / lower neighbours) count
        orient_rendered: bool = False  # flip rendered normals to face the camera first (inverted normals then count)

    def configure(self) -> None:
        if self.cfg.normal_encoding not in ENCODINGS:
            raise ConfigError(
                f"reward {self.name!r}: normal_encoding must be one of {ENCODINGS}, got {self.cfg.normal_encoding!r}"
            )
        if not 0.0 <= self.cfg.mask_threshold < 1.0:
            raise ConfigError(f"reward {self.name!r}: mask_threshold must be in [0, 1), got {self.cfg.mask_threshold}")

    def check_render_out(self, render_out: Optional[Dict[str, Any]], batch: int) -> Dict[str, Tensor]:
        """The needed renderer outputs, or a ``ValueError`` naming what is missing and how to get it."""
        if render_out is None:
            raise ValueError(
                f"reward {self.name!r} scores geometry and needs the renderer's outputs: call "
                "reward(images, prompts, render_out={**batch, **render}) with " + ", ".join(REQUIRED_KEYS)
            )
        missing = [k for k in REQUIRED_KEYS if render_out.get(k) is None]
        if missing:
            hint = ""
            if "comp_normal" in missing:
                hint = (
                    " (the renderer produced no normals: set system.geometry.normal_type, e.g. 'analytic' or "
                    "'finite_difference', and a material that requests them, e.g. system.material.requires_normal: "
                    "true; in training also system.renderer.return_comp_normal: true; the Gaussian splat renderer "
                    "has none)"
                )
            raise ValueError(f"reward {self.name!r}: render_out lacks {missing}{hint}")
        out = {k: render_out[k] for k in REQUIRED_KEYS}
        for k, v in out.items():
            want = 1 if k in ("depth", "opacity") else 3
            if not torch.is_tensor(v) or v.dim() != 4 or v.shape[0] != batch or v.shape[-1] != want:
                raise ValueError(
                    f"reward {self.name!r}: render_out[{k!r}] must be [{batch}, H, W, {want}], "
                    f"got {list(getattr(v, 'shape', []))}"
                )
        return out

    def forward(
        self,
        images: Float[Tensor, "B H W 3"],
        prompts: Sequence[str],
        render_out: Optional[Dict[str, Any]] = None,
    ) -> Float[Tensor, " B"]:
        """``reward(images, prompts, render_out=...) -> [B]`` (the images only give the batch size)."""
        prompts = validate_inputs(images, prompts, where=f"reward {self.name!r}")
        ro = self.check_render_out(render_out, images.shape[0])
        scores = self._check_scores(self.consistency(**ro), images)
        check_finite_scores(self, scores)  # raises only inside a training step (ddpo3d.utils.finite)
        return scores

    def evaluate(
        self,
        images: Float[Tensor, "B H W 3"],
        prompts: Sequence[str],
        render_out: Optional[Dict[str, Any]] = None,
    ) -> RewardOutput:
        """:meth:`Reward.evaluate` with the renderer outputs (see :meth:`forward`)."""
        scores = self.forward(images, prompts, render_out=render_out)
        return RewardOutput(scores, {self.name: scores})

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        self.check_render_out(None, images.shape[0])  # raises: this reward needs render_out
        raise AssertionError  # pragma: no cover

    def consistency(
        self,
        comp_normal: Float[Tensor, "B H W 3"],
        depth: Float[Tensor, "B H W 1"],
        opacity: Float[Tensor, "B H W 1"],
        rays_o: Float[Tensor, "B H W 3"],
        rays_d: Float[Tensor, "B H W 3"],
    ) -> Float[Tensor, " B"]:
        """The foreground-weighted mean cosine per view."""
        if self.cfg.normal_encoding == "visual":
            normal = 2.0 * comp_normal / opacity.clamp(min=1e-6) - 1.0
        else:
            normal = comp_normal
        n_r = F.normalize(normal[:, :-1, :-1], dim=-1, eps=1e-12)
        if self.cfg.orient_rendered:
            facing = (n_r * rays_d[:, :-1, :-1]).sum(-1, keepdim=True)
            n_r = torch.where(facing > 0, -n_r, n_r)
        n_d = depth_normals(depth, opacity, rays_o, rays_d)
        fg = (opacity[..., 0] > self.cfg.mask_threshold).to(n_r.dtype)
        mask = fg[:, :-1, :-1] * fg[:, :-1, 1:] * fg[:, 1:, :-1]
        cos = (n_r * n_d).sum(-1)
        return (mask * cos).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)
