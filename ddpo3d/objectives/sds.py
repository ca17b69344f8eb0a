"""Score distillation sampling (SDS) with threestudio's semantics.

DreamFusion (Poole et al. 2022, arXiv 2209.14988), eq. 3:

    ∇_θ L_SDS = E_{t, ε}[ w(t) (ε̂(x_t; y, t) - ε) ∂x/∂θ ],   x_t = sqrt(ᾱ_t) x + sqrt(1-ᾱ_t) ε,

where the UNet Jacobian ∂ε̂/∂x_t is dropped. ε̂ is guided with threestudio's CFG
``eps_c + s (eps_c - eps_u)``. Weightings w(t) (threestudio ``weighting_strategy``):
``"sds"`` 1 - ᾱ_t (DreamFusion), ``"uniform"`` 1, ``"fantasia3d"`` sqrt(ᾱ_t)(1 - ᾱ_t).
The timestep is uniform on ``[min_step, max_step]`` with ``min_step = int(T · min_step_percent)``;
both percents are schedules, and ``sqrt_anneal`` (HiFA, Zhu et al. 2023, arXiv 2305.18766)
moves a single timestep from ``max`` to ``min`` with sqrt(progress). ``grad_clip`` (a schedule)
clamps the per-element gradient (Hong et al. 2023, arXiv 2303.15413).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpo3d.diffusion.base import NoisePredictor
from ddpo3d.diffusion.schedule import gather_alphas
from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.schedule import C
from ddpo3d.utils.typing import Any, Float, Int, Optional, Tensor, Tuple, Union


@dataclass
class SDSConfig:
    """SDS options (threestudio ``stable-diffusion-guidance`` keys)."""

    guidance_scale: float = 100.0  # CFG scale s in eps_c + s (eps_c - eps_u)
    min_step_percent: Any = 0.02  # lower end of the t range, fraction of T (schedulable)
    max_step_percent: Any = 0.98  # upper end of the t range, fraction of T (schedulable)
    weighting_strategy: str = "sds"  # w(t): "sds" (1-ᾱ) | "uniform" | "fantasia3d" (sqrt(ᾱ)(1-ᾱ))
    grad_clip: Optional[Any] = None  # clamp of the per-element gradient (schedulable), None = off
    sqrt_anneal: bool = False  # HiFA: single t annealed from max to min with sqrt(step / max_steps)
    trainer_max_steps: int = 25000  # total steps, for sqrt_anneal


WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def sample_noise(x0: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """ε ~ N(0, I) shaped like ``x0``.

    Without a generator this is ``torch.randn_like(x0)``, which follows ``x0``'s memory
    layout exactly as threestudio's guidances draw it, so a seed gives threestudio's ε.
    """
    if generator is None:
        return torch.randn_like(x0)
    return torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)


@dataclass
class SDSOutput:
    """What one SDS evaluation produced.

    Attributes:
        loss_sds: scalar whose gradient w.r.t. x0 is ``grad / B``.
        grad: w(t)(ε̂ - ε), clipped, [B, C, h, w] (detached).
        t: timesteps [B].
        noise: ε [B, C, h, w].
        x_t: the noised input (detached).
        eps_pred: CFG-combined ε̂ (detached).
        w: w(t), [B, 1, 1, 1].
        grad_norm: mean over items of ||grad||.
        min_step, max_step: the current t range.
    """

    loss_sds: Tensor
    grad: Tensor
    t: Tensor
    noise: Tensor
    x_t: Tensor
    eps_pred: Tensor
    w: Tensor
    grad_norm: float
    min_step: int
    max_step: int


def sds_weight(
    weighting_strategy: str, alpha_prod_t: Float[Tensor, "B 1 1 1"]
) -> Union[float, Float[Tensor, "B 1 1 1"]]:
    """threestudio's w(t) for a weighting strategy name."""
    if weighting_strategy == "sds":
        return 1.0 - alpha_prod_t
    if weighting_strategy == "uniform":
        return torch.ones_like(alpha_prod_t)
    if weighting_strategy == "fantasia3d":
        return alpha_prod_t.sqrt() * (1.0 - alpha_prod_t)
    raise ValueError(f"Unknown weighting_strategy {weighting_strategy!r}: use one of {WEIGHTINGS}")


class SDS:
    """Score distillation with threestudio's schedules, weighting, CFG and grad clipping.

    Args:
        cfg: a dict / DictConfig of :class:`SDSConfig` keys, or an ``SDSConfig``.
        num_train_timesteps: T used for ``min_step``/``max_step`` until a predictor says otherwise.
    """

    Config = SDSConfig

    def __init__(self, cfg: Any = None, num_train_timesteps: int = 1000):
        if isinstance(cfg, SDSConfig):
            cfg = dataclasses.asdict(cfg)
        self.cfg = parse_structured(SDSConfig, cfg, where="SDS")
        if self.cfg.weighting_strategy not in WEIGHTINGS:
            raise ValueError(
                f"Unknown weighting_strategy {self.cfg.weighting_strategy!r} in SDS config: use one of {WEIGHTINGS}"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.grad_clip_val: Optional[float] = None
        self.update_step(0, 0)

    # ------------------------------------------------------------------ schedules
    def set_min_max_steps(self, min_step_percent: float, max_step_percent: float) -> None:
        if not 0.0 <= min_step_percent <= max_step_percent <= 1.0:
            raise ValueError(
                f"SDS needs 0 <= min_step_percent <= max_step_percent <= 1, got "
                f"{min_step_percent} and {max_step_percent}"
            )
        self.min_step_percent = float(min_step_percent)
        self.max_step_percent = float(max_step_percent)

    @property
    def min_step(self) -> int:
        return int(self.num_train_timesteps * self.min_step_percent)

    @property
    def max_step(self) -> int:
        return min(int(self.num_train_timesteps * self.max_step_percent), self.num_train_timesteps - 1)

    def update_step(self, epoch: int, global_step: int) -> None:
        """Evaluate the schedules at this step (threestudio ``StableDiffusionGuidance.update_step``)."""
        cfg = self.cfg
        if cfg.grad_clip is not None:
            self.grad_clip_val = C(cfg.grad_clip, epoch, global_step)
        if cfg.sqrt_anneal:
            # HiFA: percent = max - (max - min) sqrt(step / max_steps); one t for min and max.
            progress = min(float(global_step) / cfg.trainer_max_steps, 1.0) ** 0.5
            mx = cfg.max_step_percent
            max_percent = float(mx) if isinstance(mx, (int, float)) else float(list(mx)[1])
            min_percent = C(cfg.min_step_percent, epoch, global_step)
            current = (max_percent - min_percent) * (1.0 - progress) + min_percent
            self.set_min_max_steps(current, current)
        else:
            self.set_min_max_steps(
                C(cfg.min_step_percent, epoch, global_step), C(cfg.max_step_percent, epoch, global_step)
            )

    def sample_timesteps(
        self,
        batch_size: int,
        device: Any = None,
        generator: Optional[torch.Generator] = None,
        t_range: Optional[Tuple[int, int]] = None,
    ) -> Int[Tensor, " B"]:
        """t ~ U{min_step, ..., max_step} (inclusive, as threestudio); ``t_range`` replaces this
        object's ``(min_step, max_step)`` with a host guidance's own."""
        lo, hi = (self.min_step, self.max_step) if t_range is None else (int(t_range[0]), int(t_range[1]))
        gen_device = generator.device if generator is not None else device
        t = torch.randint(lo, hi + 1, (batch_size,), generator=generator, device=gen_device)
        return t.to(device) if device is not None else t

    # ------------------------------------------------------------------ the estimator
    def __call__(
        self,
        x0: Float[Tensor, "B C h w"],
        predictor: NoisePredictor,
        cond: Any,
        uncond: Any = None,
        t: Optional[Int[Tensor, " B"]] = None,
        noise: Optional[Float[Tensor, "B C h w"]] = None,
        eps_pred: Optional[Float[Tensor, "B C h w"]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> SDSOutput:
        """One SDS evaluation.

        Args:
            x0: model-space input (e.g. ``predictor.encode(rgb)``) with grad.
            predictor: the noise predictor.
            cond, uncond: conditions (see :class:`NoisePredictor`).
            t: timesteps; sampled if None.
            noise: ε; drawn if None.
            eps_pred: a guided ε̂ already computed at ``x_t = add_noise(x0, noise, t)`` (shared
                forward); used detached. If None the predictor is called under no_grad.
            generator: RNG for ``t`` and ``noise``.

        Returns:
            :class:`SDSOutput`.
        """
        self.num_train_timesteps = predictor.num_train_timesteps
        batch_size = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(batch_size, x0.device, generator)
        t = t.to(x0.device).long()
        if noise is None:
            noise = sample_noise(x0, generator)
        x_t = predictor.add_noise(x0.detach(), noise, t)
        if eps_pred is None:
            with torch.no_grad():
                eps_pred = predictor.predict_eps(x_t, t, cond, uncond, self.cfg.guidance_scale)
        eps_pred = eps_pred.detach().to(x0.dtype)

        ab = gather_alphas(predictor.alphas_cumprod, t, ndim=x0.dim()).to(x0.dtype)
        w = sds_weight(self.cfg.weighting_strategy, ab)
        grad = torch.nan_to_num(w * (eps_pred - noise))
        if self.grad_clip_val is not None:
            grad = grad.clamp(-self.grad_clip_val, self.grad_clip_val)

        # The target trick: with target = (x0 - grad).detach(),
        #   L = 0.5 / B * Σ ||x0 - target||²   =>   ∂L/∂x0 = (x0 - target) / B = grad / B,
        # so backprop of L injects exactly the SDS gradient (DreamFusion eq. 3, batch-averaged)
        # into x0 and through the encoder / renderer, without a custom autograd function.
        target = (x0 - grad).detach()
        loss_sds = 0.5 * F.mse_loss(x0, target, reduction="sum") / batch_size
        return SDSOutput(
            loss_sds=loss_sds,
            grad=grad,
            t=t,
            noise=noise,
            x_t=x_t.detach(),
            eps_pred=eps_pred,
            w=w if torch.is_tensor(w) else torch.full_like(ab, w),
            grad_norm=float(grad.flatten(1).norm(dim=1).mean()),
            min_step=self.min_step,
            max_step=self.max_step,
        )
