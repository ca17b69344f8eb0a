"""``implicit-volume``: a density field from an encoding + MLPs (threestudio's ImplicitVolume)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.geometry.base import BaseGeometry, BaseImplicitGeometry, contract_to_unisphere
from ddpo3d.lite.models.networks import get_encoding, get_mlp
from ddpo3d.lite.utils.ops import get_activation
from ddpo3d.utils.typing import Any, Dict, DictConfig, Float, Optional, Tensor, Tuple, Union

_NORMAL_TYPES = ("analytic", "finite_difference", "finite_difference_laplacian", "pred")


@threestudio.register("implicit-volume")
class ImplicitVolume(BaseImplicitGeometry):
    """NeRF density + feature field over ``[-radius, radius]^3``.

    ``density = act(MLP_sigma(enc(x)) + bias(x))`` where ``bias`` is the initial density blob:
    ``blob_dreamfusion``: ``s * exp(-|x|^2 / (2 std^2))`` (DreamFusion, Poole et al. 2022,
    Appendix A.2), ``blob_magic3d``: ``s * (1 - |x| / std)`` (Magic3D, Lin et al. 2023), or a
    constant. Features come from a second MLP on the same encoding.

    Config keys are threestudio's (``n_input_dims``, ``n_feature_dims``,
    ``density_activation``, ``density_bias``, ``density_blob_scale``, ``density_blob_std``,
    ``pos_encoding_config``, ``mlp_network_config``, ``normal_type``,
    ``finite_difference_normal_eps``, ``isosurface_threshold``,
    ``anneal_density_blob_std_config``) plus the isosurface keys of
    :class:`BaseImplicitGeometry`. Encodings/MLPs are the pure-torch ones of
    :mod:`ddpo3d.lite.models.networks`.
    """

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        n_input_dims: int = 3
        n_feature_dims: int = 3
        density_activation: Optional[str] = "softplus"
        density_bias: Union[float, str] = "blob_magic3d"  # a number, "blob_magic3d" or "blob_dreamfusion"
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        pos_encoding_config: dict = field(
            default_factory=lambda: {
                "otype": "HashGrid",
                "n_levels": 16,
                "n_features_per_level": 2,
                "log2_hashmap_size": 19,
                "base_resolution": 16,
                "per_level_scale": 1.447269237440378,
            }
        )
        mlp_network_config: dict = field(
            default_factory=lambda: {
                "otype": "VanillaMLP",
                "activation": "ReLU",
                "output_activation": "none",
                "n_neurons": 64,
                "n_hidden_layers": 1,
            }
        )
        # in ['pred', 'analytic', 'finite_difference', 'finite_difference_laplacian']
        normal_type: Optional[str] = "finite_difference"
        finite_difference_normal_eps: float = 0.01
        isosurface_threshold: Union[float, str] = 25.0
        # linear annealing of density_blob_std: {min_anneal_step, max_anneal_step, start_val, end_val}
        anneal_density_blob_std_config: Optional[dict] = None

    cfg: Config

    def configure(self) -> None:
        super().configure()
        bias = self.cfg.density_bias
        if isinstance(bias, str) and bias not in ("blob_magic3d", "blob_dreamfusion"):
            raise ValueError(f"Unknown density_bias {bias!r}: use a number, 'blob_magic3d' or 'blob_dreamfusion'")
        if self.cfg.normal_type is not None and self.cfg.normal_type not in _NORMAL_TYPES:
            raise ValueError(f"Unknown normal_type {self.cfg.normal_type!r}: use one of {', '.join(_NORMAL_TYPES)}")
        get_activation(self.cfg.density_activation)  # fail early on a bad name
        self.density_blob_std = self.cfg.density_blob_std
        self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config)
        self.density_network = get_mlp(self.encoding.n_output_dims, 1, self.cfg.mlp_network_config)
        if self.cfg.n_feature_dims > 0:
            self.feature_network = get_mlp(
                self.encoding.n_output_dims, self.cfg.n_feature_dims, self.cfg.mlp_network_config
            )
        if self.cfg.normal_type == "pred":
            self.normal_network = get_mlp(self.encoding.n_output_dims, 3, self.cfg.mlp_network_config)

    def get_activated_density(
        self, points: Float[Tensor, "*N Di"], density: Float[Tensor, "*N 1"]
    ) -> Tuple[Float[Tensor, "*N 1"], Float[Tensor, "*N 1"]]:
        """Add the density bias (pre-activation) and apply ``density_activation``.

        Returns:
            ``(raw_density, density)``.
        """
        bias = self.cfg.density_bias
        if bias == "blob_dreamfusion":
            # DreamFusion App. A.2: tau_init(x) = lambda * exp(-|x|^2 / (2 sigma^2))
            density_bias = (
                self.cfg.density_blob_scale
                * torch.exp(-0.5 * (points**2).sum(dim=-1) / self.density_blob_std**2)[..., None]
            )
        elif bias == "blob_magic3d":
            # Magic3D: tau_init(x) = lambda * (1 - |x| / c); the clamp keeps d|x|/dx finite at 0
            density_bias = (
                self.cfg.density_blob_scale
                * (1 - torch.sqrt((points**2).sum(dim=-1).clamp(min=1e-20)) / self.density_blob_std)[..., None]
            )
        else:
            density_bias = float(bias)
        raw_density = density + density_bias
        return raw_density, get_activation(self.cfg.density_activation)(raw_density)

    def forward(self, points: Float[Tensor, "*N Di"], output_normal: bool = False) -> Dict[str, Float[Tensor, "..."]]:
        """Density, features and (optionally) normals at world-space points.

        Args:
            points: ``[*N, 3]`` in world coordinates.
            output_normal: also return ``normal`` and ``shading_normal`` (unit, pointing out
                of the density, i.e. ``-grad sigma / |grad sigma|``).

        Returns:
            ``{"density": [*N, 1], "features": [*N, n_feature_dims], ("normal", "shading_normal"): [*N, 3]}``.
        """
        grad_enabled = torch.is_grad_enabled()
        if output_normal and self.cfg.normal_type == "analytic":
            torch.set_grad_enabled(True)
            if not points.requires_grad:
                points = points.detach().requires_grad_(True)
        try:
            points_unscaled = points
            points = contract_to_unisphere(points, self.bbox, self.unbounded)
            enc = self.encoding(points.reshape(-1, self.cfg.n_input_dims))
            density = self.density_network(enc).view(*points.shape[:-1], 1)
            raw_density, density = self.get_activated_density(points_unscaled, density)
            output: Dict[str, Tensor] = {"density": density}
            if self.cfg.n_feature_dims > 0:
                features = self.feature_network(enc).view(*points.shape[:-1], self.cfg.n_feature_dims)
                output["features"] = features
            if output_normal:
                normal = self._normal(points_unscaled, density, enc, grad_enabled)
                output.update({"normal": normal, "shading_normal": normal})
        finally:
            torch.set_grad_enabled(grad_enabled)
        if not grad_enabled:
            # analytic normals switched grad on locally; hand back plain tensors
            output = {k: v.detach() for k, v in output.items()}
        return output

    def _normal(self, points_unscaled: Tensor, density: Tensor, enc: Tensor, grad_enabled: bool) -> Tensor:
        normal_type = self.cfg.normal_type
        eps = self.cfg.finite_difference_normal_eps
        if normal_type == "finite_difference":
            # forward differences: n = -(sigma(x + eps e_i) - sigma(x)) / eps
            offsets = torch.eye(3, dtype=points_unscaled.dtype, device=points_unscaled.device) * eps
            points_offset = (points_unscaled[..., None, :] + offsets).clamp(-self.cfg.radius, self.cfg.radius)
            density_offset = self.forward_density(points_offset)  # [..., 3, 1]
            normal = -(density_offset[..., 0] - density) / eps
        elif normal_type == "finite_difference_laplacian":
            # central differences: n = -(sigma(x + eps e_i) - sigma(x - eps e_i)) / (2 eps)
            eye = torch.eye(3, dtype=points_unscaled.dtype, device=points_unscaled.device) * eps
            offsets = torch.stack([eye, -eye], 1).reshape(6, 3)  # +x, -x, +y, -y, +z, -z
            points_offset = (points_unscaled[..., None, :] + offsets).clamp(-self.cfg.radius, self.cfg.radius)
            density_offset = self.forward_density(points_offset)  # [..., 6, 1]
            normal = -0.5 * (density_offset[..., 0::2, 0] - density_offset[..., 1::2, 0]) / eps
        elif normal_type == "pred":
            normal = self.normal_network(enc).view(*points_unscaled.shape[:-1], 3)
        elif normal_type == "analytic":
            # n = -grad_x sigma, kept in the graph (create_graph) so normal losses train sigma
            normal = -torch.autograd.grad(
                density, points_unscaled, grad_outputs=torch.ones_like(density), create_graph=True
            )[0]
        else:
            raise AttributeError(f"Unknown normal type {normal_type}")
        normal = F.normalize(normal, dim=-1)
        if normal_type == "analytic" and not grad_enabled:
            normal = normal.detach()
        return normal

    def forward_density(self, points: Float[Tensor, "*N Di"]) -> Float[Tensor, "*N 1"]:
        """Activated density only (no features, no normals)."""
        points_unscaled = points
        points = contract_to_unisphere(points_unscaled, self.bbox, self.unbounded)
        density = self.density_network(self.encoding(points.reshape(-1, self.cfg.n_input_dims))).reshape(
            *points.shape[:-1], 1
        )
        _, density = self.get_activated_density(points_unscaled, density)
        return density

    def forward_field(
        self, points: Float[Tensor, "*N Di"]
    ) -> Tuple[Float[Tensor, "*N 1"], Optional[Float[Tensor, "*N 3"]]]:
        if self.cfg.isosurface_deformable_grid:
            threestudio.warn(f"{self.__class__.__name__} does not support isosurface_deformable_grid. Ignoring.")
        return self.forward_density(points), None

    def forward_level(self, field: Float[Tensor, "*N 1"], threshold: float) -> Float[Tensor, "*N 1"]:
        return -(field - threshold)

    def export(self, points: Float[Tensor, "*N Di"], **kwargs) -> Dict[str, Any]:
        """Features at mesh vertices (for the material's ``export``)."""
        out: Dict[str, Any] = {}
        if self.cfg.n_feature_dims == 0:
            return out
        points = contract_to_unisphere(points, self.bbox, self.unbounded)
        enc = self.encoding(points.reshape(-1, self.cfg.n_input_dims))
        out["features"] = self.feature_network(enc).view(*points.shape[:-1], self.cfg.n_feature_dims)
        return out

    @staticmethod
    @torch.no_grad()
    def create_from(
        other: BaseGeometry, cfg: Optional[Union[dict, DictConfig]] = None, copy_net: bool = True, **kwargs
    ) -> "ImplicitVolume":
        """A new volume with ``cfg``, its encoding/density network copied from ``other``."""
        if not isinstance(other, ImplicitVolume):
            raise TypeError(f"Cannot create {ImplicitVolume.__name__} from {other.__class__.__name__}")
        instance = ImplicitVolume(cfg, **kwargs)
        instance.encoding.load_state_dict(other.encoding.state_dict())
        instance.density_network.load_state_dict(other.density_network.state_dict())
        if copy_net:
            if instance.cfg.n_feature_dims > 0 and other.cfg.n_feature_dims == instance.cfg.n_feature_dims:
                instance.feature_network.load_state_dict(other.feature_network.state_dict())
            if instance.cfg.normal_type == "pred" and other.cfg.normal_type == "pred":
                instance.normal_network.load_state_dict(other.normal_network.state_dict())
        return instance

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        anneal = self.cfg.anneal_density_blob_std_config
        if anneal is not None:
            lo, hi = anneal["min_anneal_step"], anneal["max_anneal_step"]
            if lo <= global_step <= hi:
                start, end = anneal["start_val"], anneal["end_val"]
                self.density_blob_std = start + (global_step - lo) * (end - start) / max(hi - lo, 1)
