"""``mvdream-random-multiview-camera-datamodule``: threestudio-mvdream's multi-view random cameras.

Same name and keys as ``data/uncond_multiview.py`` of the threestudio-mvdream extension: the
``random-camera-datamodule`` keys plus ``n_view``, ``relative_radius``, ``zoom_range``. A training
batch of ``batch_size`` cameras holds ``batch_size / n_view`` objects; the ``n_view`` views of an
object are consecutive and share elevation, field of view, distance, zoom and perturbations,
with azimuths ``(u + k) / n_view`` of the azimuth range for ``k = 0 .. n_view-1`` (one random
``u`` per object): MVDream's 90°-apart views for ``n_view = 4``, in increasing azimuth. With
``relative_radius`` the sampled distance is multiplied by ``1 / tan(fovy / 2)`` (the object fills a
similar part of the image at every field of view); ``zoom_range`` then scales the fov. Near/far of
the projection are 0.1 / 1000 as there. Validation / test use the ``random-camera-datamodule``
turntable.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ddpo3d.lite import register
from ddpo3d.lite.data.uncond import (
    RandomCameraDataModule,
    RandomCameraDataModuleConfig,
    RandomCameraDataset,
    RandomCameraIterableDataset,
    look_at_c2w,
    rays_for_cameras,
    spherical_to_cartesian,
)
from ddpo3d.lite.utils.ops import get_mvp_matrix, get_projection_matrix
from ddpo3d.utils.config import ConfigError, parse_structured
from ddpo3d.utils.typing import Any, Dict, DictConfig, List, Optional, Union


@dataclass
class RandomMultiviewCameraDataModuleConfig(RandomCameraDataModuleConfig):
    """threestudio-mvdream's keys on top of ``random-camera-datamodule``'s."""

    relative_radius: bool = True  # distance *= 1 / tan(fovy / 2)
    n_view: int = 1  # views per object (consecutive in the batch)
    zoom_range: List[float] = field(default_factory=lambda: [1.0, 1.0])  # fov multiplier range after the distance
    rays_d_normalize: bool = True  # unit-length ray directions


class RandomMultiviewCameraIterableDataset(RandomCameraIterableDataset):
    """Endless batches of whole objects (see the module docstring)."""

    def collate(self, batch: Any) -> Dict[str, Any]:
        n = int(self.cfg.n_view)
        if self.batch_size % n:
            raise ConfigError(f"data.batch_size ({self.batch_size}) must be a multiple of data.n_view ({n})")
        objects = self.batch_size // n

        def per_object(values: torch.Tensor) -> torch.Tensor:
            return values.repeat_interleave(n, dim=0)

        lo, hi = self.elevation_range
        if random.random() < 0.5:
            elevation_deg = per_object(torch.rand(objects) * (hi - lo) + lo)
        else:  # uniform on the sphere
            p0, p1 = (lo + 90.0) / 180.0, (hi + 90.0) / 180.0
            elevation_deg = per_object(torch.rad2deg(torch.asin(2 * (torch.rand(objects) * (p1 - p0) + p0) - 1.0)))
        a0, a1 = self.azimuth_range
        azimuth_deg = ((torch.rand(objects, 1) + torch.arange(n)[None]).reshape(-1) / n) * (a1 - a0) + a0
        f0, f1 = self.fovy_range
        fovy_deg = per_object(torch.rand(objects) * (f1 - f0) + f0)
        fovy = torch.deg2rad(fovy_deg)
        r0, r1 = self.camera_distance_range
        camera_distances = per_object(torch.rand(objects) * (r1 - r0) + r0)
        if self.cfg.relative_radius:
            camera_distances = camera_distances / torch.tan(0.5 * fovy)
        z0, z1 = self.cfg.zoom_range
        zoom = per_object(torch.rand(objects) * (z1 - z0) + z0)
        fovy, fovy_deg = fovy * zoom, fovy_deg * zoom
        camera_positions = spherical_to_cartesian(
            torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg), camera_distances
        )
        camera_positions = camera_positions + per_object((torch.rand(objects, 3) * 2 - 1) * self.cfg.camera_perturb)
        center = per_object(torch.randn(objects, 3) * self.cfg.center_perturb)
        up = torch.tensor([0.0, 0.0, 1.0])[None].repeat(self.batch_size, 1) + per_object(
            torch.randn(objects, 3) * self.cfg.up_perturb
        )
        if self.cfg.light_sample_strategy == "dreamfusion":
            d0, d1 = self.cfg.light_distance_range
            dist = per_object(torch.rand(objects) * (d1 - d0) + d0)
            direction = F.normalize(
                camera_positions + per_object(torch.randn(objects, 3)) * self.cfg.light_position_perturb, dim=-1
            )
            light_positions = direction * dist[:, None]
        else:
            light_positions = self._sample_lights(camera_positions)
        c2w = look_at_c2w(camera_positions, center, up)
        rays_o, rays_d = rays_for_cameras(self.directions_unit_focal, c2w, fovy, self.height, self.cfg.rays_d_normalize)
        proj_mtx = get_projection_matrix(fovy, self.width / self.height, 0.1, 1000.0)
        return {
            "rays_o": rays_o,
            "rays_d": rays_d,
            "mvp_mtx": get_mvp_matrix(c2w, proj_mtx),
            "camera_positions": camera_positions,
            "c2w": c2w,
            "light_positions": light_positions,
            "elevation": elevation_deg,
            "azimuth": azimuth_deg,
            "camera_distances": camera_distances,
            "height": self.height,
            "width": self.width,
            "fovy": fovy,
        }


@register("mvdream-random-multiview-camera-datamodule")
class RandomMultiviewCameraDataModule(RandomCameraDataModule):
    """threestudio-mvdream's multi-view camera datamodule on the built-in runtime."""

    cfg: RandomMultiviewCameraDataModuleConfig

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None) -> None:
        cfg = parse_structured(
            RandomMultiviewCameraDataModuleConfig, cfg, where="mvdream-random-multiview-camera-datamodule"
        )
        if cfg.n_view < 1:
            raise ConfigError(f"mvdream-random-multiview-camera-datamodule: n_view must be >= 1, got {cfg.n_view}")
        base_keys = [f.name for f in dataclasses.fields(RandomCameraDataModuleConfig)]
        super().__init__({k: cfg[k] for k in base_keys})  # the base checks ranges and stages
        self.cfg = cfg

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = RandomMultiviewCameraIterableDataset(self.cfg)
        if stage in (None, "fit", "validate"):
            self.val_dataset = RandomCameraDataset(self.cfg, "val")
        if stage in (None, "test", "predict"):
            self.test_dataset = RandomCameraDataset(self.cfg, "test")
