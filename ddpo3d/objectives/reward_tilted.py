"""``reward-tilted``: SDS toward the reward-tilted distribution p(x)·exp(β R(x)).

Nabla-GFlowNet (Liu et al. 2024, arXiv 2412.07775) and Nabla-R2D3 (Liu et al. 2025, arXiv
2506.15684) fine-tune a denoiser toward the score of the tilted distribution
``p̃(x_0) ∝ p(x_0) exp(β R(x_0))`` (R = log r), written at noise level t as

    ∇ log p̃_t(x_t) ≈ ∇ log p_t(x_t) + β ∇_{x_t} R(x̂_0(x_t)),

with x̂_0 the one-step prediction (x_t - sqrt(1-ᾱ_t) ε̂)/sqrt(ᾱ_t). Here the same target is
distilled into the 3D asset instead of a denoiser. In ε-form (ε̂ = -sqrt(1-ᾱ_t) ∇ log p_t) the
tilted prediction is

    ε̃ = ε̂ - sqrt(1-ᾱ_t) · β · c(t) · g,      g = ∇_{x̂_0} R(decode(x̂_0))   (clipped),

where c(t) stands for ∂x̂_0/∂x_t with the UNet Jacobian dropped and replaced by an ᾱ-adaptive
scale (``scaling``): ``sqrt`` c = sqrt(ᾱ_t), ``squared`` c = ᾱ_t, ``none`` c = 1. With
``unet_jacobian: true`` g is instead ∇_{x_t} R(x̂_0(x_t)) through ε̂ (one extra model forward
and backward), the tilted score itself, and ``scaling: none`` is the exact choice.

SDS with ε̃ in place of ε̂ (DreamFusion eq. 3) is ``w(t)(ε̃ - ε) = w(t)(ε̂ - ε) + Δ`` with

    Δ = -w(t) · sqrt(1-ᾱ_t) · β · c(t) · g,

so this term returns ``loss_tilt`` with gradient Δ/B at x_0 (the target trick), and
``lambda_sds · loss_sds + lambda_tilt · loss_tilt`` with equal lambdas is SDS toward p̃.

Closed form (the test). Data prior N(m, s² I), R(x) = uᵀx. The tilted distribution is
N(m + β s² u, s² I). Exact Tweedie gives x̂_0 = m + (a s²/v)(x_t - a m), a = sqrt(ᾱ),
v = a² s² + 1 - ᾱ, so ∂x̂_0/∂x_t = a s²/v and E_ε[w(ε̃ - ε)] = w a sqrt(1-ᾱ)/v · (x_0 - m - β s² u)
for ``unet_jacobian: true, scaling: none`` at every t: SDS + tilt has its fixed point exactly at
the tilted mean. Jacobian-free, c = sqrt(ᾱ) equals a s²/v when s = 1 (unit-variance data, e.g.
Stable Diffusion's scaled latents), so ``sqrt`` is exact there and biased for other s.

Options: β (schedulable), the scaling, a per-view L2 clip of g (``grad_norm_clip``), a t range
(views outside it get no tilt) and a start step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ddpo3d.diffusion.base import cfg_combine
from ddpo3d.objectives.interface import SDSTerm, StepContext, TermOutput, x0_from_eps
from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.schedule import C
from ddpo3d.utils.typing import Any, Optional, Tensor

SCALINGS = ("sqrt", "squared", "none")


@dataclass
class RewardTiltedConfig:
    """Options of the reward-tilted term (``loss_tilt``)."""

    beta: Any = 1.0  # β of the tilt p·exp(βR) (schedulable); 0 switches the term off (no reward calls)
    scaling: str = "sqrt"  # c(t) on ∇_{x̂0}R: "sqrt" sqrt(ᾱ_t) | "squared" ᾱ_t | "none" 1
    unet_jacobian: bool = False  # g = ∇_{x_t} R(x̂0(x_t)) through ε̂ (one extra forward + backward)
    grad_norm_clip: Optional[float] = None  # per-view L2 clip of the reward gradient g; None = off
    min_step_percent: float = 0.0  # tilt only views with t >= T · this
    max_step_percent: float = 1.0  # ... and t <= T · this
    start_step: int = 0  # global step from which the term runs


class RewardTilted(SDSTerm):
    """Adds ``loss_tilt``: the SDS-gradient change from shifting ε̂ by the scaled reward gradient.

    Args:
        cfg: dict / DictConfig of :class:`RewardTiltedConfig` keys.
    """

    Config = RewardTiltedConfig
    loss_name = "tilt"
    replaces_sds = False
    strength_key = "beta"

    def __init__(self, cfg: Any = None):
        if isinstance(cfg, RewardTiltedConfig):
            cfg = dataclasses.asdict(cfg)
        self.cfg = parse_structured(RewardTiltedConfig, cfg, where="reward-tilted objective")
        if self.cfg.scaling not in SCALINGS:
            raise ValueError(f"reward-tilted scaling must be one of {SCALINGS}, got {self.cfg.scaling!r}")
        if not 0.0 <= self.cfg.min_step_percent <= self.cfg.max_step_percent <= 1.0:
            raise ValueError(
                "reward-tilted needs 0 <= min_step_percent <= max_step_percent <= 1, got "
                f"{self.cfg.min_step_percent} and {self.cfg.max_step_percent}"
            )
        if self.cfg.grad_norm_clip is not None and not self.cfg.grad_norm_clip > 0:
            raise ValueError(f"reward-tilted grad_norm_clip must be > 0 or null, got {self.cfg.grad_norm_clip}")
        self.beta = C(self.cfg.beta, 0, 0)

    def update_step(self, epoch: int, global_step: int) -> None:
        super().update_step(epoch, global_step)
        self.beta = C(self.cfg.beta, epoch, global_step)

    @property
    def active(self) -> bool:
        return self.beta != 0.0 and super().active

    def scale(self, alpha_bar: Tensor) -> Tensor:
        """c(t) for the configured scaling."""
        if self.cfg.scaling == "sqrt":
            return alpha_bar.sqrt()
        if self.cfg.scaling == "squared":
            return alpha_bar
        return torch.ones_like(alpha_bar)

    def reward_grad(self, ctx: StepContext, alpha_bar: Tensor) -> tuple:
        """``(g, rewards)``: g = ∇ R at x̂0 (or at x_t through ε̂), rewards of x̂0 [B]."""
        reward, prompts = ctx.reward, ctx.prompt_list()
        if not getattr(reward, "differentiable", False):
            name = getattr(reward, "name", type(reward).__name__)
            raise ValueError(
                f"reward-tilted needs a differentiable reward, but {name!r} has differentiable=False: "
                "use 'reward-sds', 'dreamdpo' or 'ddpo3d' (they only rank rewards)"
            )
        with torch.enable_grad():
            x_t = ctx.predictor.add_noise(ctx.x0.detach(), ctx.noise, ctx.t)
            if self.cfg.unet_jacobian:
                x_t = x_t.requires_grad_(True)
                eps_c, eps_u = ctx.predictor.predict_eps_pair(x_t, ctx.t, ctx.cond, ctx.uncond)
                x0_hat = x0_from_eps(x_t, cfg_combine(eps_c, eps_u, ctx.guidance_scale), alpha_bar)
                leaf = x_t
            else:
                x0_hat = x0_from_eps(x_t, ctx.eps_pred, alpha_bar).detach().requires_grad_(True)
                leaf = x0_hat
            scores = reward(ctx.predictor.decode(x0_hat), prompts).reshape(-1)
            if scores.shape[0] != ctx.batch_size:
                raise ValueError(f"reward returned {scores.shape[0]} scores for {ctx.batch_size} images")
            (g,) = torch.autograd.grad(scores.sum(), leaf)
        return g.detach().to(ctx.x0.dtype), scores.detach()

    def __call__(self, ctx: StepContext) -> TermOutput:
        """Δ = -w(t) sqrt(1-ᾱ_t) β c(t) g per view (zero outside the t range)."""
        ab = ctx.alpha_bar()
        g, scores = self.reward_grad(ctx, ab)
        raw_norm = g.flatten(1).norm(dim=1)
        if self.cfg.grad_norm_clip is not None:
            factor = (self.cfg.grad_norm_clip / raw_norm.clamp(min=1e-12)).clamp(max=1.0)
            g = g * factor.view(-1, *([1] * (g.dim() - 1)))
        T = ctx.predictor.num_train_timesteps
        lo, hi = int(T * self.cfg.min_step_percent), int(T * self.cfg.max_step_percent)
        in_range = ((ctx.t >= lo) & (ctx.t <= hi)).to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
        delta = -ctx.w * (1.0 - ab).sqrt() * float(self.beta) * self.scale(ab) * g * in_range
        delta = torch.nan_to_num(delta)
        return TermOutput(
            self.loss_name,
            delta,
            {
                "tilt_reward_mean": float(scores.mean()),
                "tilt_reward_grad_norm": float(raw_norm.mean()),
                "tilt_grad_norm": float(delta.flatten(1).norm(dim=1).mean()),
                "tilt_active_frac": float(in_range.mean()),
            },
        )
