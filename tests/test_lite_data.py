"""random-camera-datamodule: batch layout, camera geometry, milestones, config errors."""

import math

import pytest
import torch

from ddpo3d import lite
from ddpo3d.lite.data.uncond import RandomCameraDataModule
from ddpo3d.utils.config import ConfigError

TRAIN_KEYS = {
    "rays_o",
    "rays_d",
    "mvp_mtx",
    "camera_positions",
    "c2w",
    "light_positions",
    "elevation",
    "azimuth",
    "camera_distances",
    "height",
    "width",
    "fovy",
    "proj_mtx",
}


def make(**cfg):
    base = {
        "width": 8,
        "height": 6,
        "batch_size": 3,
        "eval_width": 10,
        "eval_height": 4,
        "n_val_views": 2,
        "n_test_views": 5,
    }
    base.update(cfg)
    dm = RandomCameraDataModule(base)
    dm.setup()
    return dm


def test_registered_under_threestudio_name():
    assert lite.find("random-camera-datamodule") is RandomCameraDataModule


def test_train_batch_keys_and_shapes():
    dm = make()
    batch = dm.train_dataset.collate({})
    assert set(batch) == TRAIN_KEYS
    assert batch["rays_o"].shape == (3, 6, 8, 3) and batch["rays_d"].shape == (3, 6, 8, 3)
    assert batch["mvp_mtx"].shape == (3, 4, 4) and batch["c2w"].shape == (3, 4, 4)
    for k in ("camera_positions", "light_positions"):
        assert batch[k].shape == (3, 3)
    for k in ("elevation", "azimuth", "camera_distances", "fovy"):
        assert batch[k].shape == (3,)
    assert batch["height"] == 6 and batch["width"] == 8
    # unit directions, origins at the camera positions
    assert torch.allclose(batch["rays_d"].norm(dim=-1), torch.ones(3, 6, 8), atol=1e-5)
    assert torch.allclose(batch["rays_o"][:, 0, 0], batch["camera_positions"])


def test_train_cameras_respect_ranges_and_look_at_the_centre():
    dm = make(
        batch_size=16,
        camera_perturb=0.0,
        center_perturb=0.0,
        up_perturb=0.0,
        elevation_range=[10, 30],
        azimuth_range=[-90, 90],
        camera_distance_range=[1.5, 2.0],
        fovy_range=[40, 50],
    )
    for _ in range(3):
        b = dm.train_dataset.collate({})
        assert ((b["elevation"] >= 10 - 1e-4) & (b["elevation"] <= 30 + 1e-4)).all()
        assert ((b["azimuth"] >= -90) & (b["azimuth"] <= 90)).all()
        assert ((b["camera_distances"] >= 1.5) & (b["camera_distances"] <= 2.0)).all()
        assert ((b["fovy"] >= math.radians(40) - 1e-6) & (b["fovy"] <= math.radians(50) + 1e-6)).all()
        assert torch.allclose(b["camera_positions"].norm(dim=-1), b["camera_distances"], atol=1e-5)
        # the central pixel ray points at the origin: -z column of c2w is the view direction
        forward = -b["c2w"][:, :3, 2]
        assert torch.allclose(forward, -torch.nn.functional.normalize(b["camera_positions"], dim=-1), atol=1e-5)
        # elevation matches the position's angle above the xy-plane
        z = b["camera_positions"][:, 2] / b["camera_distances"]
        assert torch.allclose(torch.rad2deg(torch.asin(z)), b["elevation"], atol=1e-3)


def test_batch_uniform_azimuth_stratifies():
    dm = make(batch_size=4, azimuth_range=[-180, 180])
    az = dm.train_dataset.collate({})["azimuth"]
    for i in range(4):
        assert -180 + 90 * i <= az[i] <= -180 + 90 * (i + 1)


def test_mvp_projects_the_origin_to_the_image_centre():
    dm = make(camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0)
    b = dm.train_dataset.collate({})
    clip = b["mvp_mtx"] @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    ndc = clip[:, :3] / clip[:, 3:]
    assert torch.allclose(ndc[:, :2], torch.zeros(3, 2), atol=1e-5)


def test_resolution_milestones_change_size_and_batch():
    dm = make(width=[8, 16], height=[8, 12], batch_size=[4, 2], resolution_milestones=[10])
    ds = dm.train_dataset
    ds.update_step(0, 9)
    assert ds.collate({})["rays_o"].shape == (4, 8, 8, 3)
    ds.update_step(0, 10)
    b = ds.collate({})
    assert b["rays_o"].shape == (2, 12, 16, 3) and (b["height"], b["width"]) == (12, 16)


def test_progressive_view_starts_at_the_eval_elevation():
    dm = make(progressive_until=100, eval_elevation_deg=15.0, elevation_range=[-10, 80], azimuth_range=[-180, 180])
    ds = dm.train_dataset
    ds.update_step(0, 0)
    assert ds.elevation_range == [15.0, 15.0] and ds.azimuth_range == [0.0, 0.0]
    ds.update_step(0, 1000)
    assert ds.elevation_range == [-10.0, 80.0]


@pytest.mark.parametrize("strategy", ["dreamfusion", "magic3d"])
def test_light_strategies_place_lights_in_range(strategy):
    dm = make(batch_size=8, light_sample_strategy=strategy, light_distance_range=[0.8, 1.5])
    lights = dm.train_dataset.collate({})["light_positions"]
    assert lights.shape == (8, 3)
    d = lights.norm(dim=-1)
    assert ((d >= 0.8 - 1e-5) & (d <= 1.5 + 1e-5)).all()


def test_eval_turntables():
    dm = make()
    val = list(dm.val_dataloader())
    test = list(dm.test_dataloader())
    assert len(val) == 2 and len(test) == 5
    b = test[0]
    assert set(b) == TRAIN_KEYS | {"index"}
    assert b["rays_o"].shape == (1, 4, 10, 3) and (b["height"], b["width"]) == (4, 10)
    az = torch.cat([t["azimuth"] for t in test])
    assert torch.allclose(az, torch.linspace(0, 360, 5))  # closed loop for the video
    assert torch.allclose(torch.cat([v["azimuth"] for v in val]), torch.tensor([0.0, 180.0]))
    assert torch.allclose(b["camera_distances"], torch.tensor([1.5]))
    assert torch.allclose(b["light_positions"], b["camera_positions"])


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="eval_widht"):
        RandomCameraDataModule({"eval_widht": 64})


def test_mismatched_milestones_are_an_error():
    with pytest.raises(ConfigError, match="resolution_milestones"):
        RandomCameraDataModule({"width": [8, 16], "height": [8, 16], "batch_size": [1, 1], "resolution_milestones": []})


def test_unknown_light_strategy_is_an_error():
    with pytest.raises(ConfigError, match="light_sample_strategy"):
        RandomCameraDataModule({"light_sample_strategy": "sun"})


def test_bad_size_type_is_an_error():
    with pytest.raises(ConfigError, match="width"):
        RandomCameraDataModule({"width": "big"})


@pytest.mark.parametrize("value", [[1.0], [2.0, 1.0], [1, 2, 3]])
def test_malformed_ranges_are_an_error(value):
    with pytest.raises(ConfigError, match="camera_distance_range"):
        RandomCameraDataModule({"camera_distance_range": value})


def test_stage_lists_must_have_equal_lengths_as_in_threestudio():
    """threestudio asserts len(height) == len(width) == len(batch_size): a single value is not repeated."""
    with pytest.raises(ConfigError, match="same number of entries"):
        make(width=[8, 16], height=[8, 16], batch_size=2, resolution_milestones=[10])
    make(width=[8, 16], height=[8, 16], batch_size=[2, 2], resolution_milestones=[10])
