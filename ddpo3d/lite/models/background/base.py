"""Background base class (threestudio's ``models/background/base.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ddpo3d.lite.utils.base import BaseModule
from ddpo3d.utils.typing import Float, Tensor


class BaseBackground(BaseModule):
    """Colour seen along a ray that leaves the scene, from the ray direction."""

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def configure(self) -> None:
        pass

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W Nc"]:
        raise NotImplementedError
