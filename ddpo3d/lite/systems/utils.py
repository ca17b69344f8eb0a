"""Optimizer and LR-scheduler construction from config blocks (threestudio's ``systems/utils.py``).

``optimizer: {name: Adam, args: {lr: 0.01, ...}, params: {geometry: {lr: 0.01}, background: {lr: 0.001}}}``
builds one parameter group per named sub-module (dotted paths allowed) with its own
arguments; without ``params`` every parameter of the system is optimised.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim import lr_scheduler

from ddpo3d.utils.config import ConfigError, to_primitive
from ddpo3d.utils.typing import Any, Dict, List


def getattr_recursive(module: Any, path: str) -> Any:
    """``getattr`` along a dotted path (``"geometry.encoding"``)."""
    for name in path.split("."):
        if not hasattr(module, name):
            raise ConfigError(f"optimizer.params: {type(module).__name__} has no attribute {name!r} (from {path!r})")
        module = getattr(module, name)
    return module


def get_parameters(model: nn.Module, name: str) -> List[nn.Parameter]:
    """Parameters of the sub-module / parameter at ``name`` (empty for anything else)."""
    target = getattr_recursive(model, name)
    if isinstance(target, nn.Parameter):
        return [target]
    if isinstance(target, nn.Module):
        return list(target.parameters())
    return []


def parse_optimizer(config: Any, model: nn.Module) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer from ``{name, args, params?}``.

    Raises:
        ConfigError: unknown optimizer name (``Adan`` / ``FusedAdam`` need packages this
            runtime does not ship) or an unknown sub-module in ``params``.
    """
    config = to_primitive(config) or {}
    name = config.get("name")
    if not name:
        raise ConfigError("system.optimizer.name is required (e.g. Adam)")
    args = config.get("args", {}) or {}
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"Unknown optimizer {name!r}: the built-in runtime supports torch.optim classes "
            "(Adam, AdamW, SGD, ...); Adan and FusedAdam are threestudio/apex extras"
        )
    if "params" in config and config["params"] is not None:
        groups: List[Dict[str, Any]] = []
        for group_name, group_args in config["params"].items():
            groups.append({"params": get_parameters(model, group_name), "name": group_name, **(group_args or {})})
        groups = [g for g in groups if len(g["params"]) > 0] or [{"params": [], "name": "empty"}]
        params: Any = groups
    else:
        params = model.parameters()
    return cls(params, **args)


def _scheduler_instance(config: Dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
    name = config.get("name")
    if name in ("SequentialLR", "Sequential"):
        children = [_scheduler_instance(c, optimizer) for c in config["schedulers"]]
        return lr_scheduler.SequentialLR(optimizer, children, milestones=config["milestones"])
    if name == "ChainedScheduler":
        return lr_scheduler.ChainedScheduler([_scheduler_instance(c, optimizer) for c in config["schedulers"]])
    cls = getattr(lr_scheduler, name or "", None)
    if cls is None:
        raise ConfigError(f"Unknown LR scheduler {name!r}: use a torch.optim.lr_scheduler class name")
    return cls(optimizer, **(config.get("args", {}) or {}))


def parse_scheduler(config: Any, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """Lightning's scheduler dict ``{"scheduler": ..., "interval": "epoch"|"step"}``."""
    config = to_primitive(config)
    interval = config.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise ConfigError(f"system.scheduler.interval must be 'epoch' or 'step', got {interval!r}")
    return {"scheduler": _scheduler_instance(config, optimizer), "interval": interval}
