"""Renderer base classes (threestudio's ``models/renderers/base.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpo3d.lite.models.background.base import BaseBackground
from ddpo3d.lite.models.geometry.base import BaseImplicitGeometry
from ddpo3d.lite.models.materials.base import BaseMaterial
from ddpo3d.lite.utils.base import BaseModule
from ddpo3d.utils.typing import Any, Dict, Float, Tensor


class Renderer(BaseModule):
    """Holds geometry / material / background by reference (not as submodules, so their
    parameters are owned by the system) and the scene box ``[-radius, radius]^3``."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self, geometry: BaseImplicitGeometry, material: BaseMaterial, background: BaseBackground) -> None:
        @dataclass
        class SubModules:
            geometry: BaseImplicitGeometry
            material: BaseMaterial
            background: BaseBackground

        self.sub_modules = SubModules(geometry, material, background)
        r = self.cfg.radius
        self.bbox: Float[Tensor, "2 3"]
        self.register_buffer("bbox", torch.as_tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))

    def forward(self, *args, **kwargs) -> Dict[str, Any]:
        raise NotImplementedError

    @property
    def geometry(self) -> BaseImplicitGeometry:
        return self.sub_modules.geometry

    @property
    def material(self) -> BaseMaterial:
        return self.sub_modules.material

    @property
    def background(self) -> BaseBackground:
        return self.sub_modules.background

    def set_geometry(self, geometry: BaseImplicitGeometry) -> None:
        self.sub_modules.geometry = geometry

    def set_material(self, material: BaseMaterial) -> None:
        self.sub_modules.material = material

    def set_background(self, background: BaseBackground) -> None:
        self.sub_modules.background = background


class VolumeRenderer(Renderer):
    pass


class Rasterizer(Renderer):
    pass
