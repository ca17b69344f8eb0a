"""Non-finite values in a training step: the exception, and the reward check a training step
turns on (light: no Lightning import, so rewards can use it)."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from ddpo3d.utils.typing import Any

__all__ = [
    "NonFiniteError",
    "TrainingInterrupted",
    "check_finite_scores",
    "describe_reward",
    "finite_rewards_required",
]

_LOCAL = threading.local()


class NonFiniteError(FloatingPointError):
    """A value that feeds the parameter update is NaN or infinite.

    Args:
        term: what was non-finite: ``reward``, ``advantage``, ``loss`` (or ``loss_<x>``),
            ``gradient``, ``checkpoint``.
        message: what, where and how many.
    """

    def __init__(self, term: str, message: str) -> None:
        super().__init__(message)
        self.term = term


class TrainingInterrupted(Exception):
    """Ctrl-C during fitting (after the checkpoint was written); the launcher exits 130."""


# --------------------------------------------------------------------------------- rewards
@contextlib.contextmanager
def finite_rewards_required() -> Iterator[None]:
    """Within this block, :func:`check_finite_scores` raises :class:`NonFiniteError` (training
    steps); outside it (validation scoring) non-finite rewards pass through and are logged."""
    prev = getattr(_LOCAL, "finite_rewards", False)
    _LOCAL.finite_rewards = True
    try:
        yield
    finally:
        _LOCAL.finite_rewards = prev


def describe_reward(reward: Any) -> str:
    """``'name'`` of a reward, with the target of a ``python`` reward."""
    name = getattr(reward, "name", type(reward).__name__)
    target = getattr(getattr(reward, "cfg", None), "target", None)
    return f"{name!r} ({target})" if isinstance(target, str) else repr(name)


def check_finite_scores(reward: Any, scores: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``reward`` when ``scores`` has a NaN / inf and a
    training step required finite rewards (:func:`finite_rewards_required`)."""
    if not getattr(_LOCAL, "finite_rewards", False) or not isinstance(scores, torch.Tensor):
        return
    with torch.no_grad():
        bad = ~torch.isfinite(scores.detach())
        if not bool(bad.any()):
            return
        values = sorted({str(v) for v in scores.detach()[bad].float().cpu().tolist()})
    raise NonFiniteError(
        "reward",
        f"the reward {describe_reward(reward)} returned non-finite values ({', '.join(values)}) "
        f"for {int(bad.sum())} of {scores.numel()} images",
    )
