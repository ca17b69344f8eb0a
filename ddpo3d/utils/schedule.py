"""threestudio's scalar schedules.

A schedulable value is a number, or a list in threestudio's form:

* ``[start_step, start_value, end_value, end_step]``: linear from ``start_value`` at
  ``start_step`` to ``end_value`` at ``end_step``, constant outside;
* ``[start_value, end_value, end_step]``: the same with ``start_step = 0``;
* ``[start_step, v0, v1, s1, v2, s2, ...]``: piecewise, the segment chosen by the step.

``end_step`` may be a float, read as the number of epochs (threestudio's convention).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from ddpo3d.utils.typing import Any, List


def _to_list(value: Any) -> List[Any]:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise TypeError(
            f"A schedule must be a number or a list [start_step, start, end, end_step], "
            f"got {value!r} of type {type(value).__name__}"
        )
    if len(value) == 3:
        value = [0] + value
    if len(value) < 4 or (len(value) > 4 and len(value) % 2 != 0):
        raise ValueError(f"A schedule list needs 3, 4 or an even number >= 6 of entries, got {value!r}")
    return value


def C(value: Any, epoch: int, global_step: int, interpolation: str = "linear") -> float:
    """Evaluate a schedulable value at a training step.

    Args:
        value: a number, or a schedule list (see module docstring).
        epoch: current epoch (used when ``end_step`` is a float).
        global_step: current optimisation step.
        interpolation: ``"linear"`` or ``"exp"`` (log-linear between positive values).

    Returns:
        The value at this step, as a float.
    """
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    value = _to_list(value)
    if len(value) >= 6:
        # piecewise: pick the segment whose start we have passed
        select = 3
        for i in range(3, len(value) - 2, 2):
            if global_step >= value[i]:
                select = i + 2
        if select != 3:
            start_value, start_step = value[select - 3], value[select - 2]
        else:
            start_step, start_value = value[:2]
        end_value, end_step = value[select - 1], value[select]
        value = [start_step, start_value, end_value, end_step]
    start_step, start_value, end_value, end_step = value
    if isinstance(end_step, int):
        current, s0, s1 = global_step, start_step, end_step
    else:
        current, s0, s1 = epoch, start_step, end_step
    if s1 == s0:
        frac = 1.0 if current >= s1 else 0.0
    else:
        frac = max(min(1.0, (current - s0) / (s1 - s0)), 0.0)
    if interpolation == "linear":
        return float(start_value + (end_value - start_value) * frac)
    if interpolation == "exp":
        import math

        return float(math.exp(math.log(start_value) * (1 - frac) + math.log(end_value) * frac))
    raise ValueError(f"Unknown interpolation {interpolation!r}: use 'linear' or 'exp'")


def C_max(value: Any) -> float:
    """Largest value a schedule ever takes (threestudio's ``C_max``)."""
    if isinstance(value, (int, float)):
        return float(value)
    value = _to_list(value)
    return float(max([value[1], value[2]] + value[4::2]))
