"""DreamFL: DreamReward's reward feedback on top of SDS, as its released code does it.

Ye et al., "DreamReward: Text-to-3D Generation with Human Preference" (ECCV 2024, arXiv
2403.14613), the DreamFL section (Reward3D Feedback Learning). Its final update (the DreamFL
gradient) reads

    ∇_θ L_DreamFL = E_{t,ε}[ w(t)(ε̂(x_t; y, t) - ε) ∂x/∂θ ]  +  λ ∇_θ ψ(Reward3D(x̂, y)),

SDS plus λ times the gradient of a reward loss ψ evaluated on an image predicted from the noisy
render. The released guidances (``DreamReward_guidance1.py`` / ``_guidance2.py``) implement it
per step as (``r`` = the reward, one per object, ``c`` = ``hinge``)::

    loss_reward = mean(relu(c - r))                                   # ψ: hinge, c = 4
    image       = render + stopgrad(decode(x̂0) - render)   if t <= x0_t_max and step <= tail_step
                  render                                      otherwise
    weight      = 10 ** (digits(loss_sds) - digits(loss_reward) - magnitude_offset)
    loss        = loss_sds + factor · weight · loss_reward       for start_step <= step <= tail_step
    loss        = tail_weight · loss_reward                       for step > tail_step (SDS dropped)

* ``x̂0 = (x_t - sqrt(1-ᾱ_t) ε̂) / sqrt(ᾱ_t)`` is the one-step estimate from the guided ε̂ of the
  SDS forward (optionally rescaled to the text-only estimate's std, MVDream's
  ``recon_std_rescale``); the "straight-through" image has the value of the decoded x̂0 and the
  gradient of the render (the reward sees a denoised image, the render gets the gradient).
* ``digits(x)`` is the number of digits of the integer part of ``|x|`` (1 below 1), so the
  reward term is brought to the order of magnitude of ``loss_sds`` before ``factor`` (λ in that equation)
  scales it. DreamReward computes it with ``len(str(x).split('.')[0])``, which agrees except
  for values Python prints in scientific notation (below 1e-4 or from 1e16 on).
* ``step`` is the trainer's global step (``update_step``), not a call counter as in the release
  (whose counter starts at the first call, plus ``resume_num``).

Output (the system multiplies ``loss_<x>`` by ``lambda_<x>``): ``loss_dreamfl`` is the reward
term (``factor·weight·loss_reward`` or, in the tail, ``tail_weight·loss_reward``); in the tail
``loss_sds`` is multiplied by 0. With ``lambda_sds = lambda_dreamfl = 1`` the sum is the
release's ``loss``.

Presets (``preset:``; explicit keys override them):

=============  ===========  ======  ========  =========  ===========
preset         start_step   factor  x0_t_max  tail_step  tail_weight
=============  ===========  ======  ========  =========  ===========
guidance1      6000         0.6     100       9800       1e6          (conservative; the defaults)
guidance2      1001         0.3     300       9800       1e6          (aggressive; release: ``step > 1000``)
=============  ===========  ======  ========  =========  ===========
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpo3d.diffusion.base import NoisePredictor
from ddpo3d.diffusion.schedule import gather_alphas
from ddpo3d.utils.config import ConfigError, parse_structured, to_primitive
from ddpo3d.utils.typing import Any, Callable, Dict, Float, Int, Optional, Sequence, Tensor

__all__ = ["DreamFL", "DreamFLConfig", "DREAMFL_PRESETS", "integer_digits", "magnitude_weight", "predict_x0"]

#: DreamReward's two released configurations (``DreamReward_guidance1.py`` / ``_guidance2.py``).
DREAMFL_PRESETS: Dict[str, Dict[str, Any]] = {
    "guidance1": {"start_step": 6000, "factor": 0.6, "x0_t_max": 100},
    "guidance2": {"start_step": 1001, "factor": 0.3, "x0_t_max": 300},
}


@dataclass
class DreamFLConfig:
    """Options of the DreamFL objective (defaults: DreamReward guidance1)."""

    preset: Optional[str] = None  # guidance1 | guidance2: DreamReward's released constants; explicit keys win
    start_step: int = 6000  # global step from which the reward term is added (inclusive)
    factor: float = 0.6  # λ of the DreamFL update: multiplies the magnitude-matched reward loss
    hinge: float = 4.0  # c in relu(c - r): rewards above c give no gradient
    x0_t_max: int = 100  # t <= this: the reward sees the decoded one-step x̂0 (straight-through); else the render
    x0_std_rescale: float = 0.0  # MVDream recon_std_rescale applied to x̂0 (0 = plain x̂0 from the guided ε̂)
    n_view: int = 4  # views per object for x0_std_rescale's per-object std
    match_magnitude: bool = True  # weight = 10^(digits(loss_sds) - digits(loss_reward) - offset); False: weight 1
    magnitude_offset: int = 0  # n in calculate_weight(a, b, n)
    tail_step: Optional[int] = 9800  # after this step: reward only, SDS dropped; null: no tail
    tail_weight: float = 1.0e6  # multiplies loss_reward in the tail


def integer_digits(x: float) -> int:
    """Digits of the integer part of ``|x|`` (1 for ``|x| < 1``; non-finite values count as 1)."""
    if not math.isfinite(x):
        return 1
    return len(str(int(abs(x))))


def magnitude_weight(loss_sds: float, loss_reward: float, offset: int = 0) -> float:
    """DreamReward's ``calculate_weight``: ``10 ** (digits(loss_sds) - digits(loss_reward) - offset)``."""
    return 10.0 ** (integer_digits(loss_sds) - integer_digits(loss_reward) - offset)


def predict_x0(
    x_t: Float[Tensor, "B C h w"],
    eps: Float[Tensor, "B C h w"],
    alphas_cumprod: Float[Tensor, " T"],
    t: Int[Tensor, " B"],
) -> Float[Tensor, "B C h w"]:
    """One-step estimate ``(x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t)`` (DDPM, Ho et al. 2020, Eq. 15)."""
    a = gather_alphas(alphas_cumprod.to(x_t.device), t.to(x_t.device), ndim=x_t.ndim).to(x_t.dtype)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def rescale_x0(x0: Tensor, x0_text: Tensor, rescale: float, n_view: int) -> Tensor:
    """MVDream's ``recon_std_rescale``: blend x̂0 with x̂0 scaled to the text-only estimate's per-object std."""
    if rescale <= 0:
        return x0
    if x0.shape[0] % n_view:
        raise ValueError(f"x0_std_rescale needs batches of whole objects (n_view={n_view}), got {x0.shape[0]}")
    g, gt = x0.view(-1, n_view, *x0.shape[1:]), x0_text.view(-1, n_view, *x0.shape[1:])
    dims = list(range(1, g.ndim))
    factor = (gt.std(dims, keepdim=True) + 1e-8) / (g.std(dims, keepdim=True) + 1e-8)
    return (rescale * g * factor + (1 - rescale) * g).view_as(x0)


class DreamFL:
    """DreamReward's reward-corrected SDS term (see the module docstring).

    Args:
        cfg: dict / DictConfig of :class:`DreamFLConfig` keys (``preset`` expands first).
    """

    Config = DreamFLConfig

    def __init__(self, cfg: Any = None):
        if isinstance(cfg, DreamFLConfig):
            cfg = dataclasses.asdict(cfg)
        block = dict(to_primitive(cfg) or {})
        preset = block.get("preset")
        if preset is not None:
            if preset not in DREAMFL_PRESETS:
                raise ConfigError(f"dreamfl objective: preset must be one of {sorted(DREAMFL_PRESETS)}, got {preset!r}")
            block = {**DREAMFL_PRESETS[preset], **block}
        self.cfg = parse_structured(DreamFLConfig, block, where="dreamfl objective")
        if self.cfg.factor < 0 or self.cfg.tail_weight < 0:
            raise ConfigError("dreamfl objective: factor and tail_weight must be >= 0")
        self.global_step = 0

    def update_step(self, epoch: int, global_step: int) -> None:
        """Remember the trainer's global step (start / tail decisions use it)."""
        self.global_step = int(global_step)

    def state_dict(self) -> Dict[str, Any]:
        """No state beyond the global step, which the trainer sets every step."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Nothing to restore."""

    @property
    def active(self) -> bool:
        """Whether the reward term runs at the current step."""
        return self.global_step >= self.cfg.start_step

    @property
    def in_tail(self) -> bool:
        return self.cfg.tail_step is not None and self.global_step > self.cfg.tail_step

    def reward_images(
        self,
        images: Float[Tensor, "B H W 3"],
        predictor: NoisePredictor,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        eps_guided: Float[Tensor, "B C h w"],
        eps_text: Optional[Float[Tensor, "B C h w"]] = None,
    ) -> tuple:
        """The images the reward scores: straight-through decoded x̂0 where ``t <= x0_t_max``, else the render.

        Returns:
            ``(images, mask)``: images with the render's gradient, and the ``[B]`` bool mask of x̂0 views.
        """
        use_x0 = t.to(images.device) <= self.cfg.x0_t_max
        if self.in_tail or not bool(use_x0.any()):
            return images, use_x0 & False
        with torch.no_grad():
            x0 = predict_x0(x_t.detach(), eps_guided.detach(), predictor.alphas_cumprod, t)
            if self.cfg.x0_std_rescale > 0:
                text = eps_guided if eps_text is None else eps_text
                x0_text = predict_x0(x_t.detach(), text.detach(), predictor.alphas_cumprod, t)
                x0 = rescale_x0(x0, x0_text, float(self.cfg.x0_std_rescale), int(self.cfg.n_view))
            decoded = predictor.decode(x0).to(images.dtype)
            if decoded.shape[1:3] != images.shape[1:3]:
                decoded = F.interpolate(
                    decoded.permute(0, 3, 1, 2), size=images.shape[1:3], mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            decoded = decoded.clamp(0, 1)
        # straight-through: the value of decode(x̂0), the gradient of the render
        st = images - (images - decoded).detach()
        mask = use_x0.view(-1, 1, 1, 1)
        return torch.where(mask, st, images), use_x0

    def __call__(
        self,
        images: Float[Tensor, "B H W 3"],
        predictor: NoisePredictor,
        prompts: Optional[Sequence[str]],
        reward: Callable[..., Tensor],
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        eps_guided: Float[Tensor, "B C h w"],
        loss_sds: Tensor,
        eps_text: Optional[Float[Tensor, "B C h w"]] = None,
    ) -> Dict[str, Any]:
        """The DreamFL terms of one step.

        Args:
            images: renders in [0, 1] with grad.
            predictor: the noise predictor of the SDS branch (for ᾱ and ``decode``).
            prompts: reward prompts, one per view.
            reward: a differentiable reward.
            x_t: the SDS branch's noisy input.
            t: its timesteps.
            eps_guided: the CFG-guided ε̂ used by SDS.
            loss_sds: the SDS loss of this step (its magnitude sets the weight).
            eps_text: the text-conditional ε̂ (for ``x0_std_rescale``).

        Returns:
            ``{"loss_dreamfl", "loss_sds" (zeroed in the tail), "reward_mean", "dreamfl_hinge",
            "dreamfl_weight", "dreamfl_x0_frac", "dreamfl_tail"}``; ``loss_dreamfl`` is 0 before ``start_step``.
        """
        if not self.active:
            return {"loss_dreamfl": torch.zeros((), device=images.device)}
        if not getattr(reward, "differentiable", False):
            name = getattr(reward, "name", type(reward).__name__)
            raise ValueError(f"dreamfl needs a differentiable reward, but {name!r} has differentiable=False")
        prompts = [""] * images.shape[0] if prompts is None else list(prompts)
        reward_in, use_x0 = self.reward_images(images, predictor, x_t, t, eps_guided, eps_text)
        scores = reward(reward_in, prompts).reshape(-1)
        hinge = F.relu(self.cfg.hinge - scores).mean()
        out: Dict[str, Any] = {
            "reward_mean": float(scores.detach().mean()),
            "dreamfl_hinge": float(hinge.detach()),
            "dreamfl_x0_frac": float(use_x0.float().mean()),
            "dreamfl_tail": float(self.in_tail),
        }
        if self.in_tail:
            out["loss_dreamfl"] = self.cfg.tail_weight * hinge
            out["loss_sds"] = loss_sds * 0.0
            out["dreamfl_weight"] = float(self.cfg.tail_weight)
            return out
        weight = 1.0
        if self.cfg.match_magnitude:
            weight = magnitude_weight(float(loss_sds.detach()), float(hinge.detach()), int(self.cfg.magnitude_offset))
        out["loss_dreamfl"] = self.cfg.factor * weight * hinge
        out["dreamfl_weight"] = self.cfg.factor * weight
        return out
