"""Renderer base classes, under threestudio's names (``Renderer``, ``VolumeRenderer``, ``Rasterizer``).

A renderer draws a scene made of three parts the *system* owns: geometry, material and
background. The renderer only points at them, so their parameters are registered once (on the
system, where the optimizer's parameter groups name them) and never twice through the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpo3d.lite.models.background.base import BaseBackground
from ddpo3d.lite.models.geometry.base import BaseImplicitGeometry
from ddpo3d.lite.models.materials.base import BaseMaterial
from ddpo3d.lite.utils.base import BaseModule
from ddpo3d.utils.typing import Any, Dict, Float, Tensor

_PARTS = ("geometry", "material", "background")


def scene_box(radius: float) -> Float[Tensor, "2 3"]:
    """The axis-aligned cube ``[-radius, radius]^3`` as ``[[min xyz], [max xyz]]``.

    Args:
        radius: half the side of the cube.

    Returns:
        A float32 tensor of shape ``(2, 3)``.
    """
    corner = torch.full((3,), float(radius), dtype=torch.float32)
    return torch.stack([-corner, corner])


class Renderer(BaseModule):
    """Base of every renderer.

    Config: ``radius`` (scene box half-size, default 1.0), kept as the ``bbox`` buffer.

    The scene parts are held in a plain dict that ``nn.Module`` does not traverse; read them with
    the ``geometry`` / ``material`` / ``background`` properties and swap them with ``set_*``.
    Subclasses implement ``forward``.
    """

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self, geometry: BaseImplicitGeometry, material: BaseMaterial, background: BaseBackground) -> None:
        # object.__setattr__: a dict attribute is not a submodule, and this keeps nn.Module's
        # __setattr__ from ever seeing the parts
        object.__setattr__(self, "_scene", dict(zip(_PARTS, (geometry, material, background))))
        self.bbox: Float[Tensor, "2 3"]
        self.register_buffer("bbox", scene_box(self.cfg.radius))

    def forward(self, *args, **kwargs) -> Dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    @property
    def geometry(self) -> BaseImplicitGeometry:
        return self._scene["geometry"]

    @property
    def material(self) -> BaseMaterial:
        return self._scene["material"]

    @property
    def background(self) -> BaseBackground:
        return self._scene["background"]

    def set_geometry(self, geometry: BaseImplicitGeometry) -> None:
        self._scene["geometry"] = geometry

    def set_material(self, material: BaseMaterial) -> None:
        self._scene["material"] = material

    def set_background(self, background: BaseBackground) -> None:
        self._scene["background"] = background


class VolumeRenderer(Renderer):
    """Renderers that integrate density along rays (``nerf-volume-renderer``)."""


class Rasterizer(Renderer):
    """Renderers that rasterise primitives (threestudio's mesh rasterisers; not in this runtime)."""
