"""DreamFL (DreamReward's reward feedback on SDS): constants, schedule by global step, straight-through x̂0."""

import pytest
import torch

from ddpo3d.diffusion.analytic import AnalyticGaussianPrior
from ddpo3d.objectives.combined import RewardGuidedSDS, build_objective
from ddpo3d.objectives.dreamfl import DREAMFL_PRESETS, DreamFL, integer_digits, magnitude_weight, predict_x0
from ddpo3d.rewards import build_reward
from ddpo3d.utils.config import ConfigError


def _release_calculate_weight(a, b, n=0):
    """DreamReward_guidance1.py's calculate_weight, written out for comparison."""
    diff = len(str(a).split(".")[0]) - len(str(b).split(".")[0])
    return 10 ** (diff - n)


class Recorder(torch.nn.Module):
    """Differentiable brightness reward that records what it saw."""

    differentiable = True
    name = "recorder"

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images, prompts):
        self.seen.append(images.detach().clone())
        return images.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("a,b", [(1234.5, 3.2), (0.05, 3.9), (12.0, 0.3), (98765.4, 12.5), (1.0, 1000.0), (0.5, 0.25)])
def test_magnitude_weight_matches_release(a, b):
    assert magnitude_weight(a, b) == pytest.approx(_release_calculate_weight(a, b))
    assert magnitude_weight(a, b, 1) == pytest.approx(_release_calculate_weight(a, b, 1))


def test_integer_digits():
    assert [integer_digits(x) for x in (0.0, 0.99, 1.0, 9.9, 10.0, 12345.6, -42.0)] == [1, 1, 1, 1, 2, 5, 2]
    assert integer_digits(float("nan")) == 1


def test_defaults_are_guidance1_and_presets_apply():
    d = DreamFL()
    assert (d.cfg.start_step, d.cfg.factor, d.cfg.x0_t_max, d.cfg.hinge) == (6000, 0.6, 100, 4.0)
    assert (d.cfg.tail_step, d.cfg.tail_weight) == (9800, 1.0e6)
    for name, values in DREAMFL_PRESETS.items():
        p = DreamFL({"preset": name})
        assert {k: p.cfg[k] for k in values} == values
    g2 = DreamFL({"preset": "guidance2", "factor": 0.5})
    assert (g2.cfg.start_step, g2.cfg.factor, g2.cfg.x0_t_max) == (1001, 0.5, 300)
    with pytest.raises(ConfigError, match="preset"):
        DreamFL({"preset": "guidance3"})
    with pytest.raises(ConfigError, match="hing"):
        DreamFL({"hing": 3})
    objective, strength = build_objective({"type": "dreamfl"})
    assert isinstance(objective, DreamFL) and strength.mode == "lambda"  # it matches loss_sds's magnitude itself


def _setup(B=4, seed=0):
    pred = AnalyticGaussianPrior(sigma_data=0.1)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 8, 8, 3, generator=g).mul(0.8).add(0.1).requires_grad_(True)
    x0 = pred.encode(images)
    noise = torch.randn(x0.shape, generator=g)
    cond = pred.encode(torch.rand(B, 8, 8, 3, generator=g))[:, None]
    return pred, images, x0, noise, cond


def _call(obj, t_value, reward, B=4):
    pred, images, x0, noise, cond = _setup(B)
    t = torch.full((B,), t_value, dtype=torch.long)
    x_t = pred.add_noise(x0.detach(), noise, t)
    eps_c, _ = pred.predict_eps_pair(x_t, t, cond, None)
    loss_sds = 0.5 * ((x0 - (x0 - (eps_c - noise)).detach()) ** 2).sum() / B
    out = obj(images, pred, ["p"] * B, reward, x_t, t, eps_c, loss_sds)
    return out, images, pred, x_t, t, eps_c, loss_sds


def test_inactive_before_start_step_uses_global_step_not_calls():
    obj = DreamFL({"start_step": 5})
    rec = Recorder()
    for _ in range(10):  # calls alone never switch it on
        out, *_ = _call(obj, 50, rec)
        assert float(out["loss_dreamfl"]) == 0.0
    assert rec.seen == []
    obj.update_step(0, 5)
    out, *_ = _call(obj, 50, rec)
    assert float(out["loss_dreamfl"].detach()) > 0 and len(rec.seen) == 1


def test_render_branch_above_x0_t_max():
    obj = DreamFL({"start_step": 0, "x0_t_max": 100})
    rec = Recorder()
    out, images, *_ = _call(obj, 400, rec)
    torch.testing.assert_close(rec.seen[0], images.detach())
    assert out["dreamfl_x0_frac"] == 0.0


def test_straight_through_x0_branch_value_and_gradient():
    obj = DreamFL({"start_step": 0, "x0_t_max": 100, "match_magnitude": False, "factor": 1.0})
    rec = Recorder()
    out, images, pred, x_t, t, eps, _ = _call(obj, 80, rec)
    expected = pred.decode(predict_x0(x_t, eps, pred.alphas_cumprod, t)).clamp(0, 1)
    torch.testing.assert_close(rec.seen[0], expected)
    assert not torch.allclose(rec.seen[0], images.detach())
    assert out["dreamfl_x0_frac"] == 1.0
    out["loss_dreamfl"].backward()
    # d/d images of mean_b relu(4 - mean(img_b)) through the straight-through image: -1 / (B · H·W·3)
    n = images[0].numel()
    torch.testing.assert_close(images.grad, torch.full_like(images, -1.0 / (4 * n)))


def test_weight_factor_and_hinge():
    obj = DreamFL({"start_step": 0, "factor": 0.6, "hinge": 4.0})
    rec = Recorder()
    out, images, _, _, _, _, loss_sds = _call(obj, 400, rec)
    hinge = torch.relu(4.0 - images.detach().mean(dim=(1, 2, 3))).mean()
    w = 0.6 * _release_calculate_weight(float(loss_sds.detach()), float(hinge))
    torch.testing.assert_close(out["loss_dreamfl"].detach(), w * hinge)
    assert out["dreamfl_weight"] == pytest.approx(w)
    obj = DreamFL({"start_step": 0, "hinge": 0.0})  # rewards above the hinge give nothing
    out, *_ = _call(obj, 400, rec)
    assert float(out["loss_dreamfl"]) == 0.0


def test_tail_drops_sds_and_uses_tail_weight():
    obj = DreamFL({"start_step": 0, "tail_step": 10, "tail_weight": 1e6})
    obj.update_step(0, 11)
    rec = Recorder()
    out, images, *_ = _call(obj, 50, rec)  # t <= x0_t_max, but the tail scores the render
    torch.testing.assert_close(rec.seen[0], images.detach())
    hinge = torch.relu(4.0 - images.detach().mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(out["loss_dreamfl"].detach(), 1e6 * hinge)
    assert float(out["loss_sds"]) == 0.0 and out["dreamfl_tail"] == 1.0


def test_non_differentiable_reward_is_rejected():
    obj = DreamFL({"start_step": 0})
    with pytest.raises(ValueError, match="differentiable"):
        _call(obj, 50, build_reward({"type": "jpeg-compressibility"}))


def test_combined_objective_runs_dreamfl_and_moves_brightness():
    """Through RewardGuidedSDS: the dreamfl term's gradient raises brightness of the render."""
    objective = RewardGuidedSDS({"guidance_scale": 0.0, "objective": {"type": "dreamfl", "start_step": 0}})
    objective.update_step(0, 0)
    pred, images, x0, noise, cond = _setup()
    reward = build_reward({"type": "brightness"})
    out = objective(images, pred, cond, None, ["p"] * 4, reward, generator=torch.Generator().manual_seed(0))
    assert {"loss_sds", "loss_dreamfl", "dreamfl_weight", "reward_mean"} <= set(out)
    grad = torch.autograd.grad(out["loss_dreamfl"], images)[0]
    assert (grad < 0).all()  # descending the loss brightens every pixel


@pytest.mark.slow
def test_toy_dreamfl_config_trains(tmp_path):
    """configs/toy/dreamfl-brightness.yaml runs reduced through launch.py and logs the DreamFL terms."""
    import csv
    from pathlib import Path

    from launch import main

    root = Path(__file__).resolve().parents[1]
    args = [
        "--config",
        str(root / "configs" / "toy" / "dreamfl-brightness.yaml"),
        "--train",
        f"exp_root_dir={tmp_path}",
        "tag=t",
        "use_timestamp=false",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "data.width=16",
        "data.height=16",
        "data.n_val_views=1",
        "data.n_test_views=1",
        "data.eval_width=16",
        "data.eval_height=16",
        "system.renderer.num_samples_per_ray=16",
    ]
    assert main(args) == 0
    rows = {}
    with open(next(tmp_path.glob("*/t/save/metrics.csv"))) as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["split"], r["name"]), []).append(float(r["value"]))
    assert ("train", "loss_dreamfl") in rows and ("train", "dreamfl_weight") in rows
    assert all(v == v for v in rows[("train", "loss_dreamfl")])
