"""The host API the extension is written against: real threestudio, or the built-in runtime.

``DDPO3D_HOST`` picks: ``auto`` (default: threestudio when importable, else the runtime),
``threestudio`` (fail if it does not import) or ``lite``. Extension modules import names
from here only, so they work unchanged when threestudio's ``load_custom_modules`` loads
the ``custom/threestudio-ddpo3d`` folder.

Classes that live deeper in threestudio (``PromptProcessorOutput``,
``StableDiffusionGuidance``, ``DreamFusion`` ...) are resolved lazily by attribute access,
at the same module path in both hosts (``threestudio.X.Y`` / ``ddpo3d.lite.X.Y``).
"""

from __future__ import annotations

import importlib
import os

_choice = os.environ.get("DDPO3D_HOST", "auto").lower()
if _choice not in ("auto", "threestudio", "lite"):
    raise ValueError(f"DDPO3D_HOST must be 'auto', 'threestudio' or 'lite', got {_choice!r}")

threestudio = None
if _choice in ("auto", "threestudio"):
    try:
        import threestudio  # type: ignore[no-redef]
    except ImportError:
        if _choice == "threestudio":
            raise
        threestudio = None
if threestudio is None:
    from ddpo3d import lite as threestudio  # noqa: F811

#: ``"threestudio"`` or ``"lite"``.
HOST = "lite" if threestudio.__name__ == "ddpo3d.lite" else "threestudio"
_ROOT = threestudio.__name__

register = threestudio.register
find = threestudio.find
info = threestudio.info
warn = threestudio.warn
debug = threestudio.debug

_base = importlib.import_module(f"{_ROOT}.utils.base")
BaseObject = _base.BaseObject
BaseModule = _base.BaseModule
Updateable = _base.Updateable
_misc = importlib.import_module(f"{_ROOT}.utils.misc")
C = _misc.C
get_device = _misc.get_device
cleanup = _misc.cleanup
parse_structured = importlib.import_module(f"{_ROOT}.utils.config").parse_structured

# name -> (module path below the host root, attribute)
_LAZY = {
    "BaseGeometry": ("models.geometry.base", "BaseGeometry"),
    "PromptProcessorOutput": ("models.prompt_processors.base", "PromptProcessorOutput"),
    "PromptProcessor": ("models.prompt_processors.base", "PromptProcessor"),
    "StableDiffusionGuidance": ("models.guidance.stable_diffusion_guidance", "StableDiffusionGuidance"),
    "DeepFloydGuidance": ("models.guidance.deep_floyd_guidance", "DeepFloydGuidance"),
    "BaseLift3DSystem": ("systems.base", "BaseLift3DSystem"),
    "DreamFusion": ("systems.dreamfusion", "DreamFusion"),
    "Magic3D": ("systems.magic3d", "Magic3D"),
}


def __getattr__(name: str):
    if name in _LAZY:
        path, attr = _LAZY[name]
        try:
            module = importlib.import_module(f"{_ROOT}.{path}")
        except ImportError as exc:
            raise ImportError(f"{name} is not available on the {HOST} host ({_ROOT}.{path}): {exc}") from exc
        return getattr(module, attr)
    raise AttributeError(f"module 'ddpo3d.host' has no attribute {name!r}")
