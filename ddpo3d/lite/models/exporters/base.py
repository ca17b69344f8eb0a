"""Exporter base: turns a trained geometry (+ material, background) into files.

threestudio 0.2.3's ``models/exporters/base.py`` interface: an exporter is called with no
arguments and returns a list of :class:`ExporterOutput`; the system saves each one with
its ``save_<save_type>`` method (``save_obj``, ``save_ply`` ...) under
``save/it{step}-export/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpo3d.lite.utils.base import BaseObject
from ddpo3d.utils.typing import Any, Dict, List


@dataclass
class ExporterOutput:
    """One file to write: ``save_name`` relative to the export folder, the saver to use
    (``save_type``: ``"obj"`` calls ``SaverMixin.save_obj``) and its keyword arguments."""

    save_name: str
    save_type: str
    params: Dict[str, Any]


class Exporter(BaseObject):
    """Base class; subclasses implement ``__call__``.

    Args (to ``configure``):
        geometry, material, background: the system's trained modules.
    """

    @dataclass
    class Config(BaseObject.Config):
        save_video: bool = False  # also render the test turntable during --export

    cfg: Config

    def configure(self, geometry: Any, material: Any, background: Any) -> None:
        # kept in a plain holder so the modules are not registered twice as children
        self._modules_ = {"geometry": geometry, "material": material, "background": background}

    @property
    def geometry(self) -> Any:
        return self._modules_["geometry"]

    @property
    def material(self) -> Any:
        return self._modules_["material"]

    @property
    def background(self) -> Any:
        return self._modules_["background"]

    def __call__(self, *args, **kwargs) -> List[ExporterOutput]:
        raise NotImplementedError
