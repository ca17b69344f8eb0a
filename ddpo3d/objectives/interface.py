"""One call interface for the SDS-family objectives (reward-tilted, reward-sds, dreamdpo).

These objectives all act where SDS acts: at the diffusion model's input x_0 (latents for Stable
Diffusion, pixels for DeepFloyd IF and the toy prior), at the SDS branch's timestep t. So the
combined objective (:class:`ddpo3d.objectives.combined.RewardGuidedSDS`) hands each of them the
state of its SDS evaluation in one :class:`StepContext` and gets one :class:`TermOutput` back:

    term = REWARD_SDS_TERMS[kind](options)        # a SDSTerm subclass, options parsed strictly
    term.update_step(epoch, global_step)          # schedules
    out = term(ctx)                               # ctx: StepContext of this step's SDS branch
    loss = out.loss(ctx.x0)                       # scalar with d loss / d x0 = out.grad / B

``out.grad`` is a detached ``[B, C, h, w]`` tensor in SDS's own convention (SDS's is
``w(t)(ε̂ - ε)``, and ``loss_sds`` has gradient ``grad / B``), so the two can be compared or
rescaled per view before the loss is built (:func:`run_term` takes an optional ``rescale``).
The result is returned as ``loss_<term.loss_name>``, which the system multiplies by
``lambda_<term.loss_name>`` (threestudio's loss contract).

Two kinds of terms:

* additive (``replaces_sds = False``, e.g. ``reward-tilted`` → ``loss_tilt``): added on top of
  ``loss_sds``; ``lambda_sds · loss_sds + lambda_tilt · loss_tilt`` is the method.
* replacing (``replaces_sds = True``, ``reward-sds`` → ``loss_rsds``, ``dreamdpo`` →
  ``loss_dpo``): the method's own loss already contains SDS's terms (re-weighted or paired), so
  configs set ``lambda_sds: 0``. ``loss_sds`` is still returned: the system requires a weight
  for every returned loss, its diagnostics (``grad_norm``, ``t_mean``) stay comparable across
  methods, and its UNet forward is not wasted: it is these terms' first noise candidate.
  A per-view rescale relative to SDS's gradient (a "strength ratio") is meaningless for them;
  :func:`run_term` skips ``rescale`` for replacing terms.

Strength (for sweeps such as a reward-vs-fidelity Pareto benchmark): an additive term names its
strength option in ``strength_key`` (``reward-tilted``: ``beta``); its loss weight ``lambda_<x>``
scales it the same way. A replacing term has no such knob (``strength_key = None``): sweep the mix
``lambda_sds = 1 - s, lambda_<x> = s`` for s in [0, 1], from plain SDS (s = 0) to the method (s = 1).

A term needs the reward's values (``reward(images, prompts) -> Float[N]``) on decoded one-step
predictions x̂_0; ``reward-tilted`` also needs its gradient (``reward.differentiable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddpo3d.diffusion.base import NoisePredictor
from ddpo3d.diffusion.schedule import gather_alphas
from ddpo3d.utils.typing import Any, Callable, Dict, Float, Int, Optional, Sequence, Tensor


@dataclass
class StepContext:
    """The SDS branch's state at one step, shared with an SDS-family term.

    Attributes:
        x0: model-space input with grad [B, C, h, w].
        predictor: the noise predictor.
        cond, uncond: its conditions.
        t: timesteps [B].
        noise: SDS's ε [B, C, h, w].
        eps_pred: the guided ε̂ at ``x_t = add_noise(x0, noise, t)`` (detached).
        eps_cond: the conditional ε̂ at that x_t (detached; None = same as ``eps_pred``).
        guidance_scale: the CFG scale of ``eps_pred``.
        w: SDS's w(t) [B, 1, 1, 1].
        grad_clip: SDS's per-element gradient clamp at this step (None = off).
        prompts: one per view, for the reward.
        reward: ``reward(images, prompts) -> Float[N]``.
        generator: RNG for extra noise draws.
        images: the renders in [0, 1] [B, H, W, 3] (may be None).
        render_out: extra renderer outputs (``comp_normal``, ``depth``, ...) for rewards that
            need them (see :mod:`ddpo3d.rewards.normal_consistency`); may be None.
    """

    x0: Float[Tensor, "B C h w"]
    predictor: NoisePredictor
    cond: Any
    uncond: Any
    t: Int[Tensor, " B"]
    noise: Float[Tensor, "B C h w"]
    eps_pred: Float[Tensor, "B C h w"]
    guidance_scale: float
    w: Float[Tensor, "B 1 1 1"]
    grad_clip: Optional[float] = None
    eps_cond: Optional[Float[Tensor, "B C h w"]] = None
    prompts: Optional[Sequence[str]] = None
    reward: Optional[Callable[..., Tensor]] = None
    generator: Optional[torch.Generator] = None
    images: Optional[Float[Tensor, "B H W 3"]] = None
    render_out: Optional[Dict[str, Any]] = None

    @property
    def batch_size(self) -> int:
        return int(self.x0.shape[0])

    def alpha_bar(self) -> Float[Tensor, "B 1 1 1"]:
        """ᾱ_t per view, shaped for broadcasting."""
        return gather_alphas(self.predictor.alphas_cumprod, self.t, ndim=self.x0.dim()).to(self.x0.dtype)

    def prompt_list(self, repeat: int = 1) -> list:
        """The prompts, ``""`` if missing, each view's repeated ``repeat`` times in candidate-major order."""
        base = [""] * self.batch_size if self.prompts is None else [str(p) for p in self.prompts]
        return base * repeat

    def clip(self, grad: Tensor) -> Tensor:
        """SDS's clamp and NaN handling applied to a gradient."""
        grad = torch.nan_to_num(grad)
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        return grad


@dataclass
class TermOutput:
    """A term's gradient at x0 and its diagnostics.

    Attributes:
        name: the loss suffix (``loss_<name>``).
        grad: detached gradient [B, C, h, w] in SDS's convention (loss gradient = grad / B).
        diagnostics: scalar floats for the log.
    """

    name: str
    grad: Tensor
    diagnostics: Dict[str, float] = field(default_factory=dict)

    def loss(self, x0: Tensor) -> Tensor:
        """The SDS target trick: ``0.5/B Σ ||x0 - (x0 - grad)||²`` has gradient ``grad / B``."""
        target = (x0 - self.grad.detach()).detach()
        return 0.5 * ((x0 - target) ** 2).sum() / x0.shape[0]


class SDSTerm:
    """Base class of the SDS-family terms (see the module docstring).

    Subclasses set ``loss_name``, ``replaces_sds``, ``Config`` and implement :meth:`__call__`.
    ``active`` is False before ``start_step`` or when the term's strength is zero; an inactive
    term is not called and returns a zero loss (no reward calls, no extra model forwards).
    """

    loss_name: str = ""
    replaces_sds: bool = False
    strength_key: Optional[str] = None
    needs_reward: bool = True
    global_step: int = 0

    def update_step(self, epoch: int, global_step: int) -> None:
        self.global_step = int(global_step)

    def state_dict(self) -> Dict[str, Any]:
        """No state beyond the global step, which the trainer sets every step."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Nothing to restore."""

    @property
    def active(self) -> bool:
        return self.global_step >= int(getattr(self.cfg, "start_step", 0))

    def __call__(self, ctx: StepContext) -> TermOutput:
        raise NotImplementedError


def run_term(
    term: SDSTerm,
    ctx: StepContext,
    rescale: Optional[Callable[[Tensor, Tensor], Any]] = None,
    sds_grad: Optional[Tensor] = None,
) -> Dict[str, Any]:
    """Evaluate a term and return ``{"loss_<name>": loss, ...diagnostics}``.

    Args:
        term: the term.
        ctx: this step's SDS state.
        rescale: optional ``rescale(grad, sds_grad) -> grad`` or ``-> (grad, diagnostics)``
            applied to additive terms only (e.g. a per-view strength ratio).
        sds_grad: SDS's gradient (for ``rescale``).

    Returns:
        the loss and scalar diagnostics.
    """
    name = f"loss_{term.loss_name}"
    if not term.active:
        return {name: torch.zeros((), device=ctx.x0.device)}
    if term.needs_reward and ctx.reward is None:
        raise ValueError(f"objective {term.loss_name!r} needs a reward, got None")
    res = term(ctx)
    diagnostics = dict(res.diagnostics)
    if rescale is not None and not term.replaces_sds:
        scaled = rescale(res.grad, sds_grad)
        if isinstance(scaled, tuple):
            scaled, extra = scaled
            diagnostics.update(extra)
        res = TermOutput(res.name, scaled, diagnostics)
    return {name: res.loss(ctx.x0), **diagnostics}


def x0_from_eps(
    x_t: Float[Tensor, "B C h w"], eps: Float[Tensor, "B C h w"], alpha_bar: Float[Tensor, "B 1 1 1"]
) -> Float[Tensor, "B C h w"]:
    """The one-step prediction x̂_0 = (x_t - sqrt(1-ᾱ) ε̂) / sqrt(ᾱ) (DDPM, Ho et al. 2020, eq. 15)."""
    return (x_t - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def extra_candidates(ctx: StepContext, n_extra: int) -> tuple:
    """``n_extra`` more noise draws per view at the same t, and their guided / conditional ε̂.

    One batched predictor call of ``n_extra · B`` items (candidate-major: item ``k·B + b`` is
    view b's candidate k). Returns ``(noise, x_t, eps_guided, eps_cond)``, each [n_extra·B, C, h, w].
    """
    from ddpo3d.diffusion.base import cfg_combine
    from ddpo3d.objectives.sds import sample_noise

    B = ctx.batch_size
    x0 = ctx.x0.detach().repeat(n_extra, *([1] * (ctx.x0.dim() - 1)))
    noise = sample_noise(x0, ctx.generator)
    t = ctx.t.repeat(n_extra)
    x_t = ctx.predictor.add_noise(x0, noise, t)
    cond, uncond = _repeat_cond(ctx.cond, n_extra, B), _repeat_cond(ctx.uncond, n_extra, B)
    with torch.no_grad():
        eps_c, eps_u = ctx.predictor.predict_eps_pair(x_t, t, cond, uncond)
    eps = cfg_combine(eps_c, eps_u, ctx.guidance_scale)
    return noise, x_t, eps.detach(), eps_c.detach()


def _repeat_cond(cond: Any, n: int, batch_size: int) -> Any:
    """Repeat a batched condition n times along dim 0 (broadcast conditions of size 1 stay)."""
    if cond is None or not torch.is_tensor(cond) or cond.shape[0] != batch_size or n == 1:
        return cond
    return cond.repeat(n, *([1] * (cond.dim() - 1)))
