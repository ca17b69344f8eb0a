"""``brightness``: mean luma of the image, a simple differentiable reward for the toy world.

Luma uses ITU-R BT.601 weights (0.299, 0.587, 0.114). Useful as a reward whose optimum is
known in closed form (a white image) and whose direction is easy to see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.typing import Float, Sequence, Tensor

LUMA = (0.299, 0.587, 0.114)


@register_reward("brightness")
class BrightnessReward(Reward):
    """Mean BT.601 luma over pixels, in [0, 1]; differentiable."""

    @dataclass
    class Config:
        pass

    differentiable = True

    def score(self, images: Float[Tensor, "B H W 3"], prompts: Sequence[str]) -> Float[Tensor, " B"]:
        weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype)
        return (images * weights).sum(-1).flatten(1).mean(-1)
