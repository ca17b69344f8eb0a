"""``solid-color-background``: one (optionally learned) colour."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn as nn

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.background.base import BaseBackground
from ddpo3d.utils.typing import Float, Tensor, Tuple


@threestudio.register("solid-color-background")
class SolidColorBackground(BaseBackground):
    """Constant colour ``color`` (a parameter when ``learned``); with ``random_aug`` a random
    colour per batch item replaces it with probability ``random_aug_prob`` in training.

    Config keys (threestudio's): ``n_output_dims``, ``color``, ``learned``, ``random_aug``,
    ``random_aug_prob``.
    """

    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: Tuple = (1.0, 1.0, 1.0)
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

    cfg: Config

    def configure(self) -> None:
        color = torch.as_tensor(tuple(self.cfg.color), dtype=torch.float32)
        if color.numel() != self.cfg.n_output_dims:
            raise ValueError(
                f"solid-color-background: color has {color.numel()} values but n_output_dims is {self.cfg.n_output_dims}"
            )
        self.env_color: Float[Tensor, " Nc"]
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W Nc"]:
        color = torch.ones(*dirs.shape[:-1], self.cfg.n_output_dims).to(dirs) * self.env_color.to(dirs)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            color = color * 0 + (
                torch.rand(dirs.shape[0], 1, 1, self.cfg.n_output_dims).to(dirs).expand(*dirs.shape[:-1], -1)
            )
        return color
