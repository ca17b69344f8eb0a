"""normal-consistency on an analytic sphere: exact normals agree, wrong ones do not, gradients flow."""

import math

import pytest
import torch

from ddpo3d.rewards import build_reward
from ddpo3d.rewards.normal_consistency import depth_normals
from ddpo3d.utils.config import ConfigError


def sphere_scene(B=2, H=24, W=24, radius=0.6, dist=2.5, fov_deg=40.0):
    """Pinhole cameras on the -z axis looking at a sphere at the origin: exact depth and normals."""
    f = 0.5 * W / math.tan(math.radians(fov_deg) / 2)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d = torch.stack([(u - W / 2) / f, (v - H / 2) / f, torch.ones_like(u)], -1)
    rays_d = torch.nn.functional.normalize(d, dim=-1).expand(B, H, W, 3).clone()
    rays_o = torch.tensor([0.0, 0.0, -dist]).expand(B, H, W, 3).clone()
    # |o + t d|² = r²  ->  t² + 2 (o·d) t + |o|² - r² = 0
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o**2).sum(-1) - radius**2
    disc = b**2 - c
    hit = disc > 0
    t = torch.where(hit, -b - disc.clamp(min=0).sqrt(), torch.zeros_like(b))
    opacity = hit.float()[..., None]
    normal = torch.nn.functional.normalize(rays_o + t[..., None] * rays_d, dim=-1) * opacity
    depth = t[..., None] * opacity
    return {
        "comp_normal": (normal + 1) / 2 * opacity,
        "depth": depth,
        "opacity": opacity,
        "rays_o": rays_o,
        "rays_d": rays_d,
    }


def test_exact_sphere_normals_agree_and_wrong_normals_do_not():
    reward = build_reward({"type": "normal-consistency"})
    ro = sphere_scene()
    images = torch.rand(2, 24, 24, 3)
    good = reward(images, ["", ""], render_out=ro)
    assert good.shape == (2,) and float(good.min()) > 0.97
    flipped = dict(ro, comp_normal=(1 - ro["comp_normal"] / ro["opacity"].clamp(min=1e-6)) * ro["opacity"])
    assert float(reward(images, ["", ""], render_out=flipped).max()) < -0.97
    # inverted normals count as agreement only with orient_rendered
    oriented = build_reward({"type": "normal-consistency", "orient_rendered": True})
    assert float(oriented(images, ["", ""], render_out=flipped).min()) > 0.97
    g = torch.Generator().manual_seed(0)
    noisy_n = torch.nn.functional.normalize(torch.randn(2, 24, 24, 3, generator=g), dim=-1)
    noisy = dict(ro, comp_normal=(noisy_n + 1) / 2 * ro["opacity"])
    assert abs(float(reward(images, ["", ""], render_out=noisy).mean())) < 0.2
    raw = build_reward({"type": "normal-consistency", "normal_encoding": "raw"})
    raw_n = 2 * ro["comp_normal"] - ro["opacity"]  # the unit normal on the foreground
    assert torch.allclose(raw(images, ["", ""], render_out=dict(ro, comp_normal=raw_n)), good, atol=1e-5)


def test_depth_normals_of_a_tilted_plane_are_exact():
    B, H, W = 1, 8, 8
    ro = sphere_scene(B, H, W)
    n_true = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, -1.0]), dim=0)
    # plane n·x = -1 (in front of the camera): t = (-1 - n·o) / (n·d)
    t = (-1 - (ro["rays_o"] * n_true).sum(-1)) / (ro["rays_d"] * n_true).sum(-1)
    n = depth_normals(t[..., None], torch.ones(B, H, W, 1), ro["rays_o"], ro["rays_d"])
    assert torch.allclose(n, n_true.expand_as(n), atol=1e-4)


def test_gradients_reach_normal_and_depth():
    reward = build_reward({"type": "normal-consistency"})
    ro = sphere_scene()
    depth = (ro["depth"] * 1.05).requires_grad_(True)  # a slightly wrong surface
    normal = (ro["comp_normal"] + 0.02).requires_grad_(True)
    scores = reward(torch.rand(2, 24, 24, 3), ["", ""], render_out=dict(ro, depth=depth, comp_normal=normal))
    scores.sum().backward()
    assert depth.grad.abs().sum() > 0 and normal.grad.abs().sum() > 0


def test_clear_errors_without_renderer_outputs():
    reward = build_reward({"type": "normal-consistency"})
    images = torch.rand(2, 24, 24, 3)
    with pytest.raises(ValueError, match="render_out"):
        reward(images, ["", ""])
    ro = sphere_scene()
    with pytest.raises(ValueError, match="normal_type"):
        reward(images, ["", ""], render_out=dict(ro, comp_normal=None))
    with pytest.raises(ValueError, match="depth"):
        reward(images, ["", ""], render_out={k: v for k, v in ro.items() if k != "depth"})
    with pytest.raises(ValueError, match=r"opacity.*\[2, H, W, 1\]"):
        reward(images, ["", ""], render_out=dict(ro, opacity=ro["opacity"][..., 0]))
    with pytest.raises(ConfigError, match="normal_encoding"):
        build_reward({"type": "normal-consistency", "normal_encoding": "rgb"})


@pytest.mark.slow
def test_scores_toy_renders_as_an_eval_reward(tmp_path):
    """The ddpo3d-system hands render outputs and rays to geometry rewards: the toy world with
    analytic normals logs normal-consistency as its val/test reward."""
    import csv
    import math
    from pathlib import Path

    from launch import main

    config = Path(__file__).resolve().parents[1] / "configs" / "toy" / "sds.yaml"
    args = [
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "data.n_val_views=1",
        "data.n_test_views=2",
        "data.width=16",
        "data.height=16",
        "data.eval_width=24",
        "data.eval_height=24",
        "system.renderer.num_samples_per_ray=16",
        "system.geometry.normal_type=analytic",
        "system.material.requires_normal=true",
        "system.eval_reward.type=normal-consistency",
        "use_timestamp=false",
        f"exp_root_dir={tmp_path}",
        "tag=nc",
    ]
    assert main(["--config", str(config), "--train", *args]) == 0
    with open(next(tmp_path.glob("*/nc/save/metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test" and r["name"] == "reward"]
    assert rows and all(-1.0 <= float(r["value"]) <= 1.0 and math.isfinite(float(r["value"])) for r in rows)


def test_a_weighted_geometry_reward_passes_render_out_to_its_term():
    """A weight != 1 wraps the reward in a composite: it still needs and forwards the render outputs."""
    plain = build_reward({"type": "normal-consistency"})
    weighted = build_reward([{"type": "normal-consistency", "weight": 2.0}, {"type": "brightness", "weight": 0.5}])
    assert weighted.needs_render_out and not build_reward({"type": "brightness", "weight": 2.0}).needs_render_out
    ro, images = sphere_scene(), torch.rand(2, 24, 24, 3)
    expected = 2.0 * plain(images, ["", ""], render_out=ro) + 0.5 * build_reward({"type": "brightness"})(
        images, ["", ""]
    )
    assert torch.allclose(weighted(images, ["", ""], render_out=ro), expected, atol=1e-6)
    with pytest.raises(ValueError, match="render_out"):
        weighted(images, ["", ""])


def test_non_finite_geometry_is_a_non_finite_reward_in_training():
    """Inside a training step (the training guard's scope) a NaN surface raises NonFiniteError, which
    skips the update; outside it (eval scoring) the NaN is returned and logged."""
    from ddpo3d.utils.finite import NonFiniteError, finite_rewards_required

    reward = build_reward({"type": "normal-consistency"})
    ro = sphere_scene()
    ro["depth"][0, 10, 10, 0] = float("nan")
    images = torch.rand(2, 24, 24, 3)
    assert torch.isnan(reward(images, ["", ""], render_out=ro)[0])
    with finite_rewards_required(), pytest.raises(NonFiniteError, match="normal-consistency"):
        reward(images, ["", ""], render_out=ro)
