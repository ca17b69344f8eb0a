"""``no-material``: colour straight from the geometry features (optionally through an MLP)."""

from __future__ import annotations

from dataclasses import dataclass

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.materials.base import BaseMaterial
from ddpo3d.lite.models.networks import get_mlp
from ddpo3d.lite.utils.ops import get_activation
from ddpo3d.utils.typing import Any, Dict, Float, Optional, Tensor


@threestudio.register("no-material")
class NoMaterial(BaseMaterial):
    """``color = act(features)`` or ``act(MLP(features))`` when ``input_feature_dims`` and
    ``mlp_network_config`` are both set.

    Config keys (threestudio's): ``n_output_dims``, ``color_activation``,
    ``input_feature_dims``, ``mlp_network_config``, ``requires_normal``.
    """

    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    cfg: Config

    def configure(self) -> None:
        self.use_network = False
        get_activation(self.cfg.color_activation)
        if self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None:
            self.network = get_mlp(self.cfg.input_feature_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
            self.use_network = True
        self.requires_normal = self.cfg.requires_normal

    def forward(self, features: Float[Tensor, "B ... Nf"], **kwargs) -> Float[Tensor, "B ... Nc"]:
        """Colour ``[..., n_output_dims]`` from features (other keyword inputs are ignored)."""
        if not self.use_network:
            if features.shape[-1] != self.cfg.n_output_dims:
                raise ValueError(
                    f"no-material: expected {self.cfg.n_output_dims} feature dims (n_output_dims), got "
                    f"{features.shape[-1]}; set input_feature_dims and mlp_network_config to map them"
                )
            return get_activation(self.cfg.color_activation)(features)
        color = self.network(features.reshape(-1, features.shape[-1])).view(
            *features.shape[:-1], self.cfg.n_output_dims
        )
        return get_activation(self.cfg.color_activation)(color)

    def export(self, features: Float[Tensor, "*N Nf"], **kwargs) -> Dict[str, Any]:
        color = self(features, **kwargs).clamp(0, 1)
        if color.shape[-1] < 3:
            raise ValueError("no-material export: output colour must have at least 3 channels")
        if color.shape[-1] > 3:
            threestudio.warn("Output color has >3 channels, treating the first 3 as RGB")
        return {"albedo": color[..., :3]}
