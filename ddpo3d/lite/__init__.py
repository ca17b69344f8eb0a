"""The built-in runtime: the part of threestudio's API our extension and configs use.

Mirrors threestudio's module layout and names (``register``/``find``, ``utils.base``,
``models.*``, ``systems``, ``data``) so the same extension code runs on either host. It is
not a fork of threestudio: only what our configs need exists, and anything else is a
clear error.
"""

from __future__ import annotations

import difflib
import logging

__modules__: dict = {}
__version__ = "0.2.3-lite"

logger = logging.getLogger("ddpo3d")


def register(name: str):
    """Class decorator adding a class to the registry under ``name`` (clashes raise)."""

    def decorator(cls):
        if name in __modules__:
            raise ValueError(f"Module {name} already exists! Names of extensions conflict!")
        __modules__[name] = cls
        return cls

    return decorator


def find(name: str):
    """Look a registered class up by name.

    Raises:
        KeyError: naming the unknown type and listing the known ones.
    """
    _import_builtin_modules()
    if name in __modules__:
        return __modules__[name]
    close = difflib.get_close_matches(name, list(__modules__), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise KeyError(
        f"Unknown type {name!r} in the built-in runtime.{hint} Known types: {', '.join(sorted(__modules__))}"
    )


def debug(*args, **kwargs):
    logger.debug(*args, **kwargs)


def info(*args, **kwargs):
    logger.info(*args, **kwargs)


def warn(*args, **kwargs):
    logger.warning(*args, **kwargs)


_imported = False


def _import_builtin_modules() -> None:
    """Import the runtime's model/data/system modules so they register (lazily, once)."""
    global _imported
    if _imported:
        return
    _imported = True
    from ddpo3d.lite import data, models, systems  # noqa: F401
