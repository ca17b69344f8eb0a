"""``random-camera-datamodule``: random training cameras around the origin, turntable eval cameras.

Same config keys and batch layout as threestudio 0.2.3's ``data/uncond.py``: training
batches come from an endless ``IterableDataset`` whose resolution / batch size follow
``resolution_milestones`` (updated through ``update_step``), validation and test batches
from a fixed turntable at ``eval_elevation_deg`` / ``eval_camera_distance``.

Lightning collates training batches ahead of the step that uses them (as under
threestudio), so a milestone at step ``m`` shows in the batches of step ``m + 2`` on.

Spherical convention (threestudio's): right-handed, +z up; elevation in degrees above the
xy-plane, azimuth in degrees from +x towards +y.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ddpo3d.lite import register, warn
from ddpo3d.lite.utils.base import Updateable
from ddpo3d.lite.utils.ops import get_mvp_matrix, get_projection_matrix, get_ray_directions, get_rays
from ddpo3d.utils.config import ConfigError, parse_structured, to_primitive
from ddpo3d.utils.typing import Any, Dict, DictConfig, Float, List, Optional, Tensor, Tuple, Union

#: near / far planes of the projection matrix (threestudio hard-codes the same values)
NEAR, FAR = 0.01, 100.0


@dataclass
class RandomCameraDataModuleConfig:
    """Keys of threestudio's ``RandomCameraDataModuleConfig``.

    ``height`` / ``width`` / ``batch_size`` are an int or a list (one entry per stage of
    ``resolution_milestones``, which lists the global steps where the next stage starts).
    Angles are in degrees, distances in scene units.
    """

    height: Any = 64  # training image height in pixels (int or list per stage)
    width: Any = 64  # training image width in pixels (int or list per stage)
    batch_size: Any = 1  # training cameras per step (int or list per stage)
    resolution_milestones: List[int] = field(default_factory=list)  # steps starting stages 2, 3, ...
    eval_height: int = 512  # validation / test image height
    eval_width: int = 512  # validation / test image width
    eval_batch_size: int = 1  # cameras per eval batch (threestudio only supports 1)
    n_val_views: int = 1  # validation turntable views
    n_test_views: int = 120  # test turntable views (frames of the video)
    elevation_range: Tuple[float, float] = (-10, 90)  # training elevation range, degrees
    azimuth_range: Tuple[float, float] = (-180, 180)  # training azimuth range, degrees
    camera_distance_range: Tuple[float, float] = (1, 1.5)  # training camera distance range
    fovy_range: Tuple[float, float] = (40, 70)  # training vertical field of view, degrees
    camera_perturb: float = 0.1  # uniform jitter of camera position, +- this per axis
    center_perturb: float = 0.2  # std of Gaussian jitter of the look-at point
    up_perturb: float = 0.02  # std of Gaussian jitter of the up vector
    light_position_perturb: float = 1.0  # std of light direction noise ("dreamfusion")
    light_distance_range: Tuple[float, float] = (0.8, 1.5)  # light distance from the origin
    eval_elevation_deg: float = 15.0  # turntable elevation, degrees
    eval_camera_distance: float = 1.5  # turntable distance
    eval_fovy_deg: float = 70.0  # turntable vertical field of view, degrees
    light_sample_strategy: str = "dreamfusion"  # "dreamfusion" or "magic3d"
    batch_uniform_azimuth: bool = True  # stratify azimuths over the batch
    progressive_until: int = 0  # steps over which the view ranges widen from the eval view
    rays_d_normalize: bool = True  # unit-length ray directions


LIGHT_STRATEGIES = ("dreamfusion", "magic3d")
RANGE_KEYS = ("elevation_range", "azimuth_range", "camera_distance_range", "fovy_range", "light_distance_range")


def _as_list(value: Any, key: str) -> List[int]:
    value = to_primitive(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return list(value)
    raise ConfigError(f"random-camera-datamodule: {key} must be an int or a list of ints, got {value!r}")


def spherical_to_cartesian(
    elevation: Float[Tensor, " B"], azimuth: Float[Tensor, " B"], distance: Float[Tensor, " B"]
) -> Float[Tensor, "B 3"]:
    """Points at ``distance`` from the origin, angles in radians (z up, azimuth from +x to +y)."""
    return torch.stack(
        [
            distance * torch.cos(elevation) * torch.cos(azimuth),
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
        ],
        dim=-1,
    )


def look_at_c2w(
    camera_positions: Float[Tensor, "B 3"], center: Float[Tensor, "B 3"], up: Float[Tensor, "B 3"]
) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world matrices of cameras at ``camera_positions`` looking at ``center``.

    Columns are ``[right, up, -lookat, position]`` (camera looks down its -z axis).
    """
    lookat = F.normalize(center - camera_positions, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    true_up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(camera_positions.shape[0], 4, 4, dtype=camera_positions.dtype)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -lookat
    c2w[:, :3, 3] = camera_positions
    c2w[:, 3, 3] = 1.0
    return c2w


def rays_for_cameras(
    directions_unit_focal: Float[Tensor, "H W 3"],
    c2w: Float[Tensor, "B 4 4"],
    fovy: Float[Tensor, " B"],
    height: int,
    normalize: bool,
) -> Tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
    """Scale unit-focal directions by each camera's focal length ``0.5 H / tan(fovy / 2)`` and
    rotate them into the world."""
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    directions = directions_unit_focal[None].repeat(c2w.shape[0], 1, 1, 1)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    return get_rays(directions, c2w, keepdim=True, normalize=normalize)


class RandomCameraIterableDataset(IterableDataset, Updateable):
    """Endless random training cameras; ``collate`` draws a whole batch.

    Args:
        cfg: a parsed :class:`RandomCameraDataModuleConfig`.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.heights = _as_list(cfg.height, "height")
        self.widths = _as_list(cfg.width, "width")
        self.batch_sizes = _as_list(cfg.batch_size, "batch_size")
        milestones = list(cfg.resolution_milestones)
        n = len(self.heights)
        if not len(self.heights) == len(self.widths) == len(self.batch_sizes):
            # threestudio asserts this too: a single value is not repeated over the stages
            raise ConfigError(
                "random-camera-datamodule: height, width and batch_size need the same number of entries "
                f"(one per resolution stage); got height={cfg.height}, width={cfg.width}, batch_size={cfg.batch_size}"
            )
        if n == 1:
            if milestones:
                warn("random-camera-datamodule: ignoring resolution_milestones, height/width/batch_size are fixed")
            self.resolution_milestones = [-1]
        else:
            if n != len(milestones) + 1:
                raise ConfigError(
                    "random-camera-datamodule: height, width and batch_size lists need one entry per stage, "
                    f"i.e. len(resolution_milestones) + 1 = {len(milestones) + 1}; got height={cfg.height}, "
                    f"width={cfg.width}, batch_size={cfg.batch_size}, resolution_milestones={milestones}"
                )
            if milestones != sorted(milestones):
                raise ConfigError(f"random-camera-datamodule: resolution_milestones must increase, got {milestones}")
            self.resolution_milestones = [-1] + milestones
        self.directions_unit_focals = [
            get_ray_directions(H=h, W=w, focal=1.0) for h, w in zip(self.heights, self.widths)
        ]
        self._set_stage(0)
        self.elevation_range = list(cfg.elevation_range)
        self.azimuth_range = list(cfg.azimuth_range)
        self.camera_distance_range = list(cfg.camera_distance_range)
        self.fovy_range = list(cfg.fovy_range)

    def _set_stage(self, index: int) -> None:
        self.height: int = self.heights[index]
        self.width: int = self.widths[index]
        self.batch_size: int = self.batch_sizes[index]
        self.directions_unit_focal = self.directions_unit_focals[index]

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Pick the resolution stage for ``global_step`` and widen the view ranges."""
        self._set_stage(bisect.bisect_right(self.resolution_milestones, global_step) - 1)
        self.progressive_view(global_step)

    def progressive_view(self, global_step: int) -> None:
        """Interpolate elevation / azimuth ranges from the eval view to the configured ranges
        over ``progressive_until`` steps (threestudio's progressive views)."""
        r = min(1.0, global_step / (self.cfg.progressive_until + 1))
        e0 = self.cfg.eval_elevation_deg
        self.elevation_range = [
            (1 - r) * e0 + r * self.cfg.elevation_range[0],
            (1 - r) * e0 + r * self.cfg.elevation_range[1],
        ]
        self.azimuth_range = [r * self.cfg.azimuth_range[0], r * self.cfg.azimuth_range[1]]

    def __iter__(self):
        while True:
            yield {}

    def _sample_elevation(self, b: int) -> Float[Tensor, " B"]:
        lo, hi = self.elevation_range
        if random.random() < 0.5:
            # uniform in degrees (puts relatively more views near the poles)
            return torch.rand(b) * (hi - lo) + lo
        # uniform on the sphere: inverse-CDF sampling of sin(elevation)
        s0, s1 = math.sin(math.radians(lo)), math.sin(math.radians(hi))
        return torch.rad2deg(torch.asin(torch.rand(b) * (s1 - s0) + s0))

    def _sample_azimuth(self, b: int) -> Float[Tensor, " B"]:
        lo, hi = self.azimuth_range
        if self.cfg.batch_uniform_azimuth:
            # one azimuth per equal slice of the range, so a batch covers all sides
            return (torch.rand(b) + torch.arange(b)) / b * (hi - lo) + lo
        return torch.rand(b) * (hi - lo) + lo

    def _sample_lights(self, camera_positions: Float[Tensor, "B 3"]) -> Float[Tensor, "B 3"]:
        b = camera_positions.shape[0]
        d0, d1 = self.cfg.light_distance_range
        light_distances = torch.rand(b) * (d1 - d0) + d0
        if self.cfg.light_sample_strategy == "dreamfusion":
            # DreamFusion (Poole et al. 2022, Sec. 3.1): light near the camera direction
            direction = F.normalize(camera_positions + torch.randn(b, 3) * self.cfg.light_position_perturb, dim=-1)
            return direction * light_distances[:, None]
        if self.cfg.light_sample_strategy == "magic3d":
            # Magic3D: light within a cone of elevation [30°, 90°] around the camera's axis
            local_z = F.normalize(camera_positions, dim=-1)
            local_x = F.normalize(
                torch.stack([local_z[:, 1], -local_z[:, 0], torch.zeros_like(local_z[:, 0])], -1), dim=-1
            )
            local_y = F.normalize(torch.cross(local_z, local_x, dim=-1), dim=-1)
            rot = torch.stack([local_x, local_y, local_z], dim=-1)
            light_azimuth = torch.rand(b) * math.pi * 2 - math.pi
            light_elevation = torch.rand(b) * math.pi / 3 + math.pi / 6
            local = spherical_to_cartesian(light_elevation, light_azimuth, light_distances)
            return (rot @ local[:, :, None])[:, :, 0]
        raise ConfigError(
            f"random-camera-datamodule: unknown light_sample_strategy {self.cfg.light_sample_strategy!r}; "
            f"known: {', '.join(LIGHT_STRATEGIES)}"
        )

    def collate(self, batch: Any) -> Dict[str, Any]:
        """Draw ``batch_size`` random cameras.

        Returns:
            threestudio's batch dict: ``rays_o``/``rays_d`` ``[B, H, W, 3]``, ``mvp_mtx``/``c2w``/
            ``proj_mtx`` ``[B, 4, 4]``, ``camera_positions``/``light_positions`` ``[B, 3]``,
            ``elevation``/``azimuth`` (degrees) / ``camera_distances`` / ``fovy`` (radians) ``[B]``,
            ``height``/``width`` ints.
        """
        b = self.batch_size
        elevation_deg = self._sample_elevation(b)
        azimuth_deg = self._sample_azimuth(b)
        r0, r1 = self.camera_distance_range
        camera_distances = torch.rand(b) * (r1 - r0) + r0
        camera_positions = spherical_to_cartesian(
            torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg), camera_distances
        )
        camera_positions = camera_positions + (torch.rand(b, 3) * 2 - 1) * self.cfg.camera_perturb
        center = torch.randn(b, 3) * self.cfg.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0])[None].repeat(b, 1) + torch.randn(b, 3) * self.cfg.up_perturb
        f0, f1 = self.fovy_range
        fovy = torch.deg2rad(torch.rand(b) * (f1 - f0) + f0)
        light_positions = self._sample_lights(camera_positions)
        c2w = look_at_c2w(camera_positions, center, up)
        rays_o, rays_d = rays_for_cameras(self.directions_unit_focal, c2w, fovy, self.height, self.cfg.rays_d_normalize)
        proj_mtx = get_projection_matrix(fovy, self.width / self.height, NEAR, FAR)
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
            "proj_mtx": proj_mtx,
        }


class RandomCameraDataset(Dataset):
    """Turntable cameras for validation (``split="val"``) or test (``"test"``).

    Validation views are spread over [0°, 360°) without repeating the first; test views
    go from 0° to 360° inclusive (a closed loop for the video), as in threestudio.
    """

    def __init__(self, cfg: Any, split: str) -> None:
        super().__init__()
        if split not in ("val", "test"):
            raise ValueError(f"RandomCameraDataset: split must be 'val' or 'test', got {split!r}")
        self.cfg = cfg
        self.split = split
        self.n_views = cfg.n_val_views if split == "val" else cfg.n_test_views
        if self.n_views < 1:
            raise ConfigError(f"random-camera-datamodule: n_{split}_views must be >= 1, got {self.n_views}")
        if split == "val":
            azimuth_deg = torch.linspace(0, 360.0, self.n_views + 1)[: self.n_views]
        else:
            azimuth_deg = torch.linspace(0, 360.0, self.n_views)
        elevation_deg = torch.full_like(azimuth_deg, cfg.eval_elevation_deg)
        camera_distances = torch.full_like(azimuth_deg, cfg.eval_camera_distance)
        camera_positions = spherical_to_cartesian(
            torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg), camera_distances
        )
        center = torch.zeros_like(camera_positions)
        up = torch.tensor([0.0, 0.0, 1.0])[None].repeat(self.n_views, 1)
        fovy = torch.deg2rad(torch.full_like(azimuth_deg, cfg.eval_fovy_deg))
        c2w = look_at_c2w(camera_positions, center, up)
        directions = get_ray_directions(H=cfg.eval_height, W=cfg.eval_width, focal=1.0)
        self.rays_o, self.rays_d = rays_for_cameras(directions, c2w, fovy, cfg.eval_height, cfg.rays_d_normalize)
        self.proj_mtx = get_projection_matrix(fovy, cfg.eval_width / cfg.eval_height, NEAR, FAR)
        self.mvp_mtx = get_mvp_matrix(c2w, self.proj_mtx)
        self.c2w = c2w
        self.camera_positions = camera_positions
        self.light_positions = camera_positions  # headlight
        self.elevation_deg, self.azimuth_deg = elevation_deg, azimuth_deg
        self.camera_distances = camera_distances
        self.fovy = fovy

    def __len__(self) -> int:
        return self.n_views

    #: batch key -> attribute holding that quantity for every view
    _PER_VIEW = {
        "rays_o": "rays_o",
        "rays_d": "rays_d",
        "mvp_mtx": "mvp_mtx",
        "c2w": "c2w",
        "camera_positions": "camera_positions",
        "light_positions": "light_positions",
        "elevation": "elevation_deg",
        "azimuth": "azimuth_deg",
        "camera_distances": "camera_distances",
        "fovy": "fovy",
        "proj_mtx": "proj_mtx",
    }

    def _image_size(self) -> Dict[str, int]:
        return {"height": self.cfg.eval_height, "width": self.cfg.eval_width}

    def __getitem__(self, index: int) -> Dict[str, Any]:
        view = {key: getattr(self, attr)[index] for key, attr in self._PER_VIEW.items()}
        return {"index": index, **view, **self._image_size()}

    def collate(self, batch: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Stack the views; height and width stay plain ints."""
        return {**torch.utils.data.default_collate(batch), **self._image_size()}


@register("random-camera-datamodule")
class RandomCameraDataModule(pl.LightningDataModule):
    """threestudio's ``random-camera-datamodule`` (text-to-3D without images).

    Args:
        cfg: dict / OmegaConf block of :class:`RandomCameraDataModuleConfig` keys; unknown
            keys raise :class:`~ddpo3d.utils.config.ConfigError`.
    """

    cfg: RandomCameraDataModuleConfig

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(RandomCameraDataModuleConfig, cfg, where="random-camera-datamodule")
        if self.cfg.light_sample_strategy not in LIGHT_STRATEGIES:
            raise ConfigError(
                f"random-camera-datamodule: unknown light_sample_strategy {self.cfg.light_sample_strategy!r}; "
                f"known: {', '.join(LIGHT_STRATEGIES)}"
            )
        for key in RANGE_KEYS:
            value = list(getattr(self.cfg, key))
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"random-camera-datamodule: {key} must be [low, high] with low <= high, got {value}")
        # fail on malformed resolution stages now rather than at fit time
        RandomCameraIterableDataset(self.cfg)

    #: datasets each Lightning stage needs (None: all)
    STAGE_SPLITS = {
        None: ("train", "val", "test"),
        "fit": ("train", "val"),
        "validate": ("val",),
        "test": ("test",),
        "predict": ("test",),
    }

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the datasets ``stage`` uses as ``train_dataset`` / ``val_dataset`` / ``test_dataset``."""
        for split in self.STAGE_SPLITS.get(stage, ()):
            dataset = (
                RandomCameraIterableDataset(self.cfg) if split == "train" else RandomCameraDataset(self.cfg, split)
            )
            setattr(self, f"{split}_dataset", dataset)

    def prepare_data(self) -> None:
        """Nothing to download."""

    @staticmethod
    def _loader(dataset: Dataset) -> DataLoader:
        """The training dataset collates whole batches itself (``batch_size=None``: one item is one
        batch); evaluation batches hold one view. No worker processes: ``update_step`` changes the
        training dataset in place, which workers would not see."""
        per_batch = None if isinstance(dataset, IterableDataset) else 1
        return DataLoader(dataset, batch_size=per_batch, num_workers=0, collate_fn=dataset.collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)
