"""threestudio's object model: typed ``Config``, ``configure()``, ``Updateable``.

Same names and semantics as ``threestudio/utils/base.py`` (v0.2.3); configs are parsed
strictly, naming an unknown key and the class it was given to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ddpo3d.lite.utils.misc import get_device
from ddpo3d.utils.config import parse_structured, to_primitive
from ddpo3d.utils.typing import Any, DictConfig, Optional, Tuple, Union


class NotSupportedByLiteError(NotImplementedError):
    """A threestudio option the built-in runtime does not implement was switched on."""


def unsupported(key: str, value: Any, where: Optional[str] = None) -> NotSupportedByLiteError:
    """The one error for a threestudio option the runtime accepts but does not implement.

    Args:
        key: the config key (or call option).
        value: the value it was given.
        where: the class it was given to.

    Returns:
        ``NotSupportedByLiteError("[where: ]<key>=<value> is not supported by the built-in
        runtime ddpo3d.lite; run with threestudio")`` (raise it).
    """
    prefix = f"{where}: " if where else ""
    return NotSupportedByLiteError(
        f"{prefix}{key}={value!r} is not supported by the built-in runtime ddpo3d.lite; run with threestudio"
    )


def check_supported(obj: Any) -> None:
    """Raise :func:`unsupported` for the first of ``type(obj).unsupported_keys`` whose value
    differs from its ``Config`` default.

    Lite classes keep threestudio's ``Config`` fields (names, types, defaults) so that every
    threestudio config parses; a field whose feature the runtime lacks is listed in the class's
    ``unsupported_keys`` and may only keep its default.
    """
    keys = getattr(type(obj), "unsupported_keys", ())
    if not keys:
        return
    defaults = {}
    for f in dataclasses.fields(type(obj).Config):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    for key in keys:
        value = to_primitive(obj.cfg[key])
        if value != defaults[key]:
            raise unsupported(key, value, type(obj).__name__)


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
    #: Config keys whose feature the runtime lacks: non-default values are an error (:func:`check_supported`).
    unsupported_keys: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=type(self).__name__)
        check_supported(self)
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
    #: Config keys whose feature the runtime lacks: non-default values are an error (:func:`check_supported`).
    unsupported_keys: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=type(self).__name__)
        check_supported(self)
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
