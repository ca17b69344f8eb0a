"""Each estimator against the closed-form gradient of its own target on the analytic prior (CPU, vectorised Monte Carlo).

Each estimator is compared with ITS OWN closed form, per dimension, within 3 standard errors
of the Monte-Carlo mean (SE = sample std / sqrt(N)). Dimensions are few (D = 6) so the
family-wise false-alarm rate of the per-dimension 3-SE rule is ~1.6 % per comparison; seeds are
fixed, so every run is deterministic. Where two targets differ, a power check asserts that the
estimator *rejects* the other target's closed form.

Closed forms. Fix x_t (or average over ε where the gradient is affine in ε). With
a ~ π(.|x_t) = N(μ(x_t), σ_t² I) and a target T(a) that is affine in a, a linear reward gives
E_a[R(T(a))] = R(T(μ)); a quadratic one adds a trace term that does not depend on x_t. So the
exact gradient of the expected reward is autograd of R(T(μ(x_t(x_0)))) w.r.t. x_0, where

* ``unet_jacobian=False``: ε̂ is detached inside μ (SDS's approximation);
* ``unet_jacobian=True``: ε̂(x_t) is differentiated through (the analytic ε̂ is differentiable);
* the reward target's own use of the ε̂ computed at x_t (``action_affine``) is detached in both:
  the policy gradient only sees R as a number.
"""

import math

import pytest
import torch

torch.set_num_threads(1)

from ddpo3d.diffusion import AnalyticGaussianPrior  # noqa: E402
from ddpo3d.objectives import DDPO3D, SDS  # noqa: E402

SHAPE = (3, 1, 2)  # C, h, w  -> D = 6
D = 6


class LinearReward:
    """R(img) = Σ w ⊙ (img - 0.5)  (affine, analytic)."""

    differentiable = True
    name = "linear"

    def __init__(self, seed=3):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(SHAPE[1], SHAPE[2], SHAPE[0], generator=g)

    def __call__(self, images, prompts):
        return ((images - 0.5) * self.w).flatten(1).sum(1)


class QuadraticReward:
    """R(img) = -Σ c ⊙ (img - img*)²."""

    differentiable = True
    name = "quadratic"

    def __init__(self, seed=4):
        g = torch.Generator().manual_seed(seed)
        self.c = torch.rand(SHAPE[1], SHAPE[2], SHAPE[0], generator=g) + 0.5
        self.star = torch.rand(SHAPE[1], SHAPE[2], SHAPE[0], generator=g)

    def __call__(self, images, prompts):
        return -(self.c * (images - self.star) ** 2).flatten(1).sum(1)


def zscores(samples, exact):
    """Per-dimension (MC mean - exact) / SE."""
    n = samples.shape[0]
    return (samples.mean(0) - exact) / (samples.std(0) / math.sqrt(n))


def setup_mixture(seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = 0.6 * torch.randn(1, 2, *SHAPE, generator=g)  # 2-component mixture for this view
    other = 0.6 * torch.randn(1, 1, *SHAPE, generator=g)
    uncond = torch.cat([cond, other], 1)  # "all conditions"
    x0 = 0.5 * torch.randn(1, *SHAPE, generator=g)
    eps = torch.randn(1, *SHAPE, generator=g)
    return cond, uncond, x0, eps


def setup_gaussian(seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = 0.6 * torch.randn(1, 1, *SHAPE, generator=g)
    uncond = 0.6 * torch.randn(1, 1, *SHAPE, generator=g)
    x0 = 0.5 * torch.randn(1, *SHAPE, generator=g)
    eps = torch.randn(1, *SHAPE, generator=g)
    return cond, uncond, x0, eps


def decode(x):  # independent of the predictor: image = (x + 1)/2, channels last
    return ((x + 1) * 0.5).permute(0, 2, 3, 1)


def estimates(prior, cfg, x0_1, cond, uncond, reward, t, n, scale, seed, eps_1=None):
    """Per-view policy-gradient estimates of ∇_{x0} E[R], shape [n, D].

    The objective's loss is -mean over n·K items of A log π, so d loss / d x0_b = -(1/n) ×
    (the view's estimate averaged over its K samples); multiply by -n to undo.
    """
    x0 = x0_1.repeat(n, 1, 1, 1).requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    if eps_1 is None:
        noise = torch.randn(n, *SHAPE, generator=gen)
    else:
        noise = eps_1.repeat(n, 1, 1, 1)
    base = dict(
        advantage="none",
        adv_clip_max=None,
        logprob_reduction="sum",
        eta=1.0,
        step_size=20,
        num_samples=1,
        antithetic=False,
    )
    base.update(cfg)
    obj = DDPO3D(base)
    out = obj(x0, prior, cond, uncond, None, reward, torch.full((n,), t), noise, guidance_scale=scale, generator=gen)
    (g,) = torch.autograd.grad(out.loss_ddpo, x0)
    return (-n * g).flatten(1)


def prior_eps(prior, x, t, cond, uncond, scale):
    return prior.predict_eps(x, torch.full((x.shape[0],), t), cond, uncond, scale)


def closed_form(
    prior, x0_1, eps_1, t, cond, uncond, reward, scale, jacobian, target, eta=1.0, step=20, rollout_steps=10
):
    """Autograd of R(T(μ(x_t(x0)))) (see the module docstring), written from DDIM eq. 12/16."""
    ac = prior.alphas_cumprod
    tp = t - step
    ab, abp = ac[t], ac[tp]
    x0 = x0_1.clone().requires_grad_(True)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps_1
    e = prior_eps(prior, x_t, t, cond, uncond, scale)
    e_mu = e if jacobian else e.detach()
    sig = eta * torch.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
    x0_hat = (x_t - (1 - ab).sqrt() * e_mu) / ab.sqrt()
    mu = abp.sqrt() * x0_hat + (1 - abp - sig**2).sqrt() * e_mu
    if target == "affine":
        y = (mu - (1 - abp).sqrt() * e.detach()) / abp.sqrt()
    elif target == "unet":
        y = (mu - (1 - abp).sqrt() * prior_eps(prior, mu, tp, cond, uncond, scale)) / abp.sqrt()
    elif target == "rollout":  # deterministic DDIM from (μ, tp) on τ_i = round(tp (1 - i/n))
        x = mu
        taus = [int(round(tp * (1 - i / rollout_steps))) for i in range(rollout_steps + 1)]
        for i, tau in enumerate(taus):
            e_i = prior_eps(prior, x, tau, cond, uncond, scale)
            x0_i = (x - (1 - ac[tau]).sqrt() * e_i) / ac[tau].sqrt()
            if i == rollout_steps:
                y = x0_i
            else:
                nxt = taus[i + 1]
                x = ac[nxt].sqrt() * x0_i + (1 - ac[nxt]).sqrt() * e_i
    else:
        raise ValueError(target)
    (g,) = torch.autograd.grad(reward(decode(y), None).sum(), x0)
    return g.flatten()


@pytest.fixture
def prior():
    return AnalyticGaussianPrior(sigma_data=0.3, clamp_decode=False)


# ------------------------------------------------------------------ proof 1: SDS
def test_sds_mean_gradient_equals_closed_form(prior):
    """E_{t,ε}[w(t)(ε̂ - ε)] for a Gaussian prior: ε̂ is affine in x_t, so
    E_ε[ε̂_k] = sqrt(1-ᾱ) sqrt(ᾱ) (x0 - m_k) / (ᾱ σ_d² + 1 - ᾱ), averaged over t uniform."""
    cond, uncond, x0_1, _ = setup_gaussian(1)
    sds = SDS({"guidance_scale": 7.5, "min_step_percent": 0.02, "max_step_percent": 0.98})
    n = 20_000
    x0 = x0_1.repeat(n, 1, 1, 1).requires_grad_(True)
    out = sds(x0, prior, cond, uncond, generator=torch.Generator().manual_seed(5))
    samples = out.grad.flatten(1)
    # the target trick: d loss_sds / d x0 = grad / B exactly
    (g,) = torch.autograd.grad(out.loss_sds, x0)
    assert torch.allclose(g * n, out.grad, atol=1e-4)

    ts = torch.arange(sds.min_step, sds.max_step + 1)
    ab = prior.alphas_cumprod[ts].double().view(-1, 1)
    v = ab * 0.09 + 1 - ab
    coef = (1 - ab) * (1 - ab).sqrt() * ab.sqrt() / v  # w(t) = 1-ᾱ ("sds")
    d_c = (x0_1 - cond[:, 0]).flatten().double()
    d_u = (x0_1 - uncond[:, 0]).flatten().double()
    exact = (coef * ((1 + 7.5) * d_c - 7.5 * d_u)).mean(0)
    z = zscores(samples.double(), exact)
    assert z.abs().max() < 3, z
    assert (exact.abs() / (samples.std(0).double() / math.sqrt(n))).max() > 10  # non-trivial target


# ------------------------------------------------------------------ proof 2: x0_pred
@pytest.mark.parametrize("jacobian", [False, True])
@pytest.mark.parametrize("reward_cls", [LinearReward, QuadraticReward])
def test_x0_pred_affine_policy_gradient_is_unbiased_given_x_t(prior, jacobian, reward_cls):
    """Mixture prior (nonlinear ε̂), x_t fixed, K=2 actions per view."""
    cond, uncond, x0_1, eps_1 = setup_mixture(0)
    reward, t, scale, n = reward_cls(), 500, 3.0, 20_000
    cfg = {"target": "x0_pred", "x0_from": "action_affine", "unet_jacobian": jacobian, "num_samples": 2}
    samples = estimates(prior, cfg, x0_1, cond, uncond, reward, t, n, scale, seed=11, eps_1=eps_1)
    exact = closed_form(prior, x0_1, eps_1, t, cond, uncond, reward, scale, jacobian, "affine")
    z = zscores(samples, exact)
    assert z.abs().max() < 3, (z, exact)
    # power: the other estimator's target is rejected
    other = closed_form(prior, x0_1, eps_1, t, cond, uncond, reward, scale, not jacobian, "affine")
    assert zscores(samples, other).abs().max() > 3


@pytest.mark.parametrize("jacobian", [False, True])
def test_x0_pred_policy_gradient_is_unbiased_over_noise_draws(prior, jacobian):
    """Full expectation over ε and the action: Gaussian prior, linear reward, so the conditional
    gradient is affine in ε and its mean is the closed form at ε = 0."""
    cond, uncond, x0_1, _ = setup_gaussian(2)
    reward, t, scale, n = LinearReward(), 300, 3.0, 40_000
    cfg = {"target": "x0_pred", "x0_from": "action_affine", "unet_jacobian": jacobian}
    samples = estimates(prior, cfg, x0_1, cond, uncond, reward, t, n, scale, seed=12)
    exact = closed_form(prior, x0_1, torch.zeros_like(x0_1), t, cond, uncond, reward, scale, jacobian, "affine")
    z = zscores(samples, exact)
    assert z.abs().max() < 3, (z, exact)


def test_x0_pred_action_unet_policy_gradient_is_unbiased(prior):
    """ε̂ re-evaluated at the action: for a Gaussian prior x̂0(a) is affine in a (Tweedie)."""
    cond, uncond, x0_1, eps_1 = setup_gaussian(3)
    reward, t, scale, n = LinearReward(), 400, 3.0, 20_000
    cfg = {"target": "x0_pred", "x0_from": "action_unet", "unet_jacobian": False}
    samples = estimates(prior, cfg, x0_1, cond, uncond, reward, t, n, scale, seed=13, eps_1=eps_1)
    exact = closed_form(prior, x0_1, eps_1, t, cond, uncond, reward, scale, False, "unet")
    z = zscores(samples, exact)
    assert z.abs().max() < 3, (z, exact)
    affine = closed_form(prior, x0_1, eps_1, t, cond, uncond, reward, scale, False, "affine")
    assert zscores(samples, affine).abs().max() > 3  # a different target


@pytest.mark.parametrize("jacobian", [False, True])
def test_rollout_policy_gradient_is_unbiased_linear_reward(jacobian):
    """Deterministic DDIM rollout from the action; Gaussian prior => rollout affine in a.

    A wide prior (σ_d = 1) and mild CFG keep the rollout sensitive to the action, so the
    gradient is well above the Monte-Carlo noise."""
    prior = AnalyticGaussianPrior(sigma_data=1.0, clamp_decode=False)
    cond, uncond, x0_1, eps_1 = setup_gaussian(4)
    reward, t, scale, n = LinearReward(), 600, 1.0, 40_000
    cfg = {"target": "rollout", "rollout_steps": 5, "unet_jacobian": jacobian}
    samples = estimates(prior, cfg, x0_1, cond, uncond, reward, t, n, scale, seed=14, eps_1=eps_1)
    exact = closed_form(prior, x0_1, eps_1, t, cond, uncond, reward, scale, jacobian, "rollout", rollout_steps=5)
    z = zscores(samples, exact)
    assert z.abs().max() < 3, (z, exact)
    assert (exact.abs() / (samples.std(0) / math.sqrt(n))).max() > 5  # non-trivial target


# ------------------------------------------------------------------ proof 3: render
@pytest.mark.parametrize("jacobian", [False, True])
def test_render_target_has_zero_mean_gradient(prior, jacobian):
    cond, uncond, x0_1, eps_1 = setup_mixture(5)
    reward, n = LinearReward(), 20_000
    cfg = {"target": "render", "unet_jacobian": jacobian, "num_samples": 2}
    with pytest.warns(UserWarning, match="zero mean"):
        samples = estimates(prior, cfg, x0_1, cond, uncond, reward, 500, n, 3.0, seed=15, eps_1=eps_1)
    z = zscores(samples, torch.zeros(D))
    assert z.abs().max() < 3, z
    # same setting, x0_pred target: clearly non-zero (the test above has power)
    samples_x0 = estimates(
        prior,
        {"target": "x0_pred", "unet_jacobian": jacobian, "num_samples": 2},
        x0_1,
        cond,
        uncond,
        reward,
        500,
        n,
        3.0,
        seed=15,
        eps_1=eps_1,
    )
    assert zscores(samples_x0, torch.zeros(D)).abs().max() > 3


def test_mean_reduction_is_sum_over_dimension_count(prior):
    cond, uncond, x0_1, eps_1 = setup_mixture(6)
    kw = dict(x0_1=x0_1, cond=cond, uncond=uncond, reward=LinearReward(), t=500, n=64, scale=3.0, seed=3, eps_1=eps_1)
    s = estimates(prior, {"logprob_reduction": "sum"}, **kw)
    m = estimates(prior, {"logprob_reduction": "mean"}, **kw)
    assert torch.allclose(m * D, s, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ proof 4: variance reduction
@pytest.mark.parametrize(
    "variant",
    [
        {"advantage": "group", "num_samples": 4, "antithetic": False},  # leave-one-out baseline
        {"advantage": "none", "num_samples": 4, "antithetic": True},  # mirrored draws
        {"advantage": "group", "num_samples": 4, "antithetic": True},  # both (the default)
        {"advantage": "group", "num_samples": 2, "antithetic": True},  # one pair: no baseline needed
    ],
    ids=["loo", "antithetic", "loo+antithetic", "pair"],
)
@pytest.mark.parametrize("reward_cls", [LinearReward, QuadraticReward])
def test_variance_reduced_estimators_are_unbiased(prior, variant, reward_cls):
    """The leave-one-out baseline and antithetic draws keep the mean: same closed form as plain
    REINFORCE (mixture prior, x_t fixed, ε̂ frozen in μ)."""
    cond, uncond, x0_1, eps_1 = setup_mixture(7)
    reward, t, scale, n = reward_cls(), 500, 3.0, 20_000
    cfg = {"target": "x0_pred", "unet_jacobian": False, **variant}
    samples = estimates(prior, cfg, x0_1, cond, uncond, reward, t, n, scale, seed=21, eps_1=eps_1)
    exact = closed_form(prior, x0_1, eps_1, t, cond, uncond, reward, scale, False, "affine")
    z = zscores(samples, exact)
    assert z.abs().max() < 3, (z, exact)


def test_variance_reduction_lowers_the_variance(prior):
    """Same K = 4: the total variance of the estimate drops with either the baseline or the mirror
    (both remove the reward's constant part; the mirror halves the independent directions, so
    with the baseline it does not help further: benchmarks/objectives.py measures it)."""
    cond, uncond, x0_1, eps_1 = setup_mixture(7)
    kw = dict(x0_1=x0_1, cond=cond, uncond=uncond, reward=QuadraticReward(), t=500, n=4000, scale=3.0, eps_1=eps_1)
    plain = estimates(prior, {"num_samples": 4, "advantage": "none"}, seed=22, **kw).var(0).sum()
    loo = estimates(prior, {"num_samples": 4, "advantage": "group"}, seed=22, **kw).var(0).sum()
    anti = estimates(prior, {"num_samples": 4, "advantage": "none", "antithetic": True}, seed=22, **kw).var(0).sum()
    assert loo < 0.5 * plain and anti < 0.5 * plain, (plain, loo, anti)
