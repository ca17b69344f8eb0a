"""dreamdpo on the analytic Gaussian prior: the pairwise step's closed form and its fallback.

Gaussian prior N(m, s² I), linear reward R = uᵀx0, no CFG: the pairwise gradient is
-w (a² s²/v)(ε_w - ε_l), whose mean is -w (a² s²/v)(2/sqrt(π)) û at every x0 (the fidelity
part ab(x0 - m)/v cancels between winner and loser).
"""

import math

import pytest
import torch

torch.set_num_threads(1)

from ddpo3d.diffusion import AnalyticGaussianPrior  # noqa: E402
from ddpo3d.objectives.combined import RewardGuidedSDS  # noqa: E402
from ddpo3d.objectives.dreamdpo import DreamDPO  # noqa: E402
from ddpo3d.objectives.interface import StepContext  # noqa: E402

SHAPE = (3, 1, 2)


class LinearReward:
    differentiable = False  # ranking only
    name = "linear"

    def __init__(self, u):
        self.u = u

    def __call__(self, images, prompts):
        return ((images.permute(0, 3, 1, 2) * 2 - 1) * self.u).flatten(1).sum(1)


def setup(sigma=0.4, t=500, n=20_000, seed=0, x_offset=0.3):
    prior = AnalyticGaussianPrior(sigma_data=sigma, clamp_decode=False)
    g = torch.Generator().manual_seed(seed)
    m, u = 0.5 * torch.randn(1, *SHAPE, generator=g), torch.randn(1, *SHAPE, generator=g)
    x0_1 = m + x_offset * torch.randn(1, *SHAPE, generator=g)
    gen = torch.Generator().manual_seed(seed + 1)
    x0 = x0_1.repeat(n, 1, 1, 1).requires_grad_(True)
    noise = torch.randn(x0.shape, generator=gen)
    tt = torch.full((n,), t)
    cond = m[:, None]
    eps = prior.predict_eps(prior.add_noise(x0.detach(), noise, tt), tt, cond, None, 0.0)
    w = torch.full((n, 1, 1, 1), float(1 - prior.alphas_cumprod[t]))
    ctx = StepContext(x0, prior, cond, None, tt, noise, eps, 0.0, w, reward=LinearReward(u), generator=gen)
    return prior, ctx, m, u, x0_1


@pytest.mark.parametrize("x_offset", [0.0, 1.0])
def test_pairwise_mean_gradient_is_a_constant_push_along_the_reward(x_offset):
    sigma, t, n = 0.4, 500, 20_000
    prior, ctx, m, u, x0_1 = setup(sigma, t, n, x_offset=x_offset)
    out = DreamDPO({})(ctx)
    (gx,) = torch.autograd.grad(out.loss(ctx.x0), ctx.x0)
    assert torch.allclose(gx * n, out.grad, atol=1e-5)  # target trick
    assert out.diagnostics["dpo_pairwise_frac"] == 1.0  # threshold 0: always pairwise
    ab = float(prior.alphas_cumprod[t])
    v = ab * sigma**2 + 1 - ab
    exact = (-(1 - ab) * ab * sigma**2 / v * 2 / math.sqrt(math.pi) * u / u.norm()).flatten().double()
    samples = out.grad.flatten(1).double()
    z = (samples.mean(0) - exact) / (samples.std(0) / math.sqrt(n))
    assert z.abs().max() < 3, (z, exact)
    assert (exact.abs() / (samples.std(0) / math.sqrt(n))).max() > 10  # non-trivial


def test_fallback_is_sds_on_the_winner_below_the_threshold():
    prior, ctx, m, u, _ = setup(n=64)
    gen_state = ctx.generator.get_state()
    out = DreamDPO({"threshold": 1e9})(ctx)
    assert out.diagnostics["dpo_pairwise_frac"] == 0.0
    # redo the second draw and pick each view's winner by hand
    ctx.generator.set_state(gen_state)
    noise_2 = torch.randn(ctx.x0.shape, generator=ctx.generator)
    x_t2 = prior.add_noise(ctx.x0.detach(), noise_2, ctx.t)
    eps_2 = prior.predict_eps(x_t2, ctx.t, ctx.cond, None, 0.0)
    ab = prior.alphas_cumprod[ctx.t].view(-1, 1, 1, 1)
    x_t1 = prior.add_noise(ctx.x0.detach(), ctx.noise, ctx.t)
    r1 = ctx.reward(prior.decode((x_t1 - (1 - ab).sqrt() * ctx.eps_pred) / ab.sqrt()), None)
    r2 = ctx.reward(prior.decode((x_t2 - (1 - ab).sqrt() * eps_2) / ab.sqrt()), None)
    first = (r1 >= r2).view(-1, 1, 1, 1)
    expect = ctx.w * torch.where(first, ctx.eps_pred - ctx.noise, eps_2 - noise_2)
    assert torch.allclose(out.grad, expect, atol=1e-6)
    assert 0 < float(first.float().mean()) < 1  # both branches exercised
    # a threshold between gaps: the pairwise fraction is the share of views with a larger gap
    gap = (r1 - r2).abs()
    ctx.generator.set_state(gen_state)
    mid = DreamDPO({"threshold": float(gap.median())})(ctx)
    assert mid.diagnostics["dpo_pairwise_frac"] == pytest.approx(float((gap >= gap.median()).float().mean()))


def test_loser_eps_cond_differs_under_cfg_and_config_errors():
    prior = AnalyticGaussianPrior(sigma_data=0.3)
    g = torch.Generator().manual_seed(0)
    m, other = 0.5 * torch.randn(1, *SHAPE, generator=g), 0.5 * torch.randn(1, *SHAPE, generator=g)
    cond, uncond = m[:, None], torch.stack([m, other], 1)
    reward = LinearReward(torch.randn(1, *SHAPE, generator=g))
    img = torch.rand(4, 1, 2, 3, requires_grad=True)
    losses = {}
    for loser in ("cond", "guided"):
        obj = RewardGuidedSDS({"guidance_scale": 5.0, "objective": {"type": "dreamdpo", "loser_eps": loser}})
        out = obj(img, prior, cond, uncond, None, reward, generator=torch.Generator().manual_seed(1))
        losses[loser] = float(out["loss_dpo"].detach())
        assert isinstance(out["dpo_reward_win"], float) and isinstance(out["dpo_pairwise_frac"], float)
    assert losses["cond"] != pytest.approx(losses["guided"])
    with pytest.raises(ValueError, match="loser_eps"):
        DreamDPO({"loser_eps": "uncond"})
    with pytest.raises(ValueError, match="threshold"):
        DreamDPO({"threshold": -1.0})
    # before start_step: SDS on the shared noise (equals loss_sds)
    obj = RewardGuidedSDS({"guidance_scale": 5.0, "objective": {"type": "dreamdpo", "start_step": 3}})
    obj.update_step(0, 0)
    out = obj(img, prior, cond, uncond, None, reward, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out["loss_dpo"], out["loss_sds"])
