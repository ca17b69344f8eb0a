"""``neural-environment-map-background``: an MLP from view direction to colour."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.background.base import BaseBackground
from ddpo3d.lite.models.networks import get_encoding, get_mlp
from ddpo3d.lite.utils.ops import get_activation
from ddpo3d.utils.typing import Float, Optional, Tensor, Tuple


@threestudio.register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(BaseBackground):
    """``color = act(MLP(enc((d + 1) / 2)))`` for unit ray directions ``d`` (DreamFusion's
    learned environment map, Poole et al. 2022, Sec. 3.1). ``eval_color`` replaces it in
    evaluation; ``random_aug`` as in ``solid-color-background``.

    Config keys (threestudio's): ``n_output_dims``, ``color_activation``,
    ``dir_encoding_config`` (default spherical harmonics of degree 3, pure torch here),
    ``mlp_network_config``, ``random_aug``, ``random_aug_prob``, ``eval_color``.
    """

    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
        mlp_network_config: dict = field(
            default_factory=lambda: {
                "otype": "VanillaMLP",
                "activation": "ReLU",
                "n_neurons": 16,
                "n_hidden_layers": 2,
            }
        )
        random_aug: bool = False
        random_aug_prob: float = 0.5
        eval_color: Optional[Tuple[float, float, float]] = None

    cfg: Config

    def configure(self) -> None:
        get_activation(self.cfg.color_activation)
        self.encoding = get_encoding(3, self.cfg.dir_encoding_config)
        self.network = get_mlp(self.encoding.n_output_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W Nc"]:
        """Colour per ray from its (normalised) direction ``[..., 3]``."""
        if not self.training and self.cfg.eval_color is not None:
            return torch.ones(*dirs.shape[:-1], self.cfg.n_output_dims).to(dirs) * torch.as_tensor(
                tuple(self.cfg.eval_color)
            ).to(dirs)
        dirs = (dirs + 1.0) / 2.0  # [-1, 1] -> [0, 1], the encodings' input range
        dirs_embd = self.encoding(dirs.reshape(-1, 3))
        color = self.network(dirs_embd).view(*dirs.shape[:-1], self.cfg.n_output_dims)
        color = get_activation(self.cfg.color_activation)(color)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            color = color * 0 + (
                torch.rand(dirs.shape[0], 1, 1, self.cfg.n_output_dims).to(dirs).expand(*dirs.shape[:-1], -1)
            )
        return color
