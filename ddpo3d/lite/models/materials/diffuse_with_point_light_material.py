"""``diffuse-with-point-light-material``: Lambertian shading under a point light (DreamFusion)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.materials.base import BaseMaterial
from ddpo3d.lite.utils.ops import dot, get_activation
from ddpo3d.utils.typing import Any, Dict, Float, Optional, Tensor, Tuple

SHADINGS = ("albedo", "textureless", "diffuse")


def lambert_light(
    normal: Float[Tensor, "... 3"],
    positions: Float[Tensor, "... 3"],
    light_positions: Float[Tensor, "... 3"],
    ambient: Float[Tensor, " 3"],
    diffuse: Float[Tensor, " 3"],
) -> Float[Tensor, "... 3"]:
    """Light reaching each point: ``ambient + diffuse * max(0, n . l)``, ``l`` the unit vector to the light.

    Args:
        normal: unit surface normals.
        positions: surface points.
        light_positions: point-light position per point.
        ambient: ambient light colour.
        diffuse: diffuse light colour.

    Returns:
        The light colour per point (the "textureless" render).
    """
    to_light = F.normalize(light_positions - positions, dim=-1)
    return dot(normal, to_light).clamp(min=0.0) * diffuse + ambient


@threestudio.register("diffuse-with-point-light-material")
class DiffuseWithPointLightMaterial(BaseMaterial):
    """DreamFusion's shading (Poole et al. 2022, Sec. 3.1, Eq. 6 of its appendix):
    ``c = albedo * (l_a + l_d * max(0, n . (p_light - x)/|p_light - x|))``.

    During training one shading per batch is drawn: ``albedo`` (no lighting) with
    probability ``1 - diffuse_prob`` (always during the first ``ambient_only_steps``), else
    ``textureless`` (white albedo) with probability ``textureless_prob``, else ``diffuse``.
    In evaluation ``diffuse`` (or ``albedo`` while ambient-only / ``ambient_only_on_test``).

    Config keys (threestudio's): ``ambient_light_color``, ``diffuse_light_color``,
    ``ambient_only_steps``, ``diffuse_prob``, ``textureless_prob``, ``albedo_activation``,
    ``soft_shading`` (random ambient/diffuse split in training), ``ambient_only_on_test``.
    """

    @dataclass
    class Config(BaseMaterial.Config):
        ambient_light_color: Tuple[float, float, float] = (0.1, 0.1, 0.1)
        diffuse_light_color: Tuple[float, float, float] = (0.9, 0.9, 0.9)
        ambient_only_steps: int = 1000
        diffuse_prob: float = 0.75
        textureless_prob: float = 0.5
        albedo_activation: str = "sigmoid"
        soft_shading: bool = False
        ambient_only_on_test: bool = False

    cfg: Config

    def configure(self) -> None:
        self.requires_normal = True
        get_activation(self.cfg.albedo_activation)  # an unknown name fails here, not mid-training
        for name in ("ambient_light_color", "diffuse_light_color"):
            self.register_buffer(name, torch.tensor(getattr(self.cfg, name), dtype=torch.float32))
        self.ambient_only = False

    def _lights(self, ambient_ratio: Optional[float]) -> Tuple[Tensor, Tensor]:
        """(ambient, diffuse) light colours: white lights split by ``ambient_ratio`` when it is
        given, a random split per call with ``soft_shading`` in training, else the configured ones."""
        if ambient_ratio is None and self.training and self.cfg.soft_shading:
            diffuse = torch.full_like(self.diffuse_light_color, random.random())
            return 1.0 - diffuse, diffuse
        if ambient_ratio is None:
            return self.ambient_light_color, self.diffuse_light_color
        white = torch.ones_like(self.ambient_light_color)
        return ambient_ratio * white, (1 - ambient_ratio) * white

    def _pick_shading(self) -> str:
        """One shading for the whole batch (DreamFusion's augmentation in training)."""
        if not self.training:
            return "albedo" if (self.ambient_only or self.cfg.ambient_only_on_test) else "diffuse"
        if self.ambient_only or random.random() > self.cfg.diffuse_prob:
            return "albedo"
        return "textureless" if random.random() < self.cfg.textureless_prob else "diffuse"

    def forward(
        self,
        features: Float[Tensor, "B ... Nf"],
        positions: Float[Tensor, "B ... 3"],
        shading_normal: Float[Tensor, "B ... 3"],
        light_positions: Float[Tensor, "B ... 3"],
        ambient_ratio: Optional[float] = None,
        shading: Optional[str] = None,
        **kwargs,
    ) -> Float[Tensor, "B ... 3"]:
        """Colour per sample.

        Args:
            features: geometry features (first 3 are the pre-activation albedo).
            positions: sample positions.
            shading_normal: unit normals.
            light_positions: point-light position per sample.
            ambient_ratio: if given, ambient = ratio and diffuse = 1 - ratio (white lights).
            shading: force ``"albedo"``, ``"textureless"`` or ``"diffuse"``.

        Returns:
            RGB ``[..., 3]``.
        """
        albedo = get_activation(self.cfg.albedo_activation)(features[..., :3])
        ambient, diffuse = self._lights(ambient_ratio)
        light = lambert_light(shading_normal, positions, light_positions, ambient, diffuse)
        shading = self._pick_shading() if shading is None else shading
        # every branch keeps both albedo and light in the graph ("0 *"), so no parameter is
        # ever unused in a step (as threestudio, for DDP)
        if shading == "albedo":
            return albedo + 0 * light
        if shading == "textureless":
            return light + 0 * albedo
        if shading == "diffuse":
            return albedo.clamp(0.0, 1.0) * light
        raise ValueError(f"Unknown shading type {shading!r}: use one of {', '.join(SHADINGS)}")

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def export(self, features: Float[Tensor, "*N Nf"], **kwargs) -> Dict[str, Any]:
        """``{"albedo": [..., 3]}`` in [0, 1] (mesh vertex colours)."""
        return {"albedo": get_activation(self.cfg.albedo_activation)(features[..., :3]).clamp(0.0, 1.0)}
