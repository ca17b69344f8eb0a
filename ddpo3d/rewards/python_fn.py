"""A user-supplied reward function, named in the config as ``module:function``.

Block: ``{type: python, target: "my_pkg.rewards:sharpness", differentiable: false, kwargs: {}}``.
The function has the reward contract ``fn(images [B,H,W,3] in [0,1], prompts: list[str],
**kwargs) -> scores`` where ``scores`` is a ``[B]`` tensor, list or numpy array. The module
is imported when the block is built, never before.
"""

from __future__ import annotations

import importlib
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Any, Callable, Dict, Float, List, Tensor

__all__ = ["PythonReward", "RewardTargetImportError", "import_target"]


class RewardTargetImportError(ImportError):
    """The ``target`` of a ``python`` reward block does not import."""


def import_target(target: str) -> Callable:
    """Import ``"package.module:attr.sub_attr"`` and return the callable.

    Raises:
        ConfigError: ``target`` is not of the form ``module:function``.
        RewardTargetImportError: the module does not import, or has no such attribute, or
            the attribute is not callable; the message names ``target``.
    """
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise ConfigError(f"python reward: target must look like 'package.module:function', got {target!r}")
    module_name, attr_path = target.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while executing the module
        raise RewardTargetImportError(
            f"python reward: cannot import module {module_name!r} for target {target!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise RewardTargetImportError(
                f"python reward: module {module_name!r} has no attribute {attr_path!r} (target {target!r})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardTargetImportError(f"python reward: target {target!r} is a {type(obj).__name__}, not a callable")
    return obj


@register_reward("python")
class PythonReward(Reward):
    """Reward computed by a user function ``module:function``."""

    @dataclass
    class Config:
        target: str = MISSING  # "package.module:function" with the (images, prompts) -> [B] contract
        differentiable: bool = False  # true only if the function is differentiable w.r.t. images
        kwargs: Dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the function

    fn: Callable

    def configure(self) -> None:
        if OmegaConf.is_missing(self.cfg, "target"):
            raise ConfigError("python reward: the block needs 'target: package.module:function' (none given)")
        self.fn = import_target(self.cfg.target)
        self.differentiable = bool(self.cfg.differentiable)
        self._kwargs = dict(self.cfg.kwargs)

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """Call the user function; non-differentiable ones see detached images under no_grad."""
        if self.differentiable:
            out = self.fn(images, prompts, **self._kwargs)
        else:
            with torch.no_grad():
                out = self.fn(images.detach(), prompts, **self._kwargs)
        scores = self._to_tensor(out, images)
        if self.differentiable and images.requires_grad and not scores.requires_grad:
            raise ValueError(
                f"python reward {self.cfg.target!r} is declared differentiable but returned scores "
                f"without a gradient path to the images (set differentiable: false, or keep the "
                f"computation in torch)"
            )
        return scores

    def _to_tensor(self, out: Any, images: Tensor) -> Tensor:
        if isinstance(out, torch.Tensor):
            scores = out
        elif isinstance(out, (list, tuple, np.ndarray, numbers.Number)) and not isinstance(out, bool):
            try:
                scores = torch.as_tensor(np.asarray(out, dtype=np.float32))
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"python reward {self.cfg.target!r} returned values that are not numbers: {exc}"
                ) from exc
        else:
            raise TypeError(
                f"python reward {self.cfg.target!r} returned {type(out).__name__}; expected a tensor, "
                f"list or numpy array of {images.shape[0]} scores"
            )
        if not torch.is_floating_point(scores):
            scores = scores.float()
        if scores.shape != (images.shape[0],):
            raise ValueError(
                f"python reward {self.cfg.target!r} returned scores of shape {list(scores.shape)}; "
                f"expected [{images.shape[0]}] (one per image)"
            )
        return scores.to(images.device)
