"""The per-step objective every guidance calls: SDS plus one alignment objective.

One UNet forward is shared: ε̂_c, ε̂_u are computed once at the SDS branch's x_t (with the graph
to x_t only when the DDPO3D branch needs ``unet_jacobian``); SDS uses the guided ε̂ detached,
the policy uses it (at its own CFG scale if configured) for its mean and log-prob.

Config (a guidance block): the SDS keys of :class:`ddpo3d.objectives.sds.SDSConfig` plus

    objective:
      type: ddpo3d | reward-backprop | none | reward-tilted | reward-sds | dreamdpo
      ...   # the chosen objective's keys (DDPO3DConfig / RewardBackpropConfig / the SDS-family
            # terms' configs, ddpo3d.objectives.interface)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ddpo3d.diffusion.base import NoisePredictor, cfg_combine
from ddpo3d.objectives.ddpo3d import DDPO3D
from ddpo3d.objectives.interface import SDSTerm, StepContext, run_term  # SDS-family terms
from ddpo3d.objectives.reward_backprop import RewardBackprop
from ddpo3d.objectives.sds import SDS, SDSConfig, sample_noise
from ddpo3d.objectives.terms import SDS_TERMS
from ddpo3d.utils.config import ConfigError, parse_structured, to_primitive
from ddpo3d.utils.typing import Any, Callable, Dict, Float, Optional, Sequence, Tensor

OBJECTIVES = {"ddpo3d": DDPO3D, "reward-backprop": RewardBackprop, "none": None, **SDS_TERMS}


@dataclass
class RewardGuidedSDSConfig(SDSConfig):
    """SDS keys plus the ``objective`` block (``type`` + that objective's keys)."""

    objective: Dict[str, Any] = field(default_factory=lambda: {"type": "none"})


def build_objective(block: Any) -> Any:
    """Build an alignment objective from ``{"type": ..., **options}`` (None for ``none``)."""
    block = dict(to_primitive(block) or {})
    kind = block.pop("type", "none")
    if kind not in OBJECTIVES:
        raise ConfigError(f"Unknown objective type {kind!r}: use one of {sorted(OBJECTIVES)}")
    if OBJECTIVES[kind] is None:
        if block:
            raise ConfigError(f"objective type 'none' takes no options, got {sorted(block)}")
        return None
    return OBJECTIVES[kind](block)


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
        self.objective = build_objective(self.cfg.objective)
        self.objective_type = dict(to_primitive(self.cfg.objective)).get("type", "none")

    def update_step(self, epoch: int, global_step: int) -> None:
        """Evaluate every schedule (SDS t range, grad clip, objective weights) at this step."""
        self.sds.update_step(epoch, global_step)
        if self.objective is not None:
            self.objective.update_step(epoch, global_step)

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
            generator: RNG for t, ε and the policy's noise.

        Returns:
            ``{"loss_sds", "loss_ddpo" | "loss_reward", ...scalar diagnostics}``.
        """
        if x0 is None:
            x0 = predictor.encode(images)
        B = x0.shape[0]
        self.sds.num_train_timesteps = predictor.num_train_timesteps
        t = self.sds.sample_timesteps(B, x0.device, generator)
        noise = sample_noise(x0, generator)

        policy = self.objective if isinstance(self.objective, DDPO3D) and self.objective.active else None
        need_reward = self.objective is not None and self.objective.active
        if need_reward and reward is None:
            raise ValueError(f"objective {self.objective_type!r} needs a reward, got None")

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

        if isinstance(self.objective, DDPO3D):
            if policy is None:
                out["loss_ddpo"] = torch.zeros((), device=x0.device)
            else:
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
                    generator=generator,
                    images=images,
                )
                out["loss_ddpo"] = res.loss_ddpo
                out.update(res.diagnostics)
        elif isinstance(self.objective, RewardBackprop):
            if self.objective.active:
                loss, stats = self.objective(images, prompts, reward)
                out["loss_reward"] = loss
                out.update(stats)
            else:
                out["loss_reward"] = torch.zeros((), device=x0.device)
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
                generator=generator,
                images=images,
            )
            out.update(run_term(self.objective, ctx))
        return out
