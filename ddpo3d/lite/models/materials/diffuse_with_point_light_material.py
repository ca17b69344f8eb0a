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
        get_activation(self.cfg.albedo_activation)
        self.register_buffer("ambient_light_color", torch.as_tensor(self.cfg.ambient_light_color, dtype=torch.float32))
        self.register_buffer("diffuse_light_color", torch.as_tensor(self.cfg.diffuse_light_color, dtype=torch.float32))
        self.ambient_only = False

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
        if ambient_ratio is not None:
            diffuse_light_color = (1 - ambient_ratio) * torch.ones_like(self.diffuse_light_color)
            ambient_light_color = ambient_ratio * torch.ones_like(self.ambient_light_color)
        elif self.training and self.cfg.soft_shading:
            diffuse_light_color = torch.full_like(self.diffuse_light_color, random.random())
            ambient_light_color = 1.0 - diffuse_light_color
        else:
            diffuse_light_color = self.diffuse_light_color
            ambient_light_color = self.ambient_light_color

        light_directions = F.normalize(light_positions - positions, dim=-1)
        diffuse_light = dot(shading_normal, light_directions).clamp(min=0.0) * diffuse_light_color
        textureless_color = diffuse_light + ambient_light_color
        color = albedo.clamp(0.0, 1.0) * textureless_color

        if shading is None:
            if self.training:
                # one augmentation for the whole batch
                if self.ambient_only or random.random() > self.cfg.diffuse_prob:
                    shading = "albedo"
                elif random.random() < self.cfg.textureless_prob:
                    shading = "textureless"
                else:
                    shading = "diffuse"
            else:
                shading = "albedo" if (self.ambient_only or self.cfg.ambient_only_on_test) else "diffuse"

        # "* 0" keeps every parameter in the graph (as threestudio, for DDP)
        if shading == "albedo":
            return albedo + textureless_color * 0
        if shading == "textureless":
            return albedo * 0 + textureless_color
        if shading == "diffuse":
            return color
        raise ValueError(f"Unknown shading type {shading!r}: use one of {', '.join(SHADINGS)}")

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def export(self, features: Float[Tensor, "*N Nf"], **kwargs) -> Dict[str, Any]:
        albedo = get_activation(self.cfg.albedo_activation)(features[..., :3]).clamp(0.0, 1.0)
        return {"albedo": albedo}
