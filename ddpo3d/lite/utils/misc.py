"""Device selection and small helpers (threestudio's ``utils/misc.py`` names)."""

from __future__ import annotations

import gc

import torch

from ddpo3d.utils.schedule import C, C_max  # noqa: F401

_device: torch.device | None = None


def set_device(device: "torch.device | str | None") -> None:
    """Choose the device every runtime object is created on (``None``: automatic)."""
    global _device
    _device = None if device is None else torch.device(device)


def get_device() -> torch.device:
    """The runtime's device: the one set by ``set_device``, else CUDA if present, else CPU."""
    if _device is not None:
        return _device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cleanup() -> None:
    """Free cached memory (threestudio's ``cleanup``)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
