"""Reward registry and :func:`build_reward`.

A new reward is a one-file change: a module with a :class:`~ddpo3d.rewards.base.Reward`
subclass decorated with ``@register_reward("my-reward")``, imported by
``ddpo3d/rewards/__init__.py``. Config blocks look like::

    {type: aesthetic, weight: 1.0, name: aes, <options of AestheticReward.Config>}

and a list of blocks builds a weighted sum (:class:`~ddpo3d.rewards.composite.CompositeReward`).
"""

from __future__ import annotations

import difflib
import numbers

from ddpo3d.utils.config import ConfigError, to_primitive
from ddpo3d.utils.typing import Any, Callable, Dict, List, Type

__all__ = ["register_reward", "get_reward_class", "list_rewards", "build_reward", "UnknownRewardError"]

_REGISTRY: Dict[str, type] = {}

#: keys of a reward block handled by :func:`build_reward` itself, not by the reward's Config.
BLOCK_KEYS = ("type", "weight", "name")


class UnknownRewardError(ConfigError):
    """A config names a reward type that is not registered."""


def register_reward(name: str) -> Callable[[Type], Type]:
    """Class decorator registering a reward type under ``name``.

    Args:
        name: the ``type:`` value that selects this reward in configs.

    Returns:
        The decorator; it sets ``cls.name = name`` and raises ``ValueError`` if the name is taken.
    """

    def decorator(cls: Type) -> Type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"Reward type {name!r} is already registered by {_REGISTRY[name].__module__}."
                f"{_REGISTRY[name].__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_rewards() -> List[str]:
    """Sorted names of the registered reward types."""
    return sorted(_REGISTRY)


def get_reward_class(name: str) -> Type:
    """The class registered as ``name``; ``UnknownRewardError`` lists the known types."""
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UnknownRewardError(
            f"Unknown reward type {name!r}.{suggestion} Known reward types: {', '.join(list_rewards())}"
        )
    return _REGISTRY[name]


def _split_block(block: Any, where: str) -> tuple:
    """``(type, weight, name, options)`` of one reward block."""
    if not isinstance(block, dict):
        raise ConfigError(
            f"{where} must be a mapping like {{type: aesthetic, weight: 1.0}}, got {type(block).__name__}: {block!r}"
        )
    if "type" not in block:
        raise ConfigError(
            f"{where} has no 'type' key (got keys {sorted(block)}). Known reward types: {', '.join(list_rewards())}"
        )
    options = {k: v for k, v in block.items() if k not in BLOCK_KEYS}
    weight = block.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ConfigError(f"{where}: 'weight' must be a number, got {weight!r}")
    name = block.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    return block["type"], float(weight), name, options


def _build_single(block: Any, where: str):
    rtype, weight, name, options = _split_block(block, where)
    reward = get_reward_class(rtype)(options)
    if name is not None:
        reward.name = name
    return reward, weight


def build_reward(cfg: Any):
    """Build a reward from a config block, a list of blocks, or return a reward unchanged.

    Args:
        cfg: ``{type: ..., weight: ..., name: ..., <options>}`` (dict or OmegaConf
            ``DictConfig``), or a list of such blocks, or a :class:`Reward` instance.
            A single block with ``weight`` other than 1 is wrapped in a one-term composite so
            the weight is applied; a list always builds a weighted-sum composite.

    Returns:
        A :class:`~ddpo3d.rewards.base.Reward`.

    Raises:
        UnknownRewardError: unknown ``type`` (lists the known types).
        ConfigError: unknown option key (names key and reward type), malformed block.
    """
    from ddpo3d.rewards.base import Reward
    from ddpo3d.rewards.composite import CompositeReward

    if isinstance(cfg, Reward):
        return cfg
    cfg = to_primitive(cfg)
    if cfg is None:
        raise ConfigError(f"No reward configured (got None). Known reward types: {', '.join(list_rewards())}")
    if isinstance(cfg, (list, tuple)):
        if len(cfg) == 0:
            raise ConfigError("An empty list of reward blocks builds no reward")
        terms = [_build_single(block, f"reward block {i}") for i, block in enumerate(cfg)]
        return CompositeReward.from_terms(terms)
    reward, weight = _build_single(cfg, "reward block")
    if weight != 1.0:
        return CompositeReward.from_terms([(reward, weight)])
    return reward


def validate_reward_config(cfg: Any) -> None:
    """Check a reward block (or list of blocks) without building it (no model is loaded):
    known ``type``, well-formed ``weight`` / ``name``, and every option a key of the reward's
    ``Config``.

    Raises:
        UnknownRewardError, ConfigError: as :func:`build_reward` would.
    """
    from ddpo3d.utils.config import parse_structured

    cfg = to_primitive(cfg)
    if cfg is None or (isinstance(cfg, dict) and not cfg):
        return
    blocks = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
    for i, block in enumerate(blocks):
        where = f"reward block {i}" if isinstance(cfg, (list, tuple)) else "reward block"
        rtype, _, _, options = _split_block(block, where)
        cls = get_reward_class(rtype)
        parse_structured(cls.Config, options, where=f"reward {rtype!r} ({cls.__name__})")


def render_out_block_names(cfg: Any) -> List[str]:
    """Names (``name:`` or type) of the blocks whose reward needs the renderer's outputs
    (``needs_render_out``: geometry rewards), without building anything.

    Args:
        cfg: a reward block or list of blocks (as :func:`build_reward` takes).

    Returns:
        The names, in order (empty when none needs them).
    """
    cfg = to_primitive(cfg)
    if cfg is None or (isinstance(cfg, dict) and not cfg):
        return []
    blocks = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
    names = []
    for i, block in enumerate(blocks):
        rtype, _, name, _ = _split_block(block, f"reward block {i}")
        if getattr(get_reward_class(rtype), "needs_render_out", False):
            names.append(name or rtype)
    return names
