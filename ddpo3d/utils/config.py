"""Strict typed configs: a dataclass per class, parsed from a dict / OmegaConf block.

threestudio parses with ``OmegaConf.structured(Config(**cfg))``, so an unknown key is a
``TypeError`` from the dataclass constructor. We keep that strictness but say which key,
which class, and which keys exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing

from omegaconf import OmegaConf

from ddpo3d.utils.typing import Any, DictConfig, Optional, Union


class ConfigError(ValueError):
    """A configuration block is malformed (unknown key, missing value, wrong type)."""


def to_primitive(cfg: Any) -> Any:
    """Turn an OmegaConf node (or anything else) into plain Python containers."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def unknown_key_message(key: str, where: str, known: list) -> str:
    """Error text for an unknown config key, with a close-match suggestion."""
    if not known:
        return f"Unknown config key {key!r} for {where}: it takes no options"
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    return f"Unknown config key {key!r} for {where}.{suggestion} Known keys: {', '.join(sorted(known))}"


def _is_tuple_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return True
    if origin is Union:
        return any(_is_tuple_type(a) for a in typing.get_args(tp) if a is not type(None))
    return False


def _lists_to_tuples(fields: Any, cfg: dict) -> dict:
    """YAML gives lists; fields typed ``Tuple[...]`` get tuples (run-time type checkers insist)."""
    try:
        hints = typing.get_type_hints(fields)
    except Exception:  # unresolvable forward references: leave the values as they are
        return cfg
    return {k: tuple(v) if isinstance(v, list) and _is_tuple_type(hints.get(k)) else v for k, v in cfg.items()}


def parse_structured(fields: Any, cfg: Optional[Union[dict, DictConfig]] = None, where: Optional[str] = None) -> Any:
    """Parse ``cfg`` into the dataclass ``fields`` strictly.

    Args:
        fields: a dataclass type (a class's ``Config``).
        cfg: a dict or OmegaConf block; ``None`` means all defaults.
        where: name used in error messages (defaults to the dataclass' qualified name).

    Returns:
        A structured (typed) OmegaConf ``DictConfig`` of ``fields``.

    Raises:
        ConfigError: naming the unknown key and the class, or the missing field.
    """
    where = where or getattr(fields, "__qualname__", str(fields))
    if cfg is None:
        cfg = {}
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise ConfigError(f"Config for {where} must be a mapping, got {type(cfg).__name__}: {cfg!r}")
    known = [f.name for f in dataclasses.fields(fields)]
    for key in cfg:
        if key not in known:
            raise ConfigError(unknown_key_message(key, where, known))
    cfg = _lists_to_tuples(fields, cfg)
    try:
        return OmegaConf.structured(fields(**cfg))
    except Exception as exc:  # type validation by OmegaConf, missing values, ...
        raise ConfigError(f"Invalid config for {where}: {exc}") from exc
