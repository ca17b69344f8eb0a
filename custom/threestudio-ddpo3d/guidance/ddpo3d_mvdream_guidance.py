"""``ddpo3d-mvdream-guidance``: MVDream multi-view SDS plus a reward objective (DreamReward's setting).

A subclass of threestudio-mvdream's ``MultiviewDiffusionGuidance``
(``mvdream-multiview-diffusion-guidance``; the built-in runtime ships a mirror of it) with the
keys every DDPO3D guidance adds: ``reward``, ``objective`` (``ddpo3d`` | ``reward-backprop`` |
``dreamfl`` | ``none``), ``reward_prompts``, ``seed``. The model the base loads is wrapped in an
ε-prediction adapter (:class:`ddpo3d.diffusion.mvdream.MVDreamPredictor`), so the objectives are
the same code as on Stable Diffusion; ``loss_sds`` is threestudio-mvdream's own (x0 reconstruction
with ``recon_std_rescale``, or SDS with ``recon_loss: false``, see
:class:`ddpo3d.objectives.mvdream_sds.MVDreamSDS`), from the same single model call.

MVDream's contracts are kept: one timestep per batch, batches of whole objects (``n_view``
consecutive views), one model call with CFG halves (cond, uncond), MVDream's CFG
``ε_u + s (ε_c - ε_u)`` (passed to the objectives as ``s - 1`` in threestudio's form), and the
camera condition computed from a clone of ``c2w`` (MVDream's ``normalize_camera`` writes in place).
Returns ``loss_sds`` plus ``loss_ddpo`` / ``loss_reward`` / ``loss_dreamfl``; add the matching
``lambda_*`` to ``system.loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ddpo3d.diffusion.mvdream import MVDreamPredictor, mvdream_to_threestudio_scale
from ddpo3d.host import HOST, BaseObject, find, register
from ddpo3d.objectives.mvdream_sds import MVDreamSDS
from ddpo3d.utils.config import ConfigError, to_primitive
from ddpo3d.utils.typing import Any

from .alignment import AlignmentConfig, RewardAlignmentMixin, view_prompts

BASE_NAME = "mvdream-multiview-diffusion-guidance"


def mvdream_base() -> Any:
    """The host's ``MultiviewDiffusionGuidance``, or ``None`` when threestudio-mvdream is not loaded."""
    if HOST == "lite":
        from ddpo3d.lite.models.guidance.mvdream_guidance import MultiviewDiffusionGuidance

        return MultiviewDiffusionGuidance
    try:
        return find(BASE_NAME)
    except Exception:
        return None


def make_mvdream_guidance(base: Any) -> type:
    """Build the DDPO3D subclass of an MVDream guidance class ``base`` (threestudio-mvdream's or the mirror)."""

    class DDPO3DMVDreamGuidance(RewardAlignmentMixin, base):
        """MVDream guidance with DDPO3D / reward-backprop / DreamFL alignment."""

        @dataclass
        class Config(base.Config, AlignmentConfig):
            pass

        cfg: Config

        def configure(self) -> None:
            super().configure()
            self.predictor = MVDreamPredictor(self.model, self.cfg.n_view, self.cfg.image_size)
            self.configure_alignment()
            block = to_primitive(self.cfg.objective) or {}
            if block.get("type") == "ddpo3d" and int(block.get("num_samples", 1)) != 1:
                raise ConfigError(
                    "ddpo3d-mvdream-guidance: objective.num_samples must be 1 (K > 1 repeats each view K times "
                    "in a row, which breaks MVDream's n_view groups and Reward3D's 4-view objects)"
                )
            # threestudio-mvdream's loss_sds and one t per batch; CFG scale in threestudio's form
            self.objective.sds = MVDreamSDS(
                {
                    "guidance_scale": mvdream_to_threestudio_scale(self.cfg.guidance_scale),
                    "min_step_percent": self.cfg.min_step_percent,
                    "max_step_percent": self.cfg.max_step_percent,
                    "grad_clip": self.cfg.grad_clip,
                },
                recon_loss=self.cfg.recon_loss,
                recon_std_rescale=self.cfg.recon_std_rescale,
                n_view=self.cfg.n_view,
            )

        def __call__(
            self,
            rgb,
            prompt_utils,
            elevation,
            azimuth,
            camera_distances,
            c2w=None,
            rgb_as_latents: bool = False,
            fovy=None,
            timestep=None,
            text_embeddings=None,
            input_is_latent=False,
            guidance_eval: bool = False,
            **kwargs,
        ):
            """threestudio-mvdream's call; returns ``loss_sds``, the objective's loss and scalars.

            Raises:
                NotImplementedError: latents as input, a fixed ``timestep`` or given ``text_embeddings``
                    (the alignment objectives draw t and build the conditions themselves).
            """
            if rgb_as_latents or input_is_latent or timestep is not None or text_embeddings is not None:
                raise NotImplementedError(
                    "ddpo3d-mvdream-guidance takes RGB renders only (no rgb_as_latents / input_is_latent / "
                    "timestep / text_embeddings)"
                )
            if rgb.shape[0] % self.cfg.n_view:
                raise ValueError(
                    f"ddpo3d-mvdream-guidance: batch of {rgb.shape[0]} renders is not a multiple of "
                    f"n_view={self.cfg.n_view} (set data.batch_size to a multiple of data.n_view)"
                )
            return super().__call__(
                rgb, prompt_utils, elevation, azimuth, camera_distances, guidance_eval=guidance_eval, c2w=c2w,
                fovy=fovy, **kwargs,
            )  # fmt: skip

        def conditions(self, rgb, prompt_utils, elevation, azimuth, camera_distances, c2w=None, fovy=None, **batch):
            """Text embeddings plus MVDream's camera condition, as (cond, uncond) dicts."""
            cond_emb, uncond_emb = super().conditions(rgb, prompt_utils, elevation, azimuth, camera_distances)
            camera = None if c2w is None else self.get_camera_cond(c2w.clone(), fovy)  # MVDream writes in place
            return {"context": cond_emb, "camera": camera}, {"context": uncond_emb, "camera": camera}

        def model_input(self, rgb, rgb_as_latents):
            """The render resized to MVDream's ``image_size`` and encoded (the reward scores the render)."""
            size = (self.cfg.image_size, self.cfg.image_size)
            x = F.interpolate(rgb.permute(0, 3, 1, 2), size, mode="bilinear", align_corners=False)
            return self.encode_images(x), rgb

        def t_range(self):
            """None: MVDream needs one t per batch, which the objective's MVDream SDS draws from the same
            ``min_step_percent`` / ``max_step_percent`` schedule (the host's per-view range would not)."""
            return None

        def reward_prompts_for(self, prompt_utils, elevation, azimuth, camera_distances):
            """View-dependent reward prompts even when MVDream's text embeddings are not (as DreamReward)."""
            vd = self.cfg.reward_prompts == "view-dependent"
            return view_prompts(prompt_utils, elevation, azimuth, camera_distances, vd)

    return DDPO3DMVDreamGuidance


class LazyMVDreamGuidance(BaseObject):
    """Registered when threestudio-mvdream is not loaded yet (extensions load in folder order).

    Constructing it resolves ``mvdream-multiview-diffusion-guidance`` then and returns an instance
    of the subclass built over it, or raises an ``ImportError`` saying what to install.
    """

    @dataclass
    class Config:
        pass

    _built: Any = None

    def __new__(cls, *args, **kwargs):
        base = mvdream_base()
        if base is None:
            raise ImportError(
                "ddpo3d-mvdream-guidance needs the threestudio-mvdream extension "
                "(github.com/DSaurus/threestudio-mvdream in threestudio's custom/ folder) and the 'mvdream' package "
                "(pip install git+https://github.com/bytedance/MVDream) with its weights (sd-v2.1-base-4view); "
                f"{BASE_NAME!r} is not registered on this host"
            )
        if cls._built is None or cls._built.__mro__[2] is not base:
            cls._built = make_mvdream_guidance(base)
        return cls._built(*args, **kwargs)


_base = mvdream_base()
DDPO3DMVDreamGuidance = register("ddpo3d-mvdream-guidance")(
    make_mvdream_guidance(_base) if _base is not None else LazyMVDreamGuidance
)
