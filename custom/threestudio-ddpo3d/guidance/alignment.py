"""What every DDPO3D guidance adds to its host diffusion guidance: a reward and an objective.

Not registered itself: the registered guidances (one per file) combine
:class:`AlignmentConfig` with their host base's ``Config`` and :class:`RewardAlignmentMixin`
with the host base class, so the base's model loading, attributes and schedules stay
threestudio's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddpo3d.host import warn
from ddpo3d.objectives.combined import RewardGuidedSDS
from ddpo3d.objectives.sds import SDSConfig
from ddpo3d.rewards import build_reward
from ddpo3d.utils.config import ConfigError, to_primitive
from ddpo3d.utils.typing import Any, Dict, Float, List, Optional, Tensor

#: SDS keys shared by threestudio's guidance configs and :class:`SDSConfig`.
SDS_KEYS = [f for f in SDSConfig.__dataclass_fields__]

REWARD_PROMPTS = ("view-dependent", "base")


@dataclass
class AlignmentConfig:
    """Keys a DDPO3D guidance adds to its base guidance's config."""

    # reward block or list of blocks (ddpo3d.rewards.build_reward); null = no reward
    reward: Any = None
    # alignment objective: {type: ddpo3d | reward-backprop | none, ...its options}
    objective: Any = field(default_factory=lambda: {"type": "ddpo3d"})
    # prompts the reward sees: "view-dependent" ("X, side view") or "base" (the plain prompt)
    reward_prompts: str = "view-dependent"
    # seed of the guidance's own RNG (t, ε, policy noise); null = the global torch RNG
    seed: Optional[int] = None


def view_prompts(
    prompt_utils: Any,
    elevation: Float[Tensor, " B"],
    azimuth: Float[Tensor, " B"],
    camera_distances: Float[Tensor, " B"],
    view_dependent: bool,
) -> List[str]:
    """The prompt string per view, on either host.

    threestudio 0.2.3's ``PromptProcessorOutput`` has ``directions`` (with their ``condition``),
    ``direction2idx`` and ``prompts_vd``; the built-in runtime adds ``get_prompts``. The
    direction rule is threestudio's: later directions in the list override earlier ones.
    """
    n = int(elevation.shape[0])
    if not view_dependent:
        return [str(prompt_utils.prompt)] * n
    if hasattr(prompt_utils, "get_prompts"):
        return list(prompt_utils.get_prompts(elevation, azimuth, camera_distances, True))
    idx = torch.zeros_like(elevation, dtype=torch.long)
    for d in prompt_utils.directions:
        idx[d.condition(elevation, azimuth, camera_distances)] = prompt_utils.direction2idx[d.name]
    return [prompt_utils.prompts_vd[i] for i in idx.tolist()]


class RewardAlignmentMixin:
    """Builds the reward and the :class:`RewardGuidedSDS` objective from the guidance config."""

    reward: Optional[torch.nn.Module]
    objective: RewardGuidedSDS

    def configure_alignment(self) -> None:
        """Build ``self.reward`` and ``self.objective`` (call after the base ``configure``)."""
        if self.cfg.reward_prompts not in REWARD_PROMPTS:
            raise ConfigError(
                f"guidance.reward_prompts must be one of {REWARD_PROMPTS}, got {self.cfg.reward_prompts!r}"
            )
        block = to_primitive(self.cfg.reward)
        self.reward = None if block is None else build_reward(block).to(self.device)
        sds = {k: to_primitive(self.cfg[k]) for k in SDS_KEYS if k in self.cfg}
        self.objective = RewardGuidedSDS({**sds, "objective": to_primitive(self.cfg.objective)})
        kind = self.objective.objective_type
        if kind != "none" and self.reward is None:
            raise ConfigError(f"guidance.objective.type is {kind!r} but guidance.reward is not set")
        if kind == "none" and self.reward is not None:
            warn("guidance.reward is set but guidance.objective.type is 'none': the reward is only logged")
        self.generator = None
        if self.cfg.seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(int(self.cfg.seed))

    def text_conditions(
        self,
        prompt_utils: Any,
        elevation,
        azimuth,
        camera_distances,
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        latents_ok: bool = False,
    ):
        """Check the call options and return ``(cond, uncond, prompts)`` for a text-conditioned UNet.

        Raises:
            NotImplementedError: for ``guidance_eval``, Perp-Neg prompts, or latents where not supported.
        """
        name = type(self).__name__
        if guidance_eval:
            raise NotImplementedError(f"guidance_eval is not supported by {name}")
        if rgb_as_latents and not latents_ok:
            raise NotImplementedError(f"{name} takes RGB renders only (rgb_as_latents=True)")
        if getattr(prompt_utils, "use_perp_neg", False):
            raise NotImplementedError("Perp-Neg prompts (use_perp_neg) are not supported with reward alignment")
        emb = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting)
        cond, uncond = emb.chunk(2)  # threestudio's order: cond, then uncond
        return cond, uncond, self.reward_prompts_for(prompt_utils, elevation, azimuth, camera_distances)

    def reward_prompts_for(self, prompt_utils: Any, elevation, azimuth, camera_distances) -> List[str]:
        vd = self.cfg.reward_prompts == "view-dependent" and bool(getattr(self.cfg, "view_dependent_prompting", True))
        return view_prompts(prompt_utils, elevation, azimuth, camera_distances, vd)

    def align(
        self,
        rgb: Float[Tensor, "B H W 3"],
        predictor: Any,
        cond: Any,
        uncond: Any,
        prompts: List[str],
        x0: Optional[Tensor] = None,
    ) -> Dict[str, Any]:
        """One step of SDS + the alignment objective (``grad_norm`` is threestudio's SDS gradient norm).

        When the objective is ``none`` but a reward is configured, the reward of the render is
        logged (no gradient) so runs stay comparable.
        """
        out = self.objective(rgb, predictor, cond, uncond, prompts, self.reward, x0=x0, generator=self.generator)
        if self.reward is not None and "reward_mean" not in out:
            with torch.no_grad():
                scores = self.reward(rgb.detach().clamp(0, 1), prompts)
            out["reward_mean"] = float(scores.float().mean())
        return out

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        super().update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.objective.update_step(epoch, global_step)
