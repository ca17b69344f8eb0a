"""ddim_step_with_logprob: same action distribution as diffusers' DDIMScheduler.step (through a
small adapter that reads the scheduler), a log-prob equal to an independent Gaussian computation,
and its error cases."""

import math

import pytest
import torch

torch.set_num_threads(1)

from diffusers import DDIMScheduler  # noqa: E402

from ddpo3d.diffusion import AnalyticGaussianPrior, ddim_step_with_logprob  # noqa: E402


def sd_scheduler(**kw):
    sch = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        clip_sample=False,
        **kw,
    )
    sch.set_timesteps(50)
    return sch


def step(sch, eps, t, x, eta, **kw):
    """Adapter: a diffusers DDIMScheduler's schedule, step size and final ᾱ into the product step."""
    kw.setdefault("prev_timestep", t - sch.config.num_train_timesteps // sch.num_inference_steps)
    return ddim_step_with_logprob(
        sch.alphas_cumprod, eps, t, x, eta, final_alpha_cumprod=float(sch.final_alpha_cumprod), **kw
    )


def test_same_prev_sample_as_diffusers_for_the_same_noise():
    sch = sd_scheduler()
    x, eps, z = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for t in (981, 501, 21, 1):  # t=1 steps past 0: final_alpha_cumprod = ᾱ_0
        for eta in (0.3, 1.0):
            ref = sch.step(eps, t, x, eta=eta, variance_noise=z)
            ours = step(sch, eps, t, x, eta, variance_noise=z)
            assert torch.allclose(ours.prev_sample, ref.prev_sample, atol=1e-5)
            assert torch.allclose(ours.pred_original_sample, ref.pred_original_sample, atol=1e-5)


def test_prev_sample_distribution_matches_diffusers_by_sampling():
    """Independent draws from both implementations: per-dim mean and std agree (3 SE)."""
    sch = sd_scheduler()
    n, t, eta = 40_000, 601, 0.8
    x = torch.randn(1, 3, 2, 2).expand(n, -1, -1, -1)
    eps = torch.randn(1, 3, 2, 2).expand(n, -1, -1, -1)
    ours = step(sch, eps, t, x, eta, generator=torch.Generator().manual_seed(1)).prev_sample
    theirs = sch.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(2)).prev_sample
    a, b = ours.flatten(1), theirs.flatten(1)
    ma, mb, sa, sb = a.mean(0), b.mean(0), a.std(0), b.std(0)
    z_mean = (ma - mb) / ((sa**2 + sb**2) / n).sqrt()
    z_std = (sa - sb) / ((sa**2 + sb**2) / (2 * n)).sqrt()  # SE of a normal sample std: σ/sqrt(2n)
    assert z_mean.abs().max() < 3, z_mean
    assert z_std.abs().max() < 3, z_std
    # and the std is DDIM eq. 16's σ_t(η)
    ab_t, ab_p = sch.alphas_cumprod[t], sch.alphas_cumprod[t - 20]
    sigma = eta * math.sqrt((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p))
    z_sigma = (sa - sigma) / (sigma / math.sqrt(2 * n))
    assert z_sigma.abs().max() < 3, z_sigma


def test_log_prob_equals_an_independent_gaussian_computation():
    sch = sd_scheduler()
    ac = sch.alphas_cumprod.double()
    x, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([901, 401, 41])
    tp = t - 20
    out = step(sch, eps, t, x, 0.7, prev_timestep=tp, logprob_reduction="sum")
    # independent: float64, DDIM eq. 12 written out, torch.distributions.Normal
    ab, abp = ac[t].view(-1, 1, 1, 1), ac[tp].view(-1, 1, 1, 1)
    sig = 0.7 * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()
    x0 = (x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
    mean = abp.sqrt() * x0 + (1 - abp - sig**2).sqrt() * eps.double()
    ref = torch.distributions.Normal(mean, sig.expand_as(mean)).log_prob(out.prev_sample.double()).flatten(1)
    assert torch.allclose(out.log_prob.double(), ref.sum(1), rtol=1e-5, atol=1e-3)
    assert torch.allclose(out.prev_sample_mean.double(), mean, atol=1e-5)
    assert torch.allclose(out.std_dev_t.double().flatten(), sig.flatten(), rtol=1e-5)
    # scoring a given action; "mean" reduction = sum / D (DDPO's convention)
    given = torch.randn(3, 4, 2, 2)
    s = step(sch, eps, t, x, 0.7, prev_timestep=tp, prev_sample=given, logprob_reduction="sum")
    m = step(sch, eps, t, x, 0.7, prev_timestep=tp, prev_sample=given)
    assert torch.equal(s.prev_sample, given)
    ref_given = torch.distributions.Normal(mean, sig.expand_as(mean)).log_prob(given.double()).flatten(1)
    assert torch.allclose(s.log_prob.double(), ref_given.sum(1), rtol=1e-5, atol=1e-3)
    assert torch.allclose(m.log_prob, s.log_prob / 16, rtol=1e-5)


def test_per_item_timesteps_match_scalar_calls_and_tensor_schedule():
    sch = sd_scheduler()
    x, eps, z = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([901, 401, 41])
    batched = ddim_step_with_logprob(sch.alphas_cumprod, eps, t, x, 1.0, prev_timestep=t - 20, variance_noise=z)
    for i in range(3):
        one = step(sch, eps[i : i + 1], int(t[i]), x[i : i + 1], 1.0, variance_noise=z[i : i + 1])
        assert torch.allclose(batched.prev_sample[i], one.prev_sample[0], atol=1e-5)
        assert torch.allclose(batched.log_prob[i], one.log_prob[0], atol=1e-4)
    prior = AnalyticGaussianPrior()  # a NoisePredictor is accepted too
    via_prior = ddim_step_with_logprob(prior, eps, t, x, 1.0, prev_timestep=t - 20, variance_noise=z)
    assert torch.allclose(via_prior.prev_sample, batched.prev_sample, atol=1e-5)


def test_log_prob_gradient_wrt_sample_is_the_analytic_score():
    """∂/∂x_t Σ log π(a|x_t) with ε̂ held fixed = sqrt(ᾱ_p/ᾱ_t) (a - μ) / σ²."""
    sch = sd_scheduler()
    x = torch.randn(2, 4, 2, 2, requires_grad=True)
    eps = torch.randn(2, 4, 2, 2)
    out = step(sch, eps, 501, x, 1.0, logprob_reduction="sum")
    (g,) = torch.autograd.grad(out.log_prob.sum(), x)
    ab_t, ab_p = sch.alphas_cumprod[501], sch.alphas_cumprod[481]
    expect = (ab_p / ab_t).sqrt() * (out.prev_sample - out.prev_sample_mean.detach()) / out.std_dev_t**2
    assert torch.allclose(g, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, -0.5])
def test_non_positive_eta_is_a_clear_error(eta):
    sch = sd_scheduler()
    with pytest.raises(ValueError, match="eta > 0"):
        step(sch, torch.randn(1, 4, 2, 2), 501, torch.randn(1, 4, 2, 2), eta)


def test_other_errors():
    ac = sd_scheduler().alphas_cumprod
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="sigma_t = 0"):  # stepping past 0 with ᾱ_final = 1
        ddim_step_with_logprob(ac, x, 5, x, 1.0, prev_timestep=-1)
    with pytest.raises(ValueError, match="logprob_reduction"):
        ddim_step_with_logprob(ac, x, 501, x, 1.0, prev_timestep=481, logprob_reduction="max")
    with pytest.raises(TypeError, match="alphas"):
        ddim_step_with_logprob("ddim", x, 501, x, 1.0, prev_timestep=481)
