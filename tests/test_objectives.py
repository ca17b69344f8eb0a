"""Objectives: SDS semantics, the stat tracker, the PPO loss, reward backprop, the combined
per-step objective (shared forward, config errors, schedules), and that Adam on a free image
driven by DDPO3D raises the reward."""

import math
import warnings

import pytest
import torch

torch.set_num_threads(1)

from ddpo3d.diffusion import AnalyticGaussianPrior  # noqa: E402
from ddpo3d.objectives import (  # noqa: E402
    DDPO3D,
    SDS,
    PerPromptStatTracker,
    RewardBackprop,
    RewardGuidedSDS,
    policy_gradient_loss,
)
from ddpo3d.utils.config import ConfigError  # noqa: E402
from ddpo3d.utils.schedule import C  # noqa: E402


def red_reward(images, prompts):
    """Mean red minus mean green/blue: a non-differentiable-flagged, JPEG-like stand-in."""
    return images[..., 0].flatten(1).mean(1) - images[..., 1:].flatten(1).mean(1)


red_reward.differentiable = False
red_reward.name = "red"


class CountingPrior(AnalyticGaussianPrior):
    """Counts model evaluations and records whether each could build a graph to x_t."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def predict_eps_pair(self, x_t, t, cond, uncond=None):
        self.calls.append(torch.is_grad_enabled() and x_t.requires_grad)
        return super().predict_eps_pair(x_t, t, cond, uncond)


def _means(batch, h=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = 0.5 * torch.randn(batch, 1, 3, h, h, generator=g)
    uncond = torch.cat([cond, 0.5 * torch.randn(batch, 1, 3, h, h, generator=g)], 1)
    return cond, uncond


# ------------------------------------------------------------------ SDS semantics
def test_sds_schedules_follow_threestudio():
    sds = SDS({"min_step_percent": [0, 0.5, 0.02, 1000], "max_step_percent": 0.98, "grad_clip": [0, 2.0, 8.0, 100]})
    assert (sds.min_step, sds.max_step, sds.grad_clip_val) == (500, 980, 2.0)
    sds.update_step(0, 500)
    assert sds.min_step == int(1000 * 0.26) and sds.grad_clip_val == 8.0
    t = sds.sample_timesteps(4000, generator=torch.Generator().manual_seed(0))
    assert int(t.min()) == sds.min_step and int(t.max()) == sds.max_step  # inclusive range
    anneal = SDS({"sqrt_anneal": True, "trainer_max_steps": 100, "min_step_percent": 0.02, "max_step_percent": 0.98})
    anneal.update_step(0, 25)  # progress sqrt(0.25) = 0.5 -> halfway between max and min
    assert anneal.min_step == anneal.max_step == int(1000 * (0.98 - 0.48))
    with pytest.raises(ConfigError, match="guidance_scal"):
        SDS({"guidance_scal": 3})
    with pytest.raises(ValueError, match="weighting_strategy"):
        SDS({"weighting_strategy": "dreamfusion"})


@pytest.mark.parametrize("strategy", ["sds", "uniform", "fantasia3d"])
def test_sds_grad_weighting_clip_and_target_trick(strategy):
    prior = AnalyticGaussianPrior(sigma_data=0.2)
    cond, uncond = _means(3)
    x0 = torch.randn(3, 3, 4, 4, requires_grad=True)
    t, noise = torch.tensor([30, 400, 900]), torch.randn(3, 3, 4, 4)
    sds = SDS({"guidance_scale": 10.0, "weighting_strategy": strategy, "grad_clip": 0.05})
    out = sds(x0, prior, cond, uncond, t=t, noise=noise)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    w = {"sds": 1 - ab, "uniform": torch.ones_like(ab), "fantasia3d": ab.sqrt() * (1 - ab)}[strategy]
    x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
    eps = prior.predict_eps(x_t, t, cond, uncond, 10.0)
    expect = (w * (eps - noise)).clamp(-0.05, 0.05)
    assert torch.allclose(out.grad, expect, atol=1e-6)
    assert torch.allclose(out.eps_pred, eps) and torch.equal(out.t, t)
    (g,) = torch.autograd.grad(out.loss_sds, x0)
    assert torch.allclose(g, expect / 3, atol=1e-6)  # d loss / d x0 = grad / B


# ------------------------------------------------------------------ stat tracker, PPO loss
def test_stat_tracker_batch_stats_until_full_then_per_prompt():
    tr = PerPromptStatTracker(buffer_size=4, min_count=3)
    r1 = torch.tensor([1.0, 2.0, 10.0])
    adv = tr.update(["a", "a", "b"], r1)
    mean, std = r1.mean(), r1.std(unbiased=False)
    assert torch.allclose(adv, (r1 - mean) / (std + 1e-6))  # nobody has min_count: batch stats
    r2 = torch.tensor([3.0, 20.0])
    adv2 = tr.update(["a", "b"], r2)
    hist_a = torch.tensor([1.0, 2.0, 3.0])  # "a" now has 3 >= min_count: own stats
    assert adv2[0] == pytest.approx(float((3.0 - hist_a.mean()) / hist_a.std(unbiased=False)), rel=1e-5)
    assert adv2[1] == pytest.approx(float((20.0 - r2.mean()) / r2.std(unbiased=False)), rel=1e-5)
    tr.update(["a", "a"], torch.tensor([4.0, 5.0]))  # FIFO of 4 drops the 1.0
    assert tr.get_stats()["a"] == {"mean": pytest.approx(3.5), "std": pytest.approx(math.sqrt(1.25)), "count": 4}
    with pytest.raises(ValueError, match="min_count"):
        PerPromptStatTracker(buffer_size=2, min_count=3)


def test_policy_gradient_loss_hand_values():
    adv = torch.tensor([1.0, -2.0])
    logp = torch.tensor([-1.0, -3.0], requires_grad=True)
    loss = policy_gradient_loss(adv, logp)
    assert float(loss.detach()) == pytest.approx(-(1.0 * -1.0 + -2.0 * -3.0) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, -adv / 2)  # -A / N


def test_stat_tracker_state_dict_round_trip():
    tr = PerPromptStatTracker(buffer_size=4, min_count=2)
    tr.update(["a", "a", "b"], torch.tensor([1.0, 2.0, 3.0]))
    other = PerPromptStatTracker(buffer_size=4, min_count=2)
    other.load_state_dict(tr.state_dict())
    r = torch.tensor([5.0, 7.0])
    assert torch.equal(tr.update(["a", "b"], r), other.update(["a", "b"], r))
    with pytest.raises(KeyError, match="buffers"):
        other.load_state_dict({})


# ------------------------------------------------------------------ reward backprop
def test_reward_backprop_loss_and_errors():
    class Diff:
        differentiable = True
        name = "mean"

        def __call__(self, images, prompts):
            return images.flatten(1).mean(1)

    rb = RewardBackprop({})
    img = torch.rand(2, 4, 4, 3, requires_grad=True)
    loss, stats = rb(img, ["a", "b"], Diff())
    assert float(loss.detach()) == pytest.approx(-1.0 * float(img.detach().mean()), rel=1e-5)
    loss.backward()
    assert torch.allclose(img.grad, torch.full_like(img, -1.0 / 48 / 2))
    with pytest.raises(ValueError, match="differentiable"):
        rb(img, None, red_reward)
    with pytest.raises(ConfigError, match="weight"):
        RewardBackprop({"weight": 1})  # the strength is the system's lambda_reward


# ------------------------------------------------------------------ combined objective
def test_combined_config_errors():
    with pytest.raises(ConfigError, match="objectve"):
        RewardGuidedSDS({"objectve": {"type": "none"}})
    with pytest.raises(ConfigError, match="Unknown objective type"):
        RewardGuidedSDS({"objective": {"type": "dpo"}})
    with pytest.raises(ConfigError, match="num_sample"):
        RewardGuidedSDS({"objective": {"type": "ddpo3d", "num_sample": 4}})
    with pytest.raises(ValueError, match="eta"):
        RewardGuidedSDS({"objective": {"type": "ddpo3d", "eta": 0.0}})
    with pytest.raises(ValueError, match="target"):
        RewardGuidedSDS({"objective": {"type": "ddpo3d", "target": "x0"}})
    with pytest.raises(ConfigError, match="no options"):
        RewardGuidedSDS({"objective": {"type": "none", "target": "render"}})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        RewardGuidedSDS({"objective": {"type": "ddpo3d", "target": "render"}})
    assert any("zero mean" in str(w.message) for w in rec)


@pytest.mark.parametrize("jacobian", [False, True])
def test_combined_shares_one_model_forward(jacobian):
    prior = CountingPrior(sigma_data=0.2)
    cond, uncond = _means(2)
    obj = RewardGuidedSDS(
        {
            "guidance_scale": 20.0,
            "objective": {"type": "ddpo3d", "unet_jacobian": jacobian, "num_samples": 3, "advantage": "batch"},
        }
    )
    img = torch.rand(2, 4, 4, 3, requires_grad=True)
    out = obj(img, prior, cond, uncond, ["a", "b"], red_reward, generator=torch.Generator().manual_seed(0))
    assert prior.calls == [jacobian]  # exactly one evaluation; with a graph to x_t iff unet_jacobian
    (out["loss_sds"] + out["loss_ddpo"]).backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
    for key in ("reward_mean", "reward_std", "advantage_mean", "advantage_std", "logprob", "policy_std"):
        assert isinstance(out[key], float)
    assert out["advantage_std"] == pytest.approx(1.0, abs=1e-3)


def test_combined_matches_separate_sds_and_policy_calls():
    """The shared forward gives the same losses as SDS + DDPO3D evaluated separately."""
    prior = AnalyticGaussianPrior(sigma_data=0.2)
    cond, uncond = _means(2)
    cfg_obj = {
        "type": "ddpo3d",
        "unet_jacobian": True,
        "num_samples": 2,
        "advantage": "none",
        "guidance_scale": 2.0,
        "x0_from": "action_unet",
        "strength_mode": "lambda",
    }
    obj = RewardGuidedSDS({"guidance_scale": 20.0, "objective": cfg_obj})
    img = torch.rand(2, 4, 4, 3, requires_grad=True)
    out = obj(img, prior, cond, uncond, None, red_reward, generator=torch.Generator().manual_seed(7))
    (g_comb,) = torch.autograd.grad(out["loss_sds"] + out["loss_ddpo"], img)

    gen = torch.Generator().manual_seed(7)
    sds = SDS({"guidance_scale": 20.0})
    x0 = prior.encode(img)
    t = sds.sample_timesteps(2, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    s_out = sds(x0, prior, cond, uncond, t=t, noise=noise)
    pol = DDPO3D({k: v for k, v in cfg_obj.items() if k not in ("type", "strength_mode")})
    policy_gen = torch.Generator().manual_seed(8)  # the policy's own stream: the SDS seed + 1
    p_out = pol(x0, prior, cond, uncond, None, red_reward, t, noise, generator=policy_gen)
    (g_sep,) = torch.autograd.grad(s_out.loss_sds + p_out.loss_ddpo, img)
    assert torch.allclose(out["loss_sds"], s_out.loss_sds) and torch.allclose(out["loss_ddpo"], p_out.loss_ddpo)
    assert torch.allclose(g_comb, g_sep, atol=1e-5)


def test_num_steps_and_rollout_shapes_and_reward_count_check():
    prior = AnalyticGaussianPrior(sigma_data=0.2)
    cond, uncond = _means(2)
    x0 = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.tensor([50, 700])
    for cfg in ({"num_steps": 4, "num_samples": 1}, {"target": "rollout", "rollout_steps": 3, "num_samples": 2}):
        pol = DDPO3D({"advantage": "batch", **cfg})
        out = pol(x0, prior, cond, uncond, ["p", "q"], red_reward, t, torch.randn(2, 3, 4, 4))
        k = cfg.get("num_samples", 1)
        assert out.log_prob.shape == (2 * k,) and out.images.shape == (2 * k, 4, 4, 3)
        assert out.target_x0.shape == (2 * k, 3, 4, 4)
    with pytest.warns(UserWarning, match="zero mean"):
        render = DDPO3D({"target": "render", "num_samples": 2, "advantage": "none"})
    imgs = torch.rand(2, 4, 4, 3)
    out = render(x0, prior, cond, uncond, None, red_reward, t, torch.randn(2, 3, 4, 4), images=imgs)
    assert torch.equal(out.images, imgs.repeat_interleave(2, 0))  # the render itself, no decode
    assert torch.allclose(out.rewards, red_reward(imgs, None).repeat_interleave(2))
    bad = DDPO3D({})
    with pytest.raises(ValueError, match="scores for"):
        bad(x0, prior, cond, uncond, None, lambda im, p: torch.zeros(1), t, torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="t >= 1"):
        bad(x0, prior, cond, uncond, None, red_reward, torch.tensor([0, 5]), torch.randn(2, 3, 4, 4))


# ------------------------------------------------------------------ proof 4: Adam on a free image
H, B = 8, 4


def _adam_run(objective_block, steps, prior, cond, uncond, lam=1.0):
    """Adam on a free image; ``lam`` is the system's lambda_ddpo (a value or a schedule)."""
    img = (0.5 + 0.1 * torch.randn(B, H, H, 3, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    obj = RewardGuidedSDS({"guidance_scale": 3.0, "objective": objective_block})
    opt = torch.optim.Adam([img], lr=0.02)
    gen = torch.Generator().manual_seed(2)
    for step in range(steps):
        obj.update_step(0, step)
        out = obj(img, prior, cond, uncond, ["a red thing"] * B, red_reward, generator=gen)
        loss = out["loss_sds"] + C(lam, 0, step) * out.get("loss_ddpo", 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            img.clamp_(0, 1)
    return img.detach()


def test_adam_on_free_image_raises_reward_and_stays_near_the_mode():
    prior = AnalyticGaussianPrior(sigma_data=0.1)
    g = torch.Generator().manual_seed(0)
    m1 = torch.zeros(1, 1, 3, H, H)  # the condition's mode: mid-gray
    m2 = (0.8 * torch.randn(1, 1, 3, H, H, generator=g)).clamp(-1, 1)  # another condition
    cond, uncond = m1.expand(B, -1, -1, -1, -1), torch.cat([m1, m2], 1).expand(B, -1, -1, -1, -1)
    mode_gap = float((m2 - m1).pow(2).mean().sqrt())

    def summary(img):
        x0 = prior.encode(img)
        return float(red_reward(img, None).mean()), float((x0 - m1[:, 0]).pow(2).mean().sqrt())

    sds_img = _adam_run({"type": "none"}, 300, prior, cond, uncond)
    block = {"type": "ddpo3d", "num_samples": 4, "strength_mode": "lambda", "advantage": "per_prompt"}
    ddpo_img = _adam_run(block, 300, prior, cond, uncond, lam=30.0)
    r_sds, d_sds = summary(sds_img)
    r_ddpo, d_ddpo = summary(ddpo_img)
    assert d_sds < 0.2 * mode_gap  # plain SDS converges to the condition's mode
    assert r_ddpo > r_sds + 0.03  # the reward went up ...
    assert d_ddpo < 0.3 * mode_gap  # ... while SDS keeps the image near the mode

    # lambda 0: exactly plain SDS (the policy draws from its own RNG stream: SDS's t, ε are untouched)
    zero_img = _adam_run(block, 300, prior, cond, uncond, lam=0.0)
    assert torch.equal(zero_img, sds_img)
    # a schedule [start_step, 0, w, start_step] is plain SDS before start_step and differs after
    sched = [100, 0.0, 30.0, 100]
    none = {"type": "none"}
    assert torch.equal(_adam_run(block, 100, prior, cond, uncond, sched), _adam_run(none, 100, prior, cond, uncond))
    assert not torch.equal(_adam_run(block, 110, prior, cond, uncond, sched), _adam_run(none, 110, prior, cond, uncond))


# ------------------------------------------------------------------ strength: ratio mode
class MeanReward:
    differentiable = True
    name = "mean"

    def __call__(self, images, prompts):
        return images.flatten(1).mean(1)


@pytest.mark.parametrize("kind", ["ddpo3d", "reward-backprop"])
@pytest.mark.parametrize("grad_ratio", [0.05, 0.5])
def test_ratio_mode_sets_the_per_view_gradient_norm(kind, grad_ratio):
    """Per view, the alignment gradient sent has norm grad_ratio × SDS's at the same point
    (x0 for ddpo3d, the render for reward-backprop), whatever the reward's scale."""
    prior = AnalyticGaussianPrior(sigma_data=0.2)
    cond, uncond = _means(3)
    block = {"type": kind, "grad_ratio": grad_ratio}
    if kind == "ddpo3d":
        block.update(num_samples=4, advantage="none", logprob_reduction="mean")
    for reward_scale in (1e-3, 1e3):

        def reward(images, prompts, s=reward_scale):
            return s * MeanReward()(images, prompts)

        reward.differentiable = True
        obj = RewardGuidedSDS({"guidance_scale": 5.0, "objective": block})
        img = torch.rand(3, 4, 4, 3, requires_grad=True)
        x0 = prior.encode(img)
        out = obj(img, prior, cond, uncond, ["a"] * 3, reward, x0=x0, generator=torch.Generator().manual_seed(0))
        loss_key = "loss_ddpo" if kind == "ddpo3d" else "loss_reward"
        at = x0 if kind == "ddpo3d" else img
        (g_align,) = torch.autograd.grad(out[loss_key], at, retain_graph=True)
        (g_sds,) = torch.autograd.grad(out["loss_sds"], at)
        ratio = g_align.flatten(1).norm(dim=1) / g_sds.flatten(1).norm(dim=1)
        assert torch.allclose(ratio, torch.full((3,), grad_ratio), rtol=1e-4)
        assert out["align_to_sds_grad_ratio"] == pytest.approx(grad_ratio, rel=1e-4)
        assert out["align_raw_to_sds_grad_ratio"] > 0


def test_lambda_mode_sends_the_plain_gradient_and_logs_its_ratio():
    prior = AnalyticGaussianPrior(sigma_data=0.2)
    cond, uncond = _means(2)
    block = {"type": "ddpo3d", "num_samples": 2, "advantage": "none", "strength_mode": "lambda"}
    obj = RewardGuidedSDS({"guidance_scale": 5.0, "objective": block})
    img = torch.rand(2, 4, 4, 3, requires_grad=True)
    x0 = prior.encode(img)
    out = obj(img, prior, cond, uncond, None, red_reward, x0=x0, generator=torch.Generator().manual_seed(3))
    (g_align,) = torch.autograd.grad(out["loss_ddpo"], x0, retain_graph=True)
    (g_sds,) = torch.autograd.grad(out["loss_sds"], x0)
    ratio = float((g_align.flatten(1).norm(dim=1) / g_sds.flatten(1).norm(dim=1)).mean())
    assert out["align_to_sds_grad_ratio"] == pytest.approx(ratio, rel=1e-4)
    assert out["align_raw_to_sds_grad_ratio"] == pytest.approx(ratio, rel=1e-4)
    with pytest.raises(ConfigError, match="strength_mode"):
        RewardGuidedSDS({"objective": {"type": "ddpo3d", "strength_mode": "norm"}})
    with pytest.raises(ConfigError, match="grad_ratio"):
        RewardGuidedSDS({"objective": {"type": "ddpo3d", "grad_ratio": -1}})


def test_host_timesteps_are_used():
    prior = AnalyticGaussianPrior(sigma_data=0.2)
    cond, uncond = _means(2)
    obj = RewardGuidedSDS({"guidance_scale": 5.0, "objective": {"type": "ddpo3d", "advantage": "none"}})
    img = torch.rand(2, 4, 4, 3, requires_grad=True)
    out = obj(img, prior, cond, uncond, None, red_reward, t=torch.tensor([123, 321]))
    assert out["t_mean"] == pytest.approx(222.0)


def test_group_advantages_hand_values():
    from ddpo3d.objectives.ddpo3d import group_advantages

    r = torch.tensor([1.0, 2.0, 3.0, 6.0])  # one view, K = 4
    assert torch.allclose(group_advantages(r, 4), r - (r.sum() - r) / 3)
    # antithetic pairs (0,1), (2,3): the baseline is the other pair's mean
    assert torch.allclose(group_advantages(r, 4, antithetic=True), r - torch.tensor([4.5, 4.5, 1.5, 1.5]))
    assert torch.allclose(group_advantages(r[:2], 2, antithetic=True), r[:2])  # one pair: no baseline
    std = r.std(unbiased=False)
    assert torch.allclose(group_advantages(r, 4, normalize_std=True), (r - (r.sum() - r) / 3) / (std + 1e-6))
    with pytest.raises(ValueError, match="even"):
        DDPO3D({"num_samples": 3, "antithetic": True})
    with pytest.raises(ValueError, match="per_prompt"):
        DDPO3D({"num_samples": 1})
    pol = DDPO3D({"num_samples": 4, "antithetic": True})
    z = pol.step_noise(torch.zeros(8, 3, 2, 2), torch.Generator().manual_seed(0))
    assert torch.equal(z[1], -z[0]) and torch.equal(z[3], -z[2]) and not torch.equal(z[2], -z[1])
