"""magic3d-system on the built-in runtime: coarse-stage losses, the refinement error, and a
reduced run of the shipped configs/magic3d-coarse-sd.yaml through launch.py (tiny SD)."""

import math
import os
import random

import imageio
import pytest
import torch
from helpers import ROOT, reduced_overrides, tiny_sd, train_loss_rows  # noqa: F401  (tiny_sd: fixture)
from omegaconf import OmegaConf

import ddpo3d.lite as threestudio
from ddpo3d.lite.data.uncond import RandomCameraDataModule
from ddpo3d.lite.systems.dreamfusion import DreamFusion
from ddpo3d.lite.systems.magic3d import Magic3D
from ddpo3d.lite.utils.ops import binary_cross_entropy
from ddpo3d.utils.config import ConfigError

CONFIG = os.path.join(ROOT, "configs", "magic3d-coarse-sd.yaml")


def system_cfg(**overrides):
    """The shipped config's system block (minus guidance / prompt, built by on_fit_start),
    with a small hash grid for speed."""
    cfg = OmegaConf.load(CONFIG)
    OmegaConf.update(cfg, "system.prompt_processor.prompt", "a hamburger")
    system = OmegaConf.to_container(cfg.system, resolve=True)
    system["geometry"]["pos_encoding_config"].update(n_levels=4, log2_hashmap_size=10, per_level_scale=2.0)
    system["renderer"]["num_samples_per_ray"] = 8
    for key, value in overrides.items():
        target = system
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return system


def reseed(seed):
    """Seed torch and Python's ``random`` (the material's shading augmentation uses the latter)."""
    random.seed(seed)
    torch.manual_seed(seed)


class SumGuidance:
    """Guidance double: ``loss_sds`` = mean render colour, plus a scalar diagnostic."""

    def __call__(self, rgb, prompt_utils, **kwargs):
        return {"loss_sds": rgb.mean(), "grad_norm": torch.tensor(1.0)}


def batch16(size=16, batch_size=2):
    dm = RandomCameraDataModule(
        {"width": size, "height": size, "batch_size": batch_size, "light_sample_strategy": "magic3d"}
    )
    dm.setup()
    return dm.train_dataset.collate({})


def test_registered_and_on_the_host():
    assert threestudio.find("magic3d-system") is Magic3D
    from ddpo3d import host

    if host.HOST == "lite":
        assert host.Magic3D is Magic3D


def test_refinement_is_rejected_naming_it():
    with pytest.raises(NotImplementedError) as err:
        Magic3D(system_cfg(refinement=True))
    msg = str(err.value)
    assert "system.refinement=true" in msg and "tetrahedra-sdf-grid" in msg and "threestudio" in msg


def test_missing_coarse_lambda_is_named():
    cfg = system_cfg()
    del cfg["loss"]["lambda_opaque"]
    with pytest.raises(ConfigError, match="system.loss.lambda_opaque"):
        Magic3D(cfg)
    with pytest.raises(ConfigError, match="refinment"):
        Magic3D(system_cfg(refinment=False))


def test_coarse_loss_is_sds_plus_sparsity_and_opacity():
    system = Magic3D(
        system_cfg(
            **{
                "loss.lambda_orient": 0.0,
                "loss.lambda_opaque": 0.5,
                "loss.lambda_sparsity": 2.0,
                "loss.lambda_sds": 3.0,
            }
        )
    )
    system.prompt_processor = lambda: None
    system.guidance = SumGuidance()
    batch = batch16()
    system.train()
    reseed(1)
    out = system(batch)
    opacity = out["opacity"]
    clamped = opacity.clamp(1e-3, 1 - 1e-3)
    expected = (
        3.0 * out["comp_rgb"].mean()
        + 2.0 * (opacity**2 + 0.01).sqrt().mean()
        + 0.5 * binary_cross_entropy(clamped, clamped)
    )
    reseed(1)
    loss = system.training_step(batch, 0)["loss"]
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grads = [p.grad for p in system.geometry.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_orient_term_needs_normals_and_adds_when_weighted():
    """lambda_orient > 0 adds Σ w·max(0, n·d)² / #(opacity > 0) (the shipped config's analytic normals)."""
    system = Magic3D(system_cfg(**{"loss.lambda_orient": 10.0, "loss.lambda_sparsity": 0.0, "loss.lambda_sds": 0.0}))
    system.prompt_processor = lambda: None
    system.guidance = SumGuidance()
    batch = batch16(size=8, batch_size=1)
    system.train()
    reseed(2)
    out = system(batch)
    assert "normal" in out
    dots = (out["normal"] * out["t_dirs"]).sum(-1, keepdim=True).clamp_min(0.0)
    orient = (out["weights"].detach() * dots**2).sum() / (out["opacity"] > 0).sum()
    reseed(2)
    loss = system.training_step(batch, 0)["loss"]
    torch.testing.assert_close(loss, 10.0 * orient, rtol=1e-4, atol=1e-6)


def test_magic3d_reuses_dreamfusion_outputs():
    # validation / test grids and the turntable video are DreamFusion's (same in threestudio)
    assert issubclass(Magic3D, DreamFusion)
    assert Magic3D.validation_step is DreamFusion.validation_step
    assert Magic3D.on_test_epoch_end is DreamFusion.on_test_epoch_end


# ---------------------------------------------------------------- the shipped config, reduced
@pytest.mark.slow
def test_reduced_magic3d_coarse_sd_trains_and_tests(tiny_sd, tmp_path, capsys, monkeypatch):
    import launch

    monkeypatch.setenv("DDPO3D_TEXT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    rc = launch.main(
        ["--config", CONFIG, "--train", "--gpu", "0"] + reduced_overrides(tiny_sd, tmp_path), custom_dirs=[]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    trial = tmp_path / "magic3d-coarse-sd" / "a_delicious_hamburger"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (trial / "save" / "it2-0.png").is_file()
    video = imageio.mimread(str(trial / "save" / "it3-test.mp4"))
    assert len(video) == 2 and video[0].shape[0] == 32
    rows = train_loss_rows(trial)
    assert len(rows) == 3
    for r in rows:
        for key in ("train/loss_sds", "train/loss", "train/loss_sparsity", "train/loss_opaque", "train/loss_orient"):
            assert math.isfinite(float(r[key])), key
