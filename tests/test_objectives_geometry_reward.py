"""Geometry rewards (normal-consistency) train through reward-backprop, and only through it.

The system hands the guidance its render outputs (``render_out``); the objective takes the
reward's gradient at every render tensor the reward reads (normals, depth, opacity) and sets its
length per view against SDS's (``strength_mode: ratio``); objectives that score x̂0 predictions
refuse a geometry reward when they are configured.
"""

import csv
import math
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from test_rewards_normal_consistency import sphere_scene

from ddpo3d.diffusion import AnalyticGaussianPrior
from ddpo3d.objectives import RewardGuidedSDS
from ddpo3d.rewards import build_reward
from ddpo3d.utils.config import ConfigError

CONFIG = Path(ROOT) / "configs" / "toy" / "normal-consistency-backprop.yaml"
#: objectives that score denoised predictions x̂0 (no geometry)
X0_OBJECTIVES = ["ddpo3d", "dreamfl", "reward-tilted", "reward-sds", "dreamdpo"]


def _load_extension():
    from ddpo3d.host import threestudio
    from launch import default_custom_dirs, load_custom_modules

    if "ddpo3d-system" not in threestudio.__modules__:
        load_custom_modules(default_custom_dirs())


def _scene_with_grad(B=2, H=16, W=16):
    """The analytic sphere with a slightly wrong surface: depth and normals carry gradients."""
    ro = sphere_scene(B, H, W)
    g = torch.Generator().manual_seed(0)
    depth = (ro["depth"] * (1 + 0.05 * torch.rand(B, H, W, 1, generator=g))).requires_grad_(True)
    normal = (ro["comp_normal"] + 0.03 * torch.rand(B, H, W, 3, generator=g)).requires_grad_(True)
    rgb = (0.3 + 0.4 * torch.rand(B, H, W, 3, generator=g)).requires_grad_(True)
    return rgb, dict(ro, depth=depth, comp_normal=normal, comp_rgb=rgb)


@pytest.mark.parametrize("mode", ["ratio", "lambda"])
def test_reward_backprop_gradient_reaches_geometry_with_the_set_strength(mode):
    reward = build_reward({"type": "normal-consistency"})
    rgb, ro = _scene_with_grad()
    pred = AnalyticGaussianPrior(sigma_data=0.05)
    cond = pred.encode(torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(1)))[:, None]
    obj = RewardGuidedSDS({"objective": {"type": "reward-backprop", "strength_mode": mode, "grad_ratio": 0.5}})
    out = obj(
        rgb, pred, cond, None, ["a red sphere"] * 2, reward, generator=torch.Generator().manual_seed(0), render_out=ro
    )
    assert {"loss_reward", "reward_mean", "align_to_sds_grad_ratio", "align_raw_to_sds_grad_ratio"} <= set(out)
    assert out["reward_mean"] == pytest.approx(float(reward(rgb, ["", ""], render_out=ro).mean()), abs=1e-6)
    g_rgb, g_depth, g_normal = torch.autograd.grad(
        out["loss_reward"], [rgb, ro["depth"], ro["comp_normal"]], retain_graph=True
    )
    (sds_at_render,) = torch.autograd.grad(out["loss_sds"], rgb)  # SDS's gradient at the render
    assert float(g_rgb.abs().max()) == 0.0  # the reward does not read the colours
    assert float(g_depth.abs().sum()) > 0 and float(g_normal.abs().sum()) > 0
    sent = torch.cat([g_depth.flatten(1), g_normal.flatten(1)], 1).norm(dim=1)
    raw_d, raw_n = torch.autograd.grad(-reward(rgb, ["", ""], render_out=ro).mean(), [ro["depth"], ro["comp_normal"]])
    raw = torch.cat([raw_d.flatten(1), raw_n.flatten(1)], 1).norm(dim=1)
    if mode == "lambda":  # the plain loss: the raw gradient
        assert torch.allclose(sent, raw, rtol=1e-5)
    else:  # ratio: one factor per view on every tensor (directions kept); the logged ratio is grad_ratio
        assert out["align_to_sds_grad_ratio"] == pytest.approx(0.5, rel=1e-4)
        assert torch.allclose(sent, 0.5 * sds_at_render.flatten(1).norm(dim=1), rtol=1e-4)
        ratio = sent / raw
        assert torch.allclose(g_normal, raw_n * ratio.view(-1, 1, 1, 1), rtol=1e-4, atol=1e-9)
        assert torch.allclose(g_depth, raw_d * ratio.view(-1, 1, 1, 1), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("objective", X0_OBJECTIVES)
def test_x0_objectives_refuse_a_geometry_reward_when_configured(objective):
    _load_extension()
    from ddpo3d.host import find

    block = {"type": objective}
    with pytest.raises(ConfigError, match=rf"normal-consistency.*{objective}.*reward-backprop"):
        find("ddpo3d-toy-guidance")({"reward": {"type": "normal-consistency"}, "objective": block})
    # a composite names its geometry term; the core objective refuses it too
    reward = build_reward([{"type": "brightness"}, {"type": "normal-consistency", "name": "nc"}])
    assert reward.needs_render_out
    obj = RewardGuidedSDS({"objective": block})
    with pytest.raises(ConfigError, match=rf"'nc'.*{objective!r}"):
        obj(torch.rand(1, 8, 8, 3), AnalyticGaussianPrior(), torch.rand(1, 1, 3, 8, 8), None, [""], reward)


def test_launch_refuses_a_geometry_reward_with_an_x0_objective_before_writing(tmp_path, capsys):
    from launch import main

    rc = main(
        ["--config", str(CONFIG), "--train", f"exp_root_dir={tmp_path}", "system.guidance.objective={type: dreamdpo}"]
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert "normal-consistency" in err and "dreamdpo" in err and "reward-backprop" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_guidance_needs_render_out_from_the_system():
    """threestudio's call convention stays: without render_out a geometry reward is an error under
    reward-backprop (naming ddpo3d-system) and is not logged under objective none."""
    _load_extension()
    from ddpo3d.host import find

    rgb, ro = _scene_with_grad(1, 16, 16)
    batch = {k: ro[k] for k in ("rays_o", "rays_d")}
    cams = dict(elevation=torch.zeros(1), azimuth=torch.zeros(1), camera_distances=torch.full((1,), 2.5))

    class PU:
        prompt = "a red sphere"

    guidance = find("ddpo3d-toy-guidance")(
        {"reward": {"type": "normal-consistency"}, "objective": {"type": "reward-backprop"}, "seed": 0}
    )
    assert guidance.needs_render_out
    with pytest.raises(ValueError, match="ddpo3d-system"):
        guidance(rgb, PU(), **cams, **batch)
    out = guidance(rgb, PU(), **cams, **batch, render_out={k: v for k, v in ro.items() if k not in batch})
    assert math.isfinite(out["reward_mean"]) and out["align_to_sds_grad_ratio"] > 0
    logged = find("ddpo3d-toy-guidance")({"reward": {"type": "normal-consistency"}, "objective": {"type": "none"}})
    assert "reward_mean" not in logged(rgb, PU(), **cams, **batch)
    assert math.isfinite(logged(rgb, PU(), **cams, **batch, render_out=ro)["reward_mean"])


def _toy(tmp_path, overrides=()):
    """System (NeRF with analytic normals), guidance, prompt and one fixed camera batch of the toy config."""
    _load_extension()
    from ddpo3d.host import find
    from ddpo3d.lite.experiment import load_config

    cfg = load_config(
        str(CONFIG),
        cli_args=[
            "data.width=16",
            "data.height=16",
            "system.renderer.num_samples_per_ray=16",
            "system.renderer.randomized=false",  # the same samples every step: the reward is a function
            f"exp_root_dir={tmp_path}",
            *overrides,
        ],
        makedirs=False,
    )
    torch.manual_seed(0)
    system = find(cfg.system_type)(cfg.system, resumed=False)
    guidance = find(cfg.system.guidance_type)(cfg.system.guidance)
    pu = find(cfg.system.prompt_processor_type)(cfg.system.prompt_processor)()
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    return system.train(), guidance, pu, next(iter(dm.train_dataloader()))


def test_reward_backprop_gradient_raises_normal_consistency_of_the_toy_nerf(tmp_path):
    """A few Adam steps along loss_reward alone (the gradient the system sends) raise the reward of
    the toy NeRF's render; the same steps with the render outputs cut off from the graph do nothing."""
    system, guidance, pu, batch = _toy(tmp_path)
    params = [p for p in system.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.99), eps=1e-15)
    rewards = []
    for _ in range(10):
        out = system(batch)
        res = guidance(out["comp_rgb"], pu, **batch, render_out=out)
        rewards.append(res["reward_mean"])
        assert res["align_to_sds_grad_ratio"] == pytest.approx(1.0, rel=1e-3)
        opt.zero_grad()
        res["loss_reward"].backward()
        opt.step()
    out = system(batch)
    final = float(guidance.reward(out["comp_rgb"].detach(), [""] * 2, render_out={**batch, **out}).mean())
    assert final > rewards[0] + 0.05, rewards + [final]
    # detached render outputs: nothing to differentiate, no gradient is sent (and the ratio says so)
    out = system(batch)
    detached = {k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()}
    res = guidance(out["comp_rgb"].detach(), pu, **batch, render_out=detached)
    assert not res["loss_reward"].requires_grad and res["align_to_sds_grad_ratio"] == 0.0


def _metrics(path: Path) -> dict:
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["split"], r["name"]), []).append(float(r["value"]))
    return rows


def test_toy_config_trains_the_geometry_reward_through_the_system(tmp_path):
    """configs/toy/normal-consistency-backprop.yaml, reduced: ddpo3d-system hands the guidance its
    render outputs, loss_reward and the strength ratio are logged, the data loader's batch is untouched."""
    from launch import main

    reduced = [
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "data.n_val_views=1",
        "data.n_test_views=2",
        "data.width=12",
        "data.height=12",
        "data.eval_width=12",
        "data.eval_height=12",
        "system.renderer.num_samples_per_ray=8",
        "use_timestamp=false",
        f"exp_root_dir={tmp_path}",
        "tag=reduced",
    ]
    assert main(["--config", str(CONFIG), "--train", *reduced]) == 0
    metrics = _metrics(next(tmp_path.glob("*/reduced/save/metrics.csv")))
    for key in ["loss_reward", "loss_sds", "reward_mean", "align_to_sds_grad_ratio"]:
        assert ("train", key) in metrics and all(math.isfinite(v) for v in metrics[("train", key)]), key
    assert all(v == pytest.approx(1.0, rel=1e-3) for v in metrics[("train", "align_to_sds_grad_ratio")])
    assert all(-1.0 <= v <= 1.0 for v in metrics[("train", "reward_mean")] + metrics[("test", "reward")])


@pytest.mark.slow
def test_training_raises_normal_consistency_over_sds_alone(tmp_path):
    """The toy config against itself with lambda_reward: 0 (SDS alone: the same t, ε and cameras),
    100 steps at 16²: SDS alone roughens the hash grid's normals, the geometry reward keeps them
    consistent with the depth (measured: test normal-consistency 0.30 vs 0.60)."""
    from launch import main

    reduced = [
        "trainer.max_steps=100",
        "trainer.val_check_interval=100",
        "trainer.enable_progress_bar=false",
        "data.n_val_views=1",
        "data.n_test_views=4",
        "data.width=16",
        "data.height=16",
        "data.eval_width=16",
        "data.eval_height=16",
        "system.renderer.num_samples_per_ray=16",
        "use_timestamp=false",
        f"exp_root_dir={tmp_path}",
    ]
    test_reward = {}
    for tag, extra in (("sds", ["system.loss.lambda_reward=0"]), ("aligned", [])):
        assert main(["--config", str(CONFIG), "--train", *reduced, f"tag={tag}", *extra]) == 0
        metrics = _metrics(next(tmp_path.glob(f"*/{tag}/save/metrics.csv")))
        test_reward[tag] = sum(metrics[("test", "reward")]) / len(metrics[("test", "reward")])
    assert test_reward["aligned"] > test_reward["sds"] + 0.1, test_reward
