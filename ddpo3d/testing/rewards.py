"""Misbehaving rewards for reliability tests (``python`` reward targets), e.g.

    system.guidance.reward={type: python, target: "ddpo3d.testing.rewards:nan_reward"}

Call counters are per process; ``kwargs`` choose the call that misbehaves.
"""

from __future__ import annotations

import os
import signal

import torch

from ddpo3d.utils.typing import Float, List, Tensor

_CALLS = {"n": 0}


def _brightness(images: Float[Tensor, "B H W 3"]) -> Float[Tensor, " B"]:
    return images.mean(dim=(1, 2, 3))


def nan_reward(images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
    """NaN for every image."""
    return torch.full((images.shape[0],), float("nan"))


def inf_at_call(images: Float[Tensor, "B H W 3"], prompts: List[str], at: int = 3) -> Float[Tensor, " B"]:
    """Mean brightness, +inf on the ``at``-th call of this process."""
    _CALLS["n"] += 1
    scores = _brightness(images)
    return scores + float("inf") if _CALLS["n"] == at else scores


def raise_at_call(images: Float[Tensor, "B H W 3"], prompts: List[str], at: int = 3) -> Float[Tensor, " B"]:
    """Mean brightness; raises ``ConnectionError`` on the ``at``-th call of this process."""
    _CALLS["n"] += 1
    if _CALLS["n"] == at:
        raise ConnectionError("reward server unreachable")
    return _brightness(images)


def interrupt_at_call(
    images: Float[Tensor, "B H W 3"], prompts: List[str], at: int = 3, marker: str = ""
) -> Float[Tensor, " B"]:
    """Mean brightness; on the ``at``-th call sends this process SIGINT (Ctrl-C), once per
    ``marker`` file (created then), so a resumed run with the same config is not interrupted."""
    _CALLS["n"] += 1
    if _CALLS["n"] == at and marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("interrupted\n")
        os.kill(os.getpid(), signal.SIGINT)
    return _brightness(images)


def reset_calls() -> None:
    """Start counting calls from zero again (tests running several trainings in one process)."""
    _CALLS["n"] = 0
