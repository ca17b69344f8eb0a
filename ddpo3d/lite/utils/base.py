"""threestudio's object model: typed ``Config``, ``configure()``, ``Updateable``.

Same names and semantics as ``threestudio/utils/base.py`` (v0.2.3); configs are parsed
strictly, naming an unknown key and the class it was given to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ddpo3d.lite.utils.misc import get_device
from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.typing import Any, DictConfig, Optional, Union


class Updateable:
    """Objects whose state follows the training step (schedules, annealing)."""

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        """Call ``update_step`` on every ``Updateable`` attribute, then on ``self``."""
        for attr in self.__dir__():
            if attr.startswith("_"):
                continue
            try:
                module = getattr(self, attr)
            except Exception:
                continue
            if isinstance(module, Updateable):
                module.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def do_update_step_end(self, epoch: int, global_step: int):
        for attr in self.__dir__():
            if attr.startswith("_"):
                continue
            try:
                module = getattr(self, attr)
            except Exception:
                continue
            if isinstance(module, Updateable):
                module.do_update_step_end(epoch, global_step)
        self.update_step_end(epoch, global_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        """Override to update schedule-dependent state."""

    def update_step_end(self, epoch: int, global_step: int):
        """Override to act after the optimiser step."""


def update_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step(epoch, global_step)


def update_end_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step_end(epoch, global_step)


class BaseObject(Updateable):
    """A configurable, non-``nn.Module`` object (guidance, prompt processor)."""

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=type(self).__name__)
        self.device = get_device()
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs) -> None:
        pass


class BaseModule(nn.Module, Updateable):
    """A configurable ``nn.Module`` (geometry, material, background, renderer)."""

    @dataclass
    class Config:
        weights: Optional[str] = None

    cfg: Config

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=type(self).__name__)
        self.device = get_device()
        self.configure(*args, **kwargs)
        if self.cfg.weights is not None:
            path, module_name = self.cfg.weights.split(":")
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            prefix = module_name + "."
            state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
            self.load_state_dict(state)
            self.do_update_step(ckpt["epoch"], ckpt["global_step"], on_load_weights=True)
        self.register_buffer("_dummy", torch.zeros(0).float(), persistent=False)

    def configure(self, *args, **kwargs) -> None:
        pass
