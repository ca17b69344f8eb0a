"""What every DDPO3D guidance adds to its host diffusion guidance: a reward and an objective.

Not registered itself: the registered guidances (one per file) combine
:class:`AlignmentConfig` with their host base's ``Config`` and :class:`RewardAlignmentMixin`
with the host base class, so the base's model loading, attributes and schedules stay
threestudio's own. The mixin owns the one ``__call__``; a guidance says only how the model
input is made (:meth:`RewardAlignmentMixin.model_input`: SD latents, IF pixels, the toy
world's images) and, when it is not text, how the conditions are made
(:meth:`RewardAlignmentMixin.conditions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ddpo3d.host import warn
from ddpo3d.objectives.combined import RewardGuidedSDS, check_reward_for_objective, render_out_terms
from ddpo3d.objectives.sds import SDSConfig
from ddpo3d.rewards import build_reward
from ddpo3d.utils.config import ConfigError, to_primitive
from ddpo3d.utils.typing import Any, Dict, Float, List, Optional, Tensor, Tuple

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
    """The prompt string per view, from threestudio 0.2.3's ``PromptProcessorOutput`` API
    (``prompt``, ``directions`` with their ``condition``, ``direction2idx``, ``prompts_vd``),
    which both hosts provide. The direction rule is threestudio's ``get_text_embeddings``:
    later directions in the list override earlier ones.
    """
    n = int(elevation.shape[0])
    if not view_dependent:
        return [str(prompt_utils.prompt)] * n
    idx = torch.zeros_like(elevation, dtype=torch.long)
    for d in prompt_utils.directions:
        idx[d.condition(elevation, azimuth, camera_distances)] = prompt_utils.direction2idx[d.name]
    return [prompt_utils.prompts_vd[i] for i in idx.tolist()]


def reject_unhonoured_keys(cls: type, cfg: Any) -> None:
    """Raise :class:`ConfigError` when a raw guidance config sets a key of ``cls.unhonoured_keys``
    to anything but its only accepted value (before the host loads any weights).

    Args:
        cls: the guidance class (its ``unhonoured_keys``: ``{key: accepted value}``).
        cfg: the config as given (dict, DictConfig or None).
    """
    given = to_primitive(cfg) or {}
    for key, accepted in getattr(cls, "unhonoured_keys", {}).items():
        if key in given and given[key] != accepted:
            raise ConfigError(
                f"guidance.{key}={given[key]!r} is not supported by {cls.__name__} (the reward-aligned "
                f"objective replaces the host's loss; only {key}={accepted!r} is accepted)"
            )


class RewardAlignmentMixin:
    """Builds the reward and the :class:`RewardGuidedSDS` objective from the guidance config
    and implements the guidance call for every DDPO3D guidance."""

    #: host config keys whose feature the objective does not implement: {key: the only accepted value}
    unhonoured_keys: ClassVar[Dict[str, Any]] = {}

    reward: Optional[torch.nn.Module]
    objective: RewardGuidedSDS
    predictor: Any

    def __init__(self, cfg: Any = None, *args, **kwargs):
        reject_unhonoured_keys(type(self), cfg)
        super().__init__(cfg, *args, **kwargs)

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
        if self.reward is not None:  # geometry rewards cannot score x̂0 predictions
            check_reward_for_objective(kind, render_out_terms(self.reward))
        self._render_out_warned = False
        self.generator = None
        if self.cfg.seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(int(self.cfg.seed))

    @property
    def needs_render_out(self) -> bool:
        """The reward scores the renderer's outputs (normals, depth): the system passes
        ``render_out=`` to the guidance call (``ddpo3d-system`` does)."""
        return bool(getattr(getattr(self, "reward", None), "needs_render_out", False))

    # ------------------------------------------------------------------ hooks
    def model_input(
        self, rgb: Float[Tensor, "B H W C"], rgb_as_latents: bool
    ) -> Tuple[Optional[Float[Tensor, "B c h w"]], Float[Tensor, "B H W 3"]]:
        """How the diffusion model's input is made from the render.

        Args:
            rgb: the render ``[B, H, W, 3]`` in [0, 1] (or latents when ``rgb_as_latents``).
            rgb_as_latents: the system passes latents.

        Returns:
            ``(x0, images)``: the model-space input with its graph to ``rgb`` (None: the
            predictor encodes ``images``) and the images the reward scores.
        """
        if rgb_as_latents:
            raise NotImplementedError(f"{type(self).__name__} takes RGB renders only (rgb_as_latents=True)")
        return None, rgb

    def conditions(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: Any,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
        **batch: Any,
    ) -> Tuple[Any, Any]:
        """``(cond, uncond)`` for the predictor: the text embeddings, threestudio's order
        (``rgb`` and the rest of the batch are for guidances that condition on cameras)."""
        emb = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting)
        return emb.chunk(2)

    def t_range(self) -> Optional[Tuple[int, int]]:
        """The host guidance's ``[min_step, max_step]`` (its schedule, resolved in its
        ``update_step``): the objective draws ``t`` from it, so there is one t schedule."""
        return (int(self.min_step), int(self.max_step))

    # ------------------------------------------------------------------ the call
    def reward_prompts_for(self, prompt_utils: Any, elevation, azimuth, camera_distances) -> List[str]:
        """The prompt per view the reward scores against (``reward_prompts``)."""
        vd = self.cfg.reward_prompts == "view-dependent" and bool(getattr(self.cfg, "view_dependent_prompting", True))
        return view_prompts(prompt_utils, elevation, azimuth, camera_distances, vd)

    def __call__(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: Any,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        render_out: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Dict[str, Any]:
        """threestudio's guidance call: one step of SDS + the alignment objective.

        Args:
            rgb: renders ``[B, H, W, 3]`` in [0, 1] (``comp_rgb``), or latents where the
                guidance accepts them.
            prompt_utils: the prompt processor's output.
            elevation, azimuth, camera_distances: camera parameters ``[B]`` (degrees).
            rgb_as_latents: ``rgb`` holds latents (see :meth:`model_input`).
            guidance_eval: not supported with alignment (an error).
            render_out: the system's render output (``comp_normal``, ``depth``, ``opacity`` ...) for
                rewards with ``needs_render_out``; optional, threestudio's systems do not pass it
                (``ddpo3d-system`` does when :attr:`needs_render_out`). The reward gets it merged
                over the camera batch (``{**batch, **render_out}``: the rays).
            **kwargs: the rest of the batch (the toy guidance reads ``rays_o`` / ``rays_d``).

        Returns:
            ``loss_sds``, ``loss_ddpo`` / ``loss_reward`` and scalar diagnostics
            (``grad_norm`` is threestudio's SDS gradient norm). When the objective is
            ``none`` but a reward is configured, the reward of the render is logged (no
            gradient) so runs stay comparable.
        """
        name = type(self).__name__
        if guidance_eval:
            raise NotImplementedError(f"guidance_eval is not supported by {name}")
        if getattr(prompt_utils, "use_perp_neg", False):
            raise NotImplementedError("Perp-Neg prompts (use_perp_neg) are not supported with reward alignment")
        cond, uncond = self.conditions(rgb, prompt_utils, elevation, azimuth, camera_distances, **kwargs)
        prompts = self.reward_prompts_for(prompt_utils, elevation, azimuth, camera_distances)
        x0, images = self.model_input(rgb, rgb_as_latents)
        geometry = self.needs_render_out
        if geometry and render_out is None:
            if self.objective.objective_type != "none":
                raise ValueError(
                    f"{name}: reward {getattr(self.reward, 'name', '?')!r} scores the renderer's normals and depth, "
                    "but the system passed no render_out to the guidance: use system_type ddpo3d-system (it passes "
                    "its render output in training)"
                )
            if not getattr(self, "_render_out_warned", False):
                warn(f"{name}: no render_out from the system: the geometry reward is not logged in training")
                self._render_out_warned = True
        ro = {**kwargs, **render_out} if geometry and render_out is not None else None
        out = self.objective(
            images,
            self.predictor,
            cond,
            uncond,
            prompts,
            self.reward,
            x0=x0,
            generator=self.generator,
            t_range=self.t_range(),
            render_out=ro,
        )
        if self.reward is not None and "reward_mean" not in out and (ro is not None or not geometry):
            with torch.no_grad():
                extra = {"render_out": ro} if geometry else {}
                scores = self.reward(images.detach().clamp(0, 1), prompts, **extra)
            out["reward_mean"] = float(scores.float().mean())
        return out

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        super().update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.objective.update_step(epoch, global_step)
