"""Material base class (threestudio's ``models/materials/base.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ddpo3d.lite.utils.base import BaseModule
from ddpo3d.utils.typing import Any, Dict, Float, Tensor


class BaseMaterial(BaseModule):
    """Maps per-sample geometry features (and normals, positions, lights) to colour.

    ``requires_normal`` tells the renderer to ask the geometry for normals.
    """

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config
    requires_normal: bool = False
    requires_tangent: bool = False

    def configure(self) -> None:
        pass

    def forward(self, *args, **kwargs) -> Float[Tensor, "*B 3"]:
        raise NotImplementedError

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {}
