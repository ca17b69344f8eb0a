"""The per-step objective every guidance calls: SDS plus one alignment objective.

One UNet forward is shared: ε̂_c, ε̂_u are computed once at the SDS branch's x_t (with the graph
to x_t only when the DDPO3D branch needs ``unet_jacobian``); SDS uses the guided ε̂ detached,
the policy uses it (at its own CFG scale if configured) for its mean and log-prob. The policy
draws its action noise from its own RNG stream (derived from the SDS generator's seed), so SDS's
t and ε are the same with or without alignment at a given seed.

Strength. The alignment term's gradient is measured where it meets SDS's, per view b:

* ``ddpo3d``: at the diffusion model's input x_0 (latents for Stable Diffusion, the resized pixels
  for DeepFloyd IF and the toy prior). Both terms reach the render through the same encoder from
  there, so this is "at the render" as the diffusion model sees it, and costs no extra backward.
* ``reward-backprop``: at the render itself (its gradient does not pass through x_0); SDS's x_0
  gradient is pulled back to the render with one vector-Jacobian product through the encoder.

With g_b the alignment gradient and s_b = ∇_{x_0,b} loss_sds = w(t)(ε̂ - ε)_b / B (at the same
point), ``strength_mode: ratio`` (default) sends ``g_b · grad_ratio · ||s_b|| / ||g_b||``: its norm
is ``grad_ratio`` times SDS's for every view, whatever the reward's scale, the resolution, the
latent or pixel space, K or ``logprob_reduction``. The direction of each view's estimate is kept;
only its length is set (a per-step step-size rule, so the update is no longer an unbiased
estimate of a fixed objective's gradient, like any normalised-gradient method).
``strength_mode: lambda`` sends g_b unchanged (the plain loss). Either way the system's
``lambda_*`` multiplies the result (schedules, switching off); the ratio sent to the render is
``align_to_sds_grad_ratio · lambda_align / lambda_sds``. Logged every step:
``align_to_sds_grad_ratio`` (mean over views of the sent ||g_b|| / ||s_b||) and
``align_raw_to_sds_grad_ratio`` (the same for the unscaled estimate, what ``lambda`` mode sends).

Geometry rewards (``needs_render_out``, e.g. ``normal-consistency``) score the renderer's normals and
depth, which a denoised prediction x̂_0 does not have: they train with ``reward-backprop`` only (the
caller passes ``render_out``, the system's render output and camera batch; the gradient is taken at
every per-pixel render tensor the reward reads, and the ratio is measured per view over all of them
against SDS's gradient at the RGB render). Pairing one with an objective that scores x̂_0 is a
:class:`ConfigError` (:func:`check_reward_for_objective`).

Config (a guidance block): the SDS keys of :class:`ddpo3d.objectives.sds.SDSConfig` plus

    objective:
      type: ddpo3d | reward-backprop | dreamfl | reward-tilted | reward-sds | dreamdpo | none
      strength_mode: ratio | lambda
      grad_ratio: 0.3
      ...   # the chosen objective's keys (DDPO3DConfig / RewardBackpropConfig / DreamFLConfig / the
            # SDS-family terms' configs, ddpo3d.objectives.interface)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ddpo3d.diffusion.base import NoisePredictor, cfg_combine
from ddpo3d.objectives.ddpo3d import DDPO3D
from ddpo3d.objectives.dreamfl import DreamFL
from ddpo3d.objectives.interface import SDSTerm, StepContext, run_term  # SDS-family terms
from ddpo3d.objectives.reward_backprop import RewardBackprop
from ddpo3d.objectives.sds import SDS, SDSConfig, sample_noise
from ddpo3d.objectives.terms import SDS_TERMS
from ddpo3d.utils.config import ConfigError, parse_structured, to_primitive
from ddpo3d.utils.typing import Any, Callable, Dict, Float, List, Optional, Sequence, Tensor, Tuple

OBJECTIVES = {"ddpo3d": DDPO3D, "reward-backprop": RewardBackprop, "dreamfl": DreamFL, "none": None, **SDS_TERMS}
STRENGTH_MODES = ("ratio", "lambda")
DEFAULT_GRAD_RATIO = 0.3
#: objectives that set their own magnitude (DreamFL matches loss_sds's order of magnitude; the SDS-family
#: terms have β or replace SDS): plain λ by default, ``strength_mode: ratio`` on request
OWN_MAGNITUDE = ("dreamfl", *SDS_TERMS)
#: objectives that can use a reward needing the renderer's outputs (the others score x̂0 predictions)
RENDER_OUT_OBJECTIVES = ("reward-backprop", "none")


@dataclass
class RewardGuidedSDSConfig(SDSConfig):
    """SDS keys plus the ``objective`` block (``type``, strength keys + that objective's keys)."""

    objective: Dict[str, Any] = field(default_factory=lambda: {"type": "none"})


@dataclass
class Strength:
    """How the alignment gradient's length is set (see the module docstring)."""

    mode: str = "ratio"  # "ratio": ||align|| = grad_ratio · ||SDS|| per view | "lambda": the plain loss
    grad_ratio: float = DEFAULT_GRAD_RATIO  # ratio mode: per-view norm of the alignment gradient / SDS's


def build_objective(block: Any) -> Tuple[Any, Strength]:
    """Build an alignment objective from ``{"type": ..., **options}`` (None for ``none``) and its strength."""
    block = dict(to_primitive(block) or {})
    kind = block.pop("type", "none")
    if kind not in OBJECTIVES:
        raise ConfigError(f"Unknown objective type {kind!r}: use one of {sorted(OBJECTIVES)}")
    default_mode = "lambda" if kind in OWN_MAGNITUDE else "ratio"
    strength = Strength(block.pop("strength_mode", default_mode), float(block.pop("grad_ratio", DEFAULT_GRAD_RATIO)))
    if strength.mode not in STRENGTH_MODES:
        raise ConfigError(f"objective.strength_mode must be one of {STRENGTH_MODES}, got {strength.mode!r}")
    if not strength.grad_ratio >= 0:
        raise ConfigError(f"objective.grad_ratio must be >= 0, got {strength.grad_ratio}")
    if OBJECTIVES[kind] is None:
        if block:
            raise ConfigError(f"objective type 'none' takes no options, got {sorted(block)}")
        return None, strength
    return OBJECTIVES[kind](block), strength


def render_out_terms(reward: Any) -> List[str]:
    """Names of the reward's terms (itself, or a composite's) that need the renderer's outputs."""
    terms = list(getattr(reward, "rewards", None) or [reward])
    return [str(getattr(r, "name", type(r).__name__)) for r in terms if getattr(r, "needs_render_out", False)]


def check_reward_for_objective(objective_type: str, geometry_terms: Sequence[str]) -> None:
    """Raise :class:`ConfigError` when a reward that scores geometry meets an objective that scores x̂0.

    Args:
        objective_type: the objective's ``type``.
        geometry_terms: names of the reward terms with ``needs_render_out`` (:func:`render_out_terms`).
    """
    if not geometry_terms or objective_type in RENDER_OUT_OBJECTIVES:
        return
    names = ", ".join(repr(n) for n in geometry_terms)
    raise ConfigError(
        f"reward {names} scores the renderer's geometry (normals and depth, needs_render_out) but objective "
        f"{objective_type!r} scores denoised predictions x̂0, which have no geometry: use objective type "
        "'reward-backprop' (its gradient at the render, with system_type ddpo3d-system), or 'none' to log it, "
        "or score it on eval renders only (system.eval_reward)"
    )


def _view_norms(g: Tensor) -> Float[Tensor, " B"]:
    return g.flatten(1).norm(dim=1)


def rescale(
    align_grad: Float[Tensor, "B ..."], sds_grad: Float[Tensor, "B ..."], strength: Strength
) -> Tuple[Tensor, Dict[str, float]]:
    """Per view: ``g_b · grad_ratio · ||s_b|| / ||g_b||`` (ratio mode) or ``g_b`` (lambda mode).

    Args:
        align_grad: g, the alignment gradient (detached).
        sds_grad: s, SDS's gradient at the same tensor (detached).
        strength: the mode and ratio.

    Returns:
        ``(sent gradient, {"align_to_sds_grad_ratio", "align_raw_to_sds_grad_ratio"})``.
    """
    n_align, n_sds = _view_norms(align_grad), _view_norms(sds_grad).clamp(min=1e-30)
    raw = n_align / n_sds
    if strength.mode == "ratio":
        scale = torch.where(n_align > 0, strength.grad_ratio * n_sds / n_align.clamp(min=1e-30), 0.0)
        align_grad = align_grad * scale.view(-1, *([1] * (align_grad.dim() - 1)))
    sent = _view_norms(align_grad) / n_sds
    return align_grad, {"align_to_sds_grad_ratio": float(sent.mean()), "align_raw_to_sds_grad_ratio": float(raw.mean())}


def inject(x: Tensor, grad: Tensor, value: Tensor) -> Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``x`` is exactly ``grad`` (the SDS target trick)."""
    grad = grad.detach()
    return value.detach() + (x * grad).sum() - (x.detach() * grad).sum()


class RewardGuidedSDS:
    """SDS + (DDPO3D | reward backprop | nothing), evaluated once per training step.

    Args:
        cfg: dict / DictConfig of :class:`RewardGuidedSDSConfig` keys.
    """

    Config = RewardGuidedSDSConfig

    def __init__(self, cfg: Any = None):
        if isinstance(cfg, RewardGuidedSDSConfig):
            cfg = dataclasses.asdict(cfg)
        self.cfg = parse_structured(RewardGuidedSDSConfig, cfg, where="RewardGuidedSDS")
        sds_keys = [f.name for f in dataclasses.fields(SDSConfig)]
        self.sds = SDS({k: to_primitive(self.cfg[k]) for k in sds_keys})
        self.objective, self.strength = build_objective(self.cfg.objective)
        self.objective_type = dict(to_primitive(self.cfg.objective)).get("type", "none")
        self._policy_rng: Optional[Tuple[torch.Generator, torch.Generator]] = None
        self._pending_policy_rng: Optional[Tensor] = None

    def update_step(self, epoch: int, global_step: int) -> None:
        """Evaluate every schedule (SDS t range, grad clip) at this step."""
        self.sds.update_step(epoch, global_step)
        if self.objective is not None:
            self.objective.update_step(epoch, global_step)

    def policy_generator(self, generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
        """The policy's own RNG, seeded from ``generator``'s seed + 1 (None: the global RNG)."""
        if generator is None:
            return None
        if self._policy_rng is None or self._policy_rng[0] is not generator:
            derived = torch.Generator(device=generator.device).manual_seed(generator.initial_seed() + 1)
            if self._pending_policy_rng is not None:
                derived.set_state(self._pending_policy_rng)
                self._pending_policy_rng = None
            self._policy_rng = (generator, derived)
        return self._policy_rng[1]

    def state_dict(self) -> Dict[str, Any]:
        """Checkpointable state: the objective's (stat tracker) and the policy RNG's."""
        state: Dict[str, Any] = {"objective": None if self.objective is None else self.objective.state_dict()}
        if self._policy_rng is not None:
            state["policy_rng"] = self._policy_rng[1].get_state()
        return state

    def load_state_dict(self, state: Dict[str, Any], generator: Optional[torch.Generator] = None) -> None:
        """Restore :meth:`state_dict`; ``generator`` is the SDS generator the policy RNG derives from."""
        if self.objective is not None and state.get("objective") is not None:
            self.objective.load_state_dict(state["objective"])
        if "policy_rng" in state:
            if generator is not None:
                self.policy_generator(generator).set_state(state["policy_rng"])
            elif self._policy_rng is not None:
                self._policy_rng[1].set_state(state["policy_rng"])
            else:  # restored before the first step (a checkpoint): applied when the stream is made
                self._pending_policy_rng = state["policy_rng"]

    def _at_render(
        self,
        loss: Tensor,
        images: Tensor,
        x0: Tensor,
        sds_x0_grad: Tensor,
        out: Dict[str, Any],
        render_out: Optional[Dict[str, Any]] = None,
    ) -> Tensor:
        """A render-space term (reward-backprop, DreamFL) with its gradient set by ``self.strength``.

        The term's gradient is taken at the render: ``images`` and, for geometry rewards, every
        per-pixel tensor ``[B, H, W, C]`` of ``render_out`` with a graph (``comp_normal``, ``depth``,
        ``opacity`` ...); per view, its norm over all of them is compared with SDS's, whose x_0
        gradient is pulled back to ``images`` with one vector-Jacobian product through the encoder
        (x0 = encode(images)); the ratios are logged into ``out``.
        """
        inputs = [images]
        for value in (render_out or {}).values():
            if (
                torch.is_tensor(value)
                and value.requires_grad
                and value.dim() == 4
                and tuple(value.shape[:3]) == tuple(images.shape[:3])
                and all(value is not t for t in inputs)
            ):
                inputs.append(value)
        inputs = [t for t in inputs if t.requires_grad]
        if not (torch.is_grad_enabled() and inputs and loss.requires_grad):
            if torch.is_grad_enabled():  # a training step whose term reaches no render tensor: it sends nothing
                out.setdefault("align_to_sds_grad_ratio", 0.0)
            return loss
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
        s = None
        if x0.requires_grad and images.requires_grad:
            (s,) = torch.autograd.grad(x0, images, sds_x0_grad, retain_graph=True, allow_unused=True)
        if s is not None:
            flat, ratios = rescale(torch.cat([g.flatten(1) for g in grads], 1), s, self.strength)
            grads = [p.reshape_as(g) for p, g in zip(flat.split([g[0].numel() for g in grads], 1), grads)]
            out.update(ratios)
        value = inject(inputs[0], grads[0], loss)
        for t, g in zip(inputs[1:], grads[1:]):  # the same trick for every further render tensor
            value = value + (t * g.detach()).sum() - (t.detach() * g.detach()).sum()
        return value

    def __call__(
        self,
        images: Float[Tensor, "B H W 3"],
        predictor: NoisePredictor,
        cond: Any,
        uncond: Any = None,
        prompts: Optional[Sequence[str]] = None,
        reward: Optional[Callable[..., Tensor]] = None,
        x0: Optional[Float[Tensor, "B C h w"]] = None,
        generator: Optional[torch.Generator] = None,
        t: Optional[Tensor] = None,
        t_range: Optional[Tuple[int, int]] = None,
        render_out: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """One step's losses and diagnostics.

        Args:
            images: renders in [0, 1] with grad (threestudio's ``comp_rgb``).
            predictor: noise predictor.
            cond, uncond: conditions for the predictor.
            prompts: one per view (reward and per-prompt advantages).
            reward: ``reward(images, prompts) -> Float[N]`` (with ``differentiable`` for
                reward-backprop); needed unless the objective is ``none``.
            x0: ``predictor.encode(images)`` if already computed.
            generator: RNG for t and ε; the policy's noise comes from a stream derived from it.
            t: timesteps [B] chosen by the host; sampled here if None.
            t_range: ``(min_step, max_step)`` of the host guidance's own schedule: when ``t`` is
                None it is drawn from this range (both ends included) instead of from this
                object's SDS schedule, so a run has one t schedule; reported as ``min_step`` /
                ``max_step``.
            render_out: the renderer's outputs and the camera batch (``{**batch, **render}``) for
                rewards with ``needs_render_out``; only ``reward-backprop`` (and the SDS-family
                terms' context) use them.

        Returns:
            ``{"loss_sds", "loss_ddpo" | "loss_reward", ...scalar diagnostics}``.
        """
        if x0 is None:
            x0 = predictor.encode(images)
        B = x0.shape[0]
        self.sds.num_train_timesteps = predictor.num_train_timesteps
        if t is None and t_range is not None:  # the host's schedule, drawn as SDS draws its own
            t = self.sds.sample_timesteps(B, x0.device, generator, t_range=t_range)
        if t is None:
            t = self.sds.sample_timesteps(B, x0.device, generator)
        t = torch.as_tensor(t, device=x0.device).long().expand(B)
        noise = sample_noise(x0, generator)

        policy = self.objective if isinstance(self.objective, DDPO3D) else None
        # objectives with a start step / zero strength (DreamFL, the SDS-family terms) say whether they run
        if self.objective is not None and getattr(self.objective, "active", True) and reward is None:
            raise ValueError(f"objective {self.objective_type!r} needs a reward, got None")
        check_reward_for_objective(self.objective_type, render_out_terms(reward) if reward is not None else [])

        # The shared forward: x_t keeps its graph to x0 only when the policy needs it.
        x_t = predictor.add_noise(x0 if policy is not None else x0.detach(), noise, t)
        jacobian = policy is not None and bool(policy.cfg.unet_jacobian) and torch.is_grad_enabled()
        with torch.set_grad_enabled(jacobian):
            eps_c, eps_u = predictor.predict_eps_pair(x_t if jacobian else x_t.detach(), t, cond, uncond)
        eps_sds = cfg_combine(eps_c, eps_u, self.sds.cfg.guidance_scale).detach()
        sds_out = self.sds(x0, predictor, cond, uncond, t=t, noise=noise, eps_pred=eps_sds)
        out: Dict[str, Any] = {
            "loss_sds": sds_out.loss_sds,
            "sds_grad_norm": sds_out.grad_norm,
            "grad_norm": sds_out.grad.norm(),  # threestudio's: norm of the whole batch's SDS gradient
            "min_step": sds_out.min_step,
            "max_step": sds_out.max_step,
            "t_mean": float(t.float().mean()),
        }
        if t_range is not None:
            out["min_step"], out["max_step"] = int(t_range[0]), int(t_range[1])
        measure = torch.is_grad_enabled() and x0.requires_grad
        sds_x0_grad = sds_out.grad.detach() / B  # ∇_{x0} loss_sds (the target trick)

        if policy is not None:
            scale = policy.cfg.guidance_scale
            scale = self.sds.cfg.guidance_scale if scale is None else scale
            eps_policy = cfg_combine(eps_c, eps_u, scale)
            res = policy(
                x0,
                predictor,
                cond,
                uncond,
                prompts,
                reward,
                t=t,
                noise=noise,
                x_t=x_t,
                eps_pred=eps_policy,
                guidance_scale=scale,
                generator=self.policy_generator(generator),
                images=images,
            )
            loss = res.loss_ddpo
            if measure:
                (g,) = torch.autograd.grad(loss, x0, allow_unused=True)
                g = torch.zeros_like(x0) if g is None else g
                g, ratios = rescale(g, sds_x0_grad, self.strength)
                loss = inject(x0, g, loss)
                out.update(ratios)
            out["loss_ddpo"] = loss
            out.update(res.diagnostics)
        elif isinstance(self.objective, RewardBackprop):
            loss, stats = self.objective(images, prompts, reward, render_out=render_out)
            out["loss_reward"] = self._at_render(loss, images, x0, sds_x0_grad, out, render_out)
            out.update(stats)
        elif isinstance(self.objective, DreamFL):  # reward on x̂0 / the render, weight matched to loss_sds
            res = self.objective(images, predictor, prompts, reward, x_t, t, eps_sds, out["loss_sds"], eps_c)
            res["loss_dreamfl"] = self._at_render(res["loss_dreamfl"], images, x0, sds_x0_grad, out)
            out.update(res)
        elif isinstance(self.objective, SDSTerm):  # reward-tilted | reward-sds | dreamdpo
            ctx = StepContext(
                x0=x0,
                predictor=predictor,
                cond=cond,
                uncond=uncond,
                t=t,
                noise=noise,
                eps_pred=eps_sds,
                eps_cond=eps_c.detach(),
                guidance_scale=self.sds.cfg.guidance_scale,
                w=sds_out.w,
                grad_clip=self.sds.grad_clip_val,
                prompts=prompts,
                reward=reward,
                generator=self.policy_generator(generator),  # extra draws leave SDS's t and ε unchanged
                images=images,
                render_out=render_out,
            )
            out.update(run_term(self.objective, ctx, lambda g, s: rescale(g, s, self.strength), sds_x0_grad))
        else:
            out["align_to_sds_grad_ratio"] = 0.0
        return out
