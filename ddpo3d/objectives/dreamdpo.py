"""``dreamdpo``: a pairwise preference step between two noises at the same t.

DreamDPO (Zhou et al. 2025, arXiv 2502.04370, eq. 6-8). Per view, two noises ε_1 (SDS's own, so
its model forward is shared) and ε_2 at the SDS branch's t; their one-step predictions
x̂_0,i = (x_t,i - sqrt(1-ᾱ_t) ε̂_i)/sqrt(ᾱ_t) are ranked by the reward (values only: any reward,
or any ranking, works). With winner w and loser l,

    grad = w(t) [ (ε̂_w - ε_w) - (ε̂'_l - ε_l) ]     if |R_1 - R_2| >= threshold,
    grad = w(t) (ε̂_w - ε_w)                           otherwise (plain SDS on the winner),

pulling the render towards the winner's denoising direction and pushing it away from the
loser's. ε̂'_l is the loser's conditional prediction without CFG (``loser_eps: cond``, as the
authors' guidance does) or the guided one (``guided``). The authors' shipped config uses
``beta_dpo: 0``, our ``threshold: 0`` (the pairwise step always applies). Their fallback branch
sends w(t) ε̂_w without subtracting ε_w; we send true SDS on the winner.

The term replaces SDS: it is returned as ``loss_dpo`` and configs set ``lambda_sds: 0`` (see
:mod:`ddpo3d.objectives.interface`). Cost: one extra model forward and two reward calls per view.

Closed form (the test). Gaussian prior N(m, s² I), linear reward R = uᵀx̂_0, no CFG: with
a = sqrt(ᾱ), b = sqrt(1-ᾱ), v = a² s² + b², ε̂_i - ε_i = ab(x_0 - m)/v - (a² s²/v) ε_i, so the
pairwise gradient is -w (a² s²/v)(ε_w - ε_l): the x_0 - m (fidelity) part cancels. The winner
has the larger ûᵀε, and E[ε_w - ε_l] = E|ûᵀ(ε_1 - ε_2)| û = (2/sqrt(π)) û, so
E[grad] = -w (a² s²/v)(2/sqrt(π)) û whatever x_0: a constant push along the reward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ddpo3d.objectives.interface import SDSTerm, StepContext, TermOutput, extra_candidates, x0_from_eps
from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.typing import Any

LOSER_EPS = ("cond", "guided")


@dataclass
class DreamDPOConfig:
    """Options of the DreamDPO term (``loss_dpo``; set ``lambda_sds: 0``)."""

    threshold: float = 0.0  # score gap |R1 - R2| below which the view falls back to SDS on the winner
    loser_eps: str = "cond"  # the loser's ε̂: "cond" (no CFG, the authors') | "guided"
    start_step: int = 0  # before this global step the term is plain SDS on noise 1


class DreamDPO(SDSTerm):
    """Pairwise winner/loser SDS step (replaces SDS).

    Args:
        cfg: dict / DictConfig of :class:`DreamDPOConfig` keys.
    """

    Config = DreamDPOConfig
    loss_name = "dpo"
    replaces_sds = True

    def __init__(self, cfg: Any = None):
        if isinstance(cfg, DreamDPOConfig):
            cfg = dataclasses.asdict(cfg)
        self.cfg = parse_structured(DreamDPOConfig, cfg, where="dreamdpo objective")
        if self.cfg.loser_eps not in LOSER_EPS:
            raise ValueError(f"dreamdpo loser_eps must be one of {LOSER_EPS}, got {self.cfg.loser_eps!r}")
        if not self.cfg.threshold >= 0:
            raise ValueError(f"dreamdpo threshold must be >= 0, got {self.cfg.threshold}")

    @property
    def active(self) -> bool:
        return True  # before start_step the term is SDS on noise 1 (loss_dpo replaces loss_sds)

    @property
    def needs_reward(self) -> bool:  # type: ignore[override]
        return self.global_step >= self.cfg.start_step

    def __call__(self, ctx: StepContext) -> TermOutput:
        B = ctx.batch_size
        sds_1 = ctx.w * (ctx.eps_pred - ctx.noise)
        if self.global_step < self.cfg.start_step:
            grad = ctx.clip(sds_1)
            return TermOutput(self.loss_name, grad, {"dpo_grad_norm": float(grad.flatten(1).norm(dim=1).mean())})
        noise_2, x_t_2, eps_2, eps_c2 = extra_candidates(ctx, 1)
        eps_c1 = ctx.eps_pred if ctx.eps_cond is None else ctx.eps_cond
        ab = ctx.alpha_bar()
        x_t_1 = ctx.predictor.add_noise(ctx.x0.detach(), ctx.noise, ctx.t)
        with torch.no_grad():
            x0_hat = torch.cat([x0_from_eps(x_t_1, ctx.eps_pred, ab), x0_from_eps(x_t_2, eps_2, ab)], 0)
            scores = ctx.reward(ctx.predictor.decode(x0_hat), ctx.prompt_list(2)).reshape(-1).float()
        if scores.shape[0] != 2 * B:
            raise ValueError(f"reward returned {scores.shape[0]} scores for {2 * B} images")
        r1, r2 = scores[:B], scores[B:]
        first_wins = (r1 >= r2).view(-1, *([1] * (ctx.x0.dim() - 1)))
        pick = lambda a, b: torch.where(first_wins, a, b)  # noqa: E731
        sds_2 = ctx.w * (eps_2 - noise_2)
        loser_1 = eps_c1 if self.cfg.loser_eps == "cond" else ctx.eps_pred
        loser_2 = eps_c2 if self.cfg.loser_eps == "cond" else eps_2
        win = pick(sds_1, sds_2)
        lose = ctx.w * pick(loser_2 - noise_2, loser_1 - ctx.noise)
        gap = (r1 - r2).abs()
        pairwise = (gap >= self.cfg.threshold).to(win.dtype).view(-1, *([1] * (win.dim() - 1)))
        grad = ctx.clip(win - pairwise * lose)
        return TermOutput(
            self.loss_name,
            grad,
            {
                "dpo_reward_win": float(torch.maximum(r1, r2).mean()),
                "dpo_reward_gap": float(gap.mean()),
                "dpo_pairwise_frac": float(pairwise.mean()),
                "dpo_grad_norm": float(grad.flatten(1).norm(dim=1).mean()),
            },
        )
