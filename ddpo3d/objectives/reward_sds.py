"""``reward-sds``: SDS over N noise candidates, weighted by the reward of each candidate's x̂_0.

RewardSDS (Chachy, Yariv & Benaim 2025, arXiv 2503.09601, eq. 5-7). Per view, draw N noises
ε_1..ε_N at the SDS branch's t (candidate 1 is SDS's own ε, so its model forward is shared), form
each one-step prediction x̂_0,n = (x_t,n - sqrt(1-ᾱ_t) ε̂_n)/sqrt(ᾱ_t), score it with the reward
(values only: any reward works, no reward gradient), and send

    grad = Σ_n c_n · w(t)(ε̂_n - ε_n)        (each term clipped like SDS's),

with weights c from the scores (``weighting``, the authors' strategies and defaults):

* ``min-max`` (their recommended default): +λ_max/n_max on the n_max best candidates and
  -λ_min/n_min on the n_min worst (λ_max = 0.9, λ_min = 0.1, n_max = n_min = 2): towards the
  best, away from the worst;
* ``best``: 1/n_best on the n_best best (n_best = 1);
* ``softmax``: softmax(R_n / temperature) (their "weighted", temperature 1);
* ``mean``: 1/N, plain SDS averaged over N noises (the no-reward control, no reward calls).

The result replaces SDS: it is returned as ``loss_rsds`` and configs set ``lambda_sds: 0``
(see :mod:`ddpo3d.objectives.interface`). Rewards and weights are per view (the authors score
a 4-view MVDream batch as one item). Cost: N - 1 extra model forwards and N reward calls per
view, N = 7 by default.

Closed form (the test). Gaussian prior N(m, s² I), linear reward R = uᵀx̂_0, no CFG: with
a = sqrt(ᾱ), b = sqrt(1-ᾱ), v = a² s² + b², Tweedie gives ε̂_n - ε_n = ab(x_0 - m)/v - (a² s²/v) ε_n
and R_n is increasing in uᵀε_n, so ranking candidates ranks the projections z_n = ûᵀε_n. Hence
E[grad] = w [ (Σ c) ab(x_0 - m)/v - (a² s²/v) (Σ_k c_(k) e_(k:N)) û ], with e_(k:N) the
expected k-th order statistic of N standard normals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ddpo3d.objectives.interface import SDSTerm, StepContext, TermOutput, extra_candidates, x0_from_eps
from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.typing import Any, Float, Tensor

WEIGHTINGS = ("min-max", "best", "softmax", "mean")


@dataclass
class RewardSDSConfig:
    """Options of the RewardSDS term (``loss_rsds``; set ``lambda_sds: 0``)."""

    num_candidates: int = 7  # N noise candidates per view at the same t (the authors' n_noises)
    weighting: str = "min-max"  # "min-max" | "best" | "softmax" | "mean" (no reward: SDS over N noises)
    lambda_max: float = 0.9  # min-max: total weight of the best candidates
    lambda_min: float = 0.1  # min-max: total (negative) weight of the worst candidates
    n_max: int = 2  # min-max: how many best candidates
    n_min: int = 2  # min-max: how many worst candidates
    n_best: int = 1  # best: how many best candidates (equal weights)
    temperature: float = 1.0  # softmax: weights softmax(R / temperature), in reward units
    start_step: int = 0  # before this global step the term is plain SDS on candidate 1


class RewardSDS(SDSTerm):
    """Reward-weighted SDS over N noise candidates (replaces SDS).

    Args:
        cfg: dict / DictConfig of :class:`RewardSDSConfig` keys.
    """

    Config = RewardSDSConfig
    loss_name = "rsds"
    replaces_sds = True

    def __init__(self, cfg: Any = None):
        if isinstance(cfg, RewardSDSConfig):
            cfg = dataclasses.asdict(cfg)
        self.cfg = parse_structured(RewardSDSConfig, cfg, where="reward-sds objective")
        c = self.cfg
        if c.weighting not in WEIGHTINGS:
            raise ValueError(f"reward-sds weighting must be one of {WEIGHTINGS}, got {c.weighting!r}")
        if c.num_candidates < 2:
            raise ValueError(f"reward-sds num_candidates must be >= 2, got {c.num_candidates}")
        if c.weighting == "min-max" and (c.n_max < 1 or c.n_min < 0 or c.n_max + c.n_min > c.num_candidates):
            raise ValueError(
                f"reward-sds min-max needs n_max >= 1, n_min >= 0 and n_max + n_min <= num_candidates, got "
                f"n_max={c.n_max}, n_min={c.n_min}, num_candidates={c.num_candidates}"
            )
        if c.weighting == "best" and not 1 <= c.n_best <= c.num_candidates:
            raise ValueError(f"reward-sds n_best must be in [1, num_candidates], got {c.n_best}")
        if c.weighting == "softmax" and not c.temperature > 0:
            raise ValueError(f"reward-sds temperature must be > 0, got {c.temperature}")

    @property
    def active(self) -> bool:
        return True  # before start_step the term is SDS on candidate 1 (loss_rsds replaces loss_sds)

    @property
    def needs_reward(self) -> bool:  # type: ignore[override]
        return self.cfg.weighting != "mean" and self.global_step >= self.cfg.start_step

    def weights(self, scores: Float[Tensor, "N B"]) -> Float[Tensor, "N B"]:
        """Candidate weights c per view from their scores."""
        c = self.cfg
        N = scores.shape[0]
        if c.weighting == "mean":
            return torch.full_like(scores, 1.0 / N)
        if c.weighting == "softmax":
            return torch.softmax(scores / c.temperature, dim=0)
        order = torch.argsort(scores, dim=0, descending=True)  # rank 0 = best
        ranks = torch.empty_like(order)
        ranks.scatter_(0, order, torch.arange(N, device=scores.device).view(-1, 1).expand_as(order))
        out = torch.zeros_like(scores)
        if c.weighting == "best":
            return out.masked_fill(ranks < c.n_best, 1.0 / c.n_best)
        out = out.masked_fill(ranks < c.n_max, c.lambda_max / c.n_max)
        if c.n_min > 0:
            out = out.masked_fill(ranks >= N - c.n_min, -c.lambda_min / c.n_min)
        return out

    def __call__(self, ctx: StepContext) -> TermOutput:
        B = ctx.batch_size
        sds_grad = ctx.clip(ctx.w * (ctx.eps_pred - ctx.noise))
        if self.global_step < self.cfg.start_step:
            return TermOutput(
                self.loss_name, sds_grad, {"rsds_grad_norm": float(sds_grad.flatten(1).norm(dim=1).mean())}
            )
        N = self.cfg.num_candidates
        noise_x, x_t_x, eps_x, _ = extra_candidates(ctx, N - 1)
        noise = torch.cat([ctx.noise, noise_x], 0)  # [N·B], candidate-major
        eps = torch.cat([ctx.eps_pred, eps_x], 0)
        w = ctx.w.repeat(N, *([1] * (ctx.w.dim() - 1)))
        grads = ctx.clip(w * (eps - noise)).view(N, B, *ctx.x0.shape[1:])
        diagnostics = {}
        if self.cfg.weighting == "mean":
            scores = torch.zeros(N, B, device=ctx.x0.device)
        else:
            ab = ctx.alpha_bar().repeat(N, *([1] * (ctx.x0.dim() - 1)))
            x_t = torch.cat([ctx.predictor.add_noise(ctx.x0.detach(), ctx.noise, ctx.t), x_t_x], 0)
            with torch.no_grad():
                images = ctx.predictor.decode(x0_from_eps(x_t, eps, ab))
                scores = ctx.reward(images, ctx.prompt_list(N)).reshape(-1).float()
            if scores.shape[0] != N * B:
                raise ValueError(f"reward returned {scores.shape[0]} scores for {N * B} images")
            scores = scores.view(N, B)
            diagnostics = {
                "rsds_reward_mean": float(scores.mean()),
                "rsds_reward_best": float(scores.max(0).values.mean()),
                "rsds_reward_spread": float((scores.max(0).values - scores.min(0).values).mean()),
            }
        coef = self.weights(scores).to(grads.dtype)
        grad = (coef.view(N, B, *([1] * (grads.dim() - 2))) * grads).sum(0)
        diagnostics["rsds_grad_norm"] = float(grad.flatten(1).norm(dim=1).mean())
        return TermOutput(self.loss_name, grad, diagnostics)
