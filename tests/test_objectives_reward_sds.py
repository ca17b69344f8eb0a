"""reward-sds on the analytic Gaussian prior: E[grad] against order statistics (closed form).

Gaussian prior N(m, s² I), linear reward R = uᵀx0, no CFG. ε̂_n - ε_n = ab(x0 - m)/v - (a² s²/v) ε_n
and the ranking of candidates is the ranking of ûᵀε_n, so E[grad] = w[(Σc) ab(x0 - m)/v -
(a² s²/v) Σ_k c_(k) e_(k:N) û] with e_(k:N) the k-th expected order statistic of N standard normals.
"""

import math

import pytest
import torch

torch.set_num_threads(1)

from ddpo3d.diffusion import AnalyticGaussianPrior  # noqa: E402
from ddpo3d.objectives.combined import RewardGuidedSDS  # noqa: E402
from ddpo3d.objectives.interface import StepContext  # noqa: E402
from ddpo3d.objectives.reward_sds import RewardSDS  # noqa: E402

SHAPE = (3, 1, 2)


class LinearReward:
    differentiable = True
    name = "linear"

    def __init__(self, u):
        self.u = u
        self.calls = 0

    def __call__(self, images, prompts):
        self.calls += 1
        return ((images.permute(0, 3, 1, 2) * 2 - 1) * self.u).flatten(1).sum(1)


def order_stat_means(N):
    """E[Z_(k:N)], k = 1 (smallest) .. N, by quadrature of the order-statistic densities."""
    z = torch.linspace(-9, 9, 40001, dtype=torch.float64)
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    out = []
    for k in range(1, N + 1):
        coef = math.factorial(N) / (math.factorial(k - 1) * math.factorial(N - k))
        dens = coef * Phi ** (k - 1) * (1 - Phi) ** (N - k) * phi
        out.append(float(torch.trapezoid(z * dens, z)))
    return out


def context(prior, x0_1, m, reward, t, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x0 = x0_1.repeat(n, 1, 1, 1).requires_grad_(True)
    noise = torch.randn(x0.shape, generator=gen)
    tt = torch.full((n,), t)
    cond = m[:, None]
    eps = prior.predict_eps(prior.add_noise(x0.detach(), noise, tt), tt, cond, None, 0.0)
    w = torch.full((n, 1, 1, 1), float(1 - prior.alphas_cumprod[t]))
    return StepContext(x0, prior, cond, None, tt, noise, eps, 0.0, w, reward=reward, generator=gen)


def test_order_statistics_quadrature():
    e = order_stat_means(7)
    assert e[-1] == pytest.approx(1.3522, abs=1e-3)  # E[max of 7 standard normals]
    assert e[0] == pytest.approx(-e[-1], abs=1e-9) and sum(e) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize(
    "cfg,coefs",
    [
        ({"weighting": "best"}, {7: 1.0}),
        ({"weighting": "best", "n_best": 2, "num_candidates": 5}, {5: 0.5, 4: 0.5}),
        ({"weighting": "min-max"}, {7: 0.45, 6: 0.45, 2: -0.05, 1: -0.05}),
        ({"weighting": "mean", "num_candidates": 3}, {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}),
    ],
)
def test_mean_gradient_matches_order_statistic_closed_form(cfg, coefs):
    sigma, t, n = 0.4, 500, 20_000
    prior = AnalyticGaussianPrior(sigma_data=sigma, clamp_decode=False)
    g = torch.Generator().manual_seed(0)
    m, u = 0.5 * torch.randn(1, *SHAPE, generator=g), torch.randn(1, *SHAPE, generator=g)
    x0_1 = m + 0.3 * torch.randn(1, *SHAPE, generator=g)
    reward = LinearReward(u)
    term = RewardSDS(cfg)
    ctx = context(prior, x0_1, m, reward, t, n, seed=1)
    out = term(ctx)
    (gx,) = torch.autograd.grad(out.loss(ctx.x0), ctx.x0)
    assert torch.allclose(gx * n, out.grad, atol=1e-5)  # target trick
    assert reward.calls == (0 if cfg["weighting"] == "mean" else 1)  # one batched call of N·B images
    N = term.cfg.num_candidates
    e = order_stat_means(N)
    ab = float(prior.alphas_cumprod[t])
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    v = ab * sigma**2 + 1 - ab
    u_hat = u / u.norm()
    total = sum(coefs.values())
    proj = sum(c * e[k - 1] for k, c in coefs.items())
    exact = ((1 - ab) * (total * a * b / v * (x0_1 - m) - a * a * sigma**2 / v * proj * u_hat)).flatten().double()
    samples = out.grad.flatten(1).double()
    z = (samples.mean(0) - exact) / (samples.std(0) / math.sqrt(n))
    assert z.abs().max() < 3, (z, exact)
    if proj != 0:  # power: plain SDS's mean (no reward push) is rejected
        sds = ((1 - ab) * total * a * b / v * (x0_1 - m)).flatten().double()
        assert ((samples.mean(0) - sds) / (samples.std(0) / math.sqrt(n))).abs().max() > 5


def test_softmax_weights_and_config_errors():
    term = RewardSDS({"weighting": "softmax", "temperature": 0.5, "num_candidates": 3})
    scores = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    c = term.weights(scores)
    assert torch.allclose(c[:, 0], torch.softmax(torch.tensor([0.0, 2.0, 4.0]), 0))
    assert torch.allclose(c[:, 1], torch.full((3,), 1 / 3))
    mm = RewardSDS({}).weights(torch.tensor([[3.0], [1.0], [0.0], [5.0], [2.0], [-1.0], [4.0]]))
    assert mm.flatten().tolist() == pytest.approx([0.0, 0.0, -0.05, 0.45, 0.0, -0.05, 0.45])
    for bad, match in (
        ({"weighting": "top"}, "weighting"),
        ({"num_candidates": 1}, "num_candidates"),
        ({"n_max": 4, "n_min": 4}, "n_max"),
        ({"weighting": "best", "n_best": 8}, "n_best"),
        ({"weighting": "softmax", "temperature": 0.0}, "temperature"),
    ):
        with pytest.raises(ValueError, match=match):
            RewardSDS(bad)


def test_through_combined_candidate_one_is_the_sds_branch():
    """Shared forward: with start_step in the future loss_rsds equals loss_sds exactly; after it
    the reward is called once per step on N·B images."""
    prior = AnalyticGaussianPrior(sigma_data=0.3)
    g = torch.Generator().manual_seed(0)
    m, u = 0.5 * torch.randn(1, *SHAPE, generator=g), torch.randn(1, *SHAPE, generator=g)
    reward = LinearReward(u)
    img = torch.rand(2, 1, 2, 3, requires_grad=True)
    obj = RewardGuidedSDS({"guidance_scale": 0.0, "objective": {"type": "reward-sds", "start_step": 5}})
    obj.update_step(0, 0)
    out = obj(img, prior, m[:, None], None, ["a", "b"], reward, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out["loss_rsds"], out["loss_sds"]) and reward.calls == 0
    obj.update_step(0, 5)
    out = obj(img, prior, m[:, None], None, ["a", "b"], reward, generator=torch.Generator().manual_seed(3))
    assert reward.calls == 1 and out["rsds_reward_best"] >= out["rsds_reward_mean"]
    out["loss_rsds"].backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
