"""reward-tilted on the analytic Gaussian prior: the tilted mean m + β s² u in closed form.

Prior N(m, s² I) in x0 = 2·image - 1 units, log-linear reward R = uᵀx0 (so r = exp(R)).
The tilted distribution p·r^β is N(m + β s² u, s² I); the module docstring derives
E_ε[SDS + tilt] = w a b / v · (x0 - m - β s² u) for the exact (Jacobian, scaling none) target
and for the Jacobian-free ``sqrt`` target when s = 1.
"""

import math

import pytest
import torch

torch.set_num_threads(1)

from ddpo3d.diffusion import AnalyticGaussianPrior  # noqa: E402
from ddpo3d.objectives.combined import RewardGuidedSDS  # noqa: E402
from ddpo3d.objectives.interface import StepContext  # noqa: E402
from ddpo3d.objectives.reward_tilted import RewardTilted  # noqa: E402

SHAPE = (3, 1, 2)


class LogLinearReward:
    """R(img) = Σ u ⊙ x0 with x0 = 2·img - 1 channels first (log r, r = exp(uᵀx0))."""

    differentiable = True
    name = "log-linear"

    def __init__(self, u):
        self.u = u

    def __call__(self, images, prompts):
        x0 = images.permute(0, 3, 1, 2) * 2 - 1
        return (x0 * self.u).flatten(1).sum(1)


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = 0.5 * torch.randn(1, *SHAPE, generator=g)
    u = torch.randn(1, *SHAPE, generator=g)
    x0 = m + 0.4 * torch.randn(1, *SHAPE, generator=g)
    return m, u, x0


def context(prior, x0_1, m, reward, t, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x0 = x0_1.repeat(n, 1, 1, 1).requires_grad_(True)
    noise = torch.randn(x0.shape, generator=gen)
    tt = torch.full((n,), t)
    x_t = prior.add_noise(x0.detach(), noise, tt)
    cond = m[:, None]
    eps = prior.predict_eps(x_t, tt, cond, None, 0.0)
    ab = prior.alphas_cumprod[t]
    w = torch.full((n, 1, 1, 1), float(1 - ab))
    return StepContext(x0, prior, cond, None, tt, noise, eps, 0.0, w, reward=reward, generator=gen)


@pytest.mark.parametrize(
    "sigma,cfg",
    [
        (0.3, {"unet_jacobian": True, "scaling": "none"}),  # exact tilted score, any prior width
        (1.0, {"unet_jacobian": False, "scaling": "sqrt"}),  # Jacobian-free, exact for unit-variance data
    ],
)
@pytest.mark.parametrize("t", [150, 600, 950])
def test_sds_plus_tilt_mean_gradient_is_the_tilted_closed_form(sigma, cfg, t):
    prior = AnalyticGaussianPrior(sigma_data=sigma, clamp_decode=False)
    m, u, x0_1 = setup(1)
    beta, n = 0.7, 20_000
    term = RewardTilted({"beta": beta, **cfg})
    ctx = context(prior, x0_1, m, LogLinearReward(u), t, n, seed=t)
    out = term(ctx)
    # the target trick: d loss_tilt / d x0 = grad / B
    (g,) = torch.autograd.grad(out.loss(ctx.x0), ctx.x0)
    assert torch.allclose(g * n, out.grad, atol=1e-5)
    samples = (ctx.w * (ctx.eps_pred - ctx.noise) + out.grad).flatten(1).double()
    ab = float(prior.alphas_cumprod[t])
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    v = ab * sigma**2 + 1 - ab
    tilted = m + beta * sigma**2 * u
    exact = ((1 - ab) * a * b / v * (x0_1 - tilted)).flatten().double()
    z = (samples.mean(0) - exact) / (samples.std(0) / math.sqrt(n))
    assert z.abs().max() < 3, (z, exact)
    plain = ((1 - ab) * a * b / v * (x0_1 - m)).flatten().double()  # SDS alone: the untilted mean
    assert ((samples.mean(0) - plain) / (samples.std(0) / math.sqrt(n))).abs().max() > 5


def _adam_free_image(prior, m, u, objective, steps=500, n=256, seed=0):
    """Adam on one free image, n views per step through RewardGuidedSDS; mean of the last 150 iterates."""
    img = ((m + 1) / 2).permute(0, 2, 3, 1).clone().requires_grad_(True)
    obj = RewardGuidedSDS({"guidance_scale": 0.0, "objective": objective})
    opt = torch.optim.Adam([img], lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.002)
    gen = torch.Generator().manual_seed(seed)
    reward = LogLinearReward(u)
    tail = []
    for step in range(steps):
        obj.update_step(0, step)
        out = obj(img.expand(n, -1, -1, -1), prior, m[:, None], None, None, reward, generator=gen)
        loss = out["loss_sds"] + out.get("loss_tilt", 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - 150:
            tail.append(prior.encode(img.detach()))
    return torch.stack(tail).mean(0)


@pytest.mark.slow
def test_free_image_converges_to_the_tilted_mean():
    sigma, beta = 0.3, 2.0
    prior = AnalyticGaussianPrior(sigma_data=sigma, clamp_decode=False)
    m, u, _ = setup(2)
    tilted = m + beta * sigma**2 * u
    shift = float((tilted - m).norm())
    exact = {"type": "reward-tilted", "beta": beta, "unet_jacobian": True, "scaling": "none"}
    x_tilt = _adam_free_image(prior, m, u, exact)
    x_sds = _adam_free_image(prior, m, u, {"type": "none"})
    assert float((x_tilt - tilted).norm()) < 0.1 * shift, (x_tilt, tilted)
    assert float((x_sds - m).norm()) < 0.1 * shift  # SDS alone: the prior's mean
    # the Jacobian-free approximation with sqrt(ᾱ) is exact only for s = 1: here it overshoots
    approx = {"type": "reward-tilted", "beta": beta, "scaling": "sqrt"}
    x_approx = _adam_free_image(prior, m, u, approx)
    assert float((x_approx - tilted).norm()) > 0.3 * shift


def test_options_clip_range_scaling_and_errors():
    prior = AnalyticGaussianPrior(sigma_data=0.5, clamp_decode=False)
    m, u, x0_1 = setup(3)
    reward = LogLinearReward(10.0 * u)
    ctx = context(prior, x0_1, m, reward, 400, 4, seed=0)
    ctx.t = torch.tensor([100, 400, 700, 900])
    ctx.w = (1 - prior.alphas_cumprod[ctx.t]).view(-1, 1, 1, 1)
    ab = prior.alphas_cumprod[ctx.t].view(-1, 1, 1, 1)
    base = RewardTilted({"beta": 1.0, "scaling": "none"})(ctx).grad
    # the Jacobian-free g is the reward gradient itself (u scaled): Δ = -w b β g
    assert torch.allclose(base, -ctx.w * (1 - ab).sqrt() * 10.0 * u, atol=1e-5)
    for name, c in (("sqrt", ab.sqrt()), ("squared", ab)):
        assert torch.allclose(RewardTilted({"scaling": name})(ctx).grad, base * c, atol=1e-6)
    clipped = RewardTilted({"scaling": "none", "grad_norm_clip": 0.5})(ctx).grad
    expect = ctx.w * (1 - ab).sqrt() * 0.5
    assert torch.allclose(clipped.flatten(1).norm(dim=1), expect.flatten(), rtol=1e-4)
    ranged = RewardTilted({"scaling": "none", "min_step_percent": 0.3, "max_step_percent": 0.8})(ctx)
    assert ranged.grad[[0, 3]].abs().max() == 0 and torch.equal(ranged.grad[1:3], base[1:3])
    assert ranged.diagnostics["tilt_active_frac"] == 0.5
    with pytest.raises(ValueError, match="scaling"):
        RewardTilted({"scaling": "cube"})
    with pytest.raises(ValueError, match="max_step_percent"):
        RewardTilted({"min_step_percent": 0.9, "max_step_percent": 0.1})
    with pytest.raises(ValueError, match="grad_norm_clip"):
        RewardTilted({"grad_norm_clip": 0.0})

    class Jpeg:
        differentiable = False
        name = "jpeg"

        def __call__(self, images, prompts):
            return images.mean((1, 2, 3))

    ctx.reward = Jpeg()
    with pytest.raises(ValueError, match="differentiable"):
        RewardTilted({})(ctx)


def test_beta_zero_and_start_step_are_plain_sds():
    prior = AnalyticGaussianPrior(sigma_data=0.3)
    m, u, _ = setup(4)
    img = torch.rand(2, 1, 2, 3, requires_grad=True)
    for objective in ({"type": "reward-tilted", "beta": 0.0}, {"type": "reward-tilted", "start_step": 10}):
        obj = RewardGuidedSDS({"guidance_scale": 0.0, "objective": objective})
        obj.update_step(0, 0)
        out = obj(img, prior, m[:, None], None, None, None, generator=torch.Generator().manual_seed(0))
        assert float(out["loss_tilt"]) == 0.0 and "tilt_reward_mean" not in out
    obj = RewardGuidedSDS({"guidance_scale": 0.0, "objective": {"type": "reward-tilted", "beta": [0, 0.0, 1.0, 10]}})
    obj.update_step(0, 5)
    out = obj(img, prior, m[:, None], None, None, LogLinearReward(u), generator=torch.Generator().manual_seed(0))
    assert float(out["loss_tilt"].detach()) > 0 and out["tilt_grad_norm"] > 0


def test_run_term_rescales_additive_terms_only():
    from ddpo3d.objectives.dreamdpo import DreamDPO
    from ddpo3d.objectives.interface import run_term

    prior = AnalyticGaussianPrior(sigma_data=0.5, clamp_decode=False)
    m, u, x0_1 = setup(5)
    calls = []

    def halve(grad, sds_grad):
        calls.append(sds_grad)
        return grad * 0.5, {"scaled": 1.0}

    ctx = context(prior, x0_1, m, LogLinearReward(u), 400, 3, seed=0)
    sds_grad = ctx.w * (ctx.eps_pred - ctx.noise)
    tilt = RewardTilted({"scaling": "none"})
    plain = run_term(tilt, ctx)
    scaled = run_term(tilt, ctx, rescale=halve, sds_grad=sds_grad)
    assert torch.allclose(scaled["loss_tilt"], 0.25 * plain["loss_tilt"]) and scaled["scaled"] == 1.0
    assert len(calls) == 1 and calls[0] is sds_grad
    dpo_ctx = context(prior, x0_1, m, LogLinearReward(u), 400, 3, seed=0)
    out = run_term(DreamDPO({}), dpo_ctx, rescale=halve, sds_grad=sds_grad)
    assert "scaled" not in out and len(calls) == 1  # replacing terms are never rescaled
    with pytest.raises(ValueError, match="needs a reward"):
        run_term(tilt, context(prior, x0_1, m, None, 400, 3, seed=0))


def test_strength_keys_name_real_options():
    from ddpo3d.objectives.terms import SDS_TERMS

    for kind, cls in SDS_TERMS.items():
        if cls.replaces_sds:
            assert cls.strength_key is None, kind
        else:
            assert cls.strength_key in cls.Config.__dataclass_fields__, kind
