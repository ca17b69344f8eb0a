"""``mvdream-multiview-diffusion-guidance``: threestudio-mvdream's guidance on the built-in runtime.

Same name, config keys, attributes and loss as ``MultiviewDiffusionGuidance`` of the
``DSaurus/threestudio-mvdream`` extension (``guidance/mvdream_guidance.py``): MVDream's model from
``mvdream.model_zoo.build_model(model_name, ckpt_path)``, a camera condition from the normalised
``c2w``, one timestep per batch, CFG ``ε_u + s (ε_c - ε_u)`` from one model call with halves
(cond, uncond), and the x0-reconstruction loss with ``recon_std_rescale`` (or plain SDS).

Differences, all on the CPU side: ``mvdream`` is imported when the model is built, with an
error naming the package and its weights when it is missing; ``model_name: ddpo3d-tiny-mvdream``
builds the seeded CPU twin once tests register it (:mod:`ddpo3d.testing.tiny_mvdream`); the camera is
normalised on a copy (MVDream's ``normalize_camera`` writes into the batch's ``c2w``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpo3d.diffusion.mvdream import MVDreamPredictor, mvdream_to_threestudio_scale, normalize_camera
from ddpo3d.lite import info, register
from ddpo3d.lite.utils.base import BaseObject
from ddpo3d.lite.utils.misc import C
from ddpo3d.objectives.mvdream_sds import MVDreamSDS
from ddpo3d.utils.typing import Any, Callable, Dict, Float, Optional, Tensor

MVDREAM_HELP = (
    "MVDream is not installed: pip install git+https://github.com/bytedance/MVDream (package 'mvdream'); "
    "its weights (e.g. sd-v2.1-base-4view.pt from the Hugging Face repo MVDream/MVDream) are downloaded by "
    "mvdream.model_zoo.build_model or given with guidance.ckpt_path. For a CPU test run use "
    "model_name: ddpo3d-tiny-mvdream"
)


#: model builders by ``model_name`` (``builder(context_dim=...) -> model``); tests and benchmarks
#: register their CPU twin here (``ddpo3d.testing.tiny_mvdream.register_tiny_mvdream``)
MODEL_BUILDERS: Dict[str, Callable[..., Any]] = {}


def register_mvdream_model(name: str, builder: Callable[..., Any]) -> None:
    """Make ``guidance.model_name: <name>`` build its model with ``builder(context_dim=...)``."""
    MODEL_BUILDERS[str(name)] = builder


def build_mvdream_model(model_name: str, ckpt_path: Optional[str], context_dim: int = 32) -> Any:
    """A registered model (the CPU twin) or MVDream's own (``mvdream.model_zoo.build_model``)."""
    if model_name in MODEL_BUILDERS:
        return MODEL_BUILDERS[model_name](context_dim=context_dim)
    try:
        from mvdream.model_zoo import build_model
    except ImportError as exc:
        raise ImportError(f"guidance.model_name={model_name!r}: {MVDREAM_HELP}") from exc
    return build_model(model_name, ckpt_path=ckpt_path)


@register("mvdream-multiview-diffusion-guidance")
class MultiviewDiffusionGuidance(BaseObject):
    """threestudio-mvdream's multi-view SDS guidance (see the module docstring)."""

    @dataclass
    class Config(BaseObject.Config):
        model_name: str = "sd-v2.1-base-4view"  # mvdream.model_zoo.PRETRAINED_MODELS, or ddpo3d-tiny-mvdream
        ckpt_path: Optional[str] = None  # local checkpoint (None: MVDream downloads it)
        guidance_scale: float = 50.0  # s in ε_u + s (ε_c - ε_u)
        grad_clip: Optional[Any] = None  # clamp of the SDS gradient (plain SDS only), schedulable
        half_precision_weights: bool = True  # kept for config compatibility (MVDream loads its own dtype)
        min_step_percent: Any = 0.02  # lower end of t, fraction of T (schedulable)
        max_step_percent: Any = 0.98  # upper end of t, fraction of T (schedulable)
        camera_condition_type: str = "rotation"  # only "rotation": the normalised c2w, flattened
        view_dependent_prompting: bool = False  # view-dependent text embeddings
        n_view: int = 4  # views per object
        image_size: int = 256  # renders are resized to this before encoding
        recon_loss: bool = True  # x0-reconstruction loss (MVDream Sec. 3.2) instead of SDS
        recon_std_rescale: float = 0.5  # blend of x̂0 rescaled to the text-only estimate's std
        context_dim: int = 32  # text width of the CPU twin (ddpo3d-tiny-mvdream only)

    cfg: Config

    def configure(self) -> None:
        info("Loading Multiview Diffusion ...")
        self.model = build_mvdream_model(self.cfg.model_name, self.cfg.ckpt_path, self.cfg.context_dim)
        self.model = self.model.to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.num_train_timesteps = 1000
        self.min_step = int(self.num_train_timesteps * C(self.cfg.min_step_percent, 0, 0))
        self.max_step = int(self.num_train_timesteps * C(self.cfg.max_step_percent, 0, 0))
        self.grad_clip_val: Optional[float] = None
        self._mv_predictor = MVDreamPredictor(self.model, self.cfg.n_view, self.cfg.image_size)
        self._mv_sds = MVDreamSDS(
            {
                "guidance_scale": mvdream_to_threestudio_scale(self.cfg.guidance_scale),
                "min_step_percent": self.cfg.min_step_percent,
                "max_step_percent": self.cfg.max_step_percent,
                "grad_clip": self.cfg.grad_clip,
            },
            self.cfg.recon_loss,
            self.cfg.recon_std_rescale,
            self.cfg.n_view,
        )
        info("Loaded Multiview Diffusion!")

    def get_camera_cond(self, camera: Float[Tensor, "B 4 4"], fovy=None) -> Float[Tensor, "B 16"]:
        """The camera condition (``rotation``: position normalised to the unit sphere, flattened)."""
        if self.cfg.camera_condition_type == "rotation":
            return normalize_camera(camera)
        raise NotImplementedError(f"Unknown camera_condition_type={self.cfg.camera_condition_type}")

    def encode_images(self, imgs: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 4 h w"]:
        """Images in [0, 1] (already at ``image_size``) -> latents."""
        return self.model.get_first_stage_encoding(self.model.encode_first_stage(imgs * 2.0 - 1.0))

    def __call__(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: Any,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
        c2w: Float[Tensor, "B 4 4"],
        rgb_as_latents: bool = False,
        fovy=None,
        timestep=None,
        text_embeddings=None,
        input_is_latent=False,
        **kwargs,
    ):
        """``{"loss_sds", "grad_norm"}`` as threestudio-mvdream returns them."""
        if text_embeddings is None:
            text_embeddings = prompt_utils.get_text_embeddings(
                elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
            )
        if input_is_latent:
            latents = rgb
        elif rgb_as_latents:
            latents = F.interpolate(rgb.permute(0, 3, 1, 2), (64, 64), mode="bilinear", align_corners=False) * 2 - 1
        else:
            x = rgb.permute(0, 3, 1, 2)
            x = F.interpolate(x, (self.cfg.image_size, self.cfg.image_size), mode="bilinear", align_corners=False)
            latents = self.encode_images(x)
        cond_emb, uncond_emb = text_embeddings.chunk(2)
        camera = None if c2w is None else self.get_camera_cond(c2w.clone(), fovy)
        cond = {"context": cond_emb, "camera": camera}
        uncond = {"context": uncond_emb, "camera": camera}
        sds = self._mv_sds
        sds.min_step_percent = self.min_step / self.num_train_timesteps
        sds.max_step_percent = self.max_step / self.num_train_timesteps
        sds.grad_clip_val = self.grad_clip_val
        B = latents.shape[0]
        if timestep is None:
            t = sds.sample_timesteps(B, latents.device)
        else:
            if not 0 <= timestep < self.num_train_timesteps:
                raise ValueError(f"timestep must lie in [0, {self.num_train_timesteps}), got {timestep}")
            t = torch.full([B], timestep, dtype=torch.long, device=latents.device)
        noise = torch.randn_like(latents)
        x_t = self._mv_predictor.add_noise(latents.detach(), noise, t)
        with torch.no_grad():
            eps_c, eps_u = self._mv_predictor.predict_eps_pair(x_t, t, cond, uncond)
        eps = eps_u + self.cfg.guidance_scale * (eps_c - eps_u)
        out = sds(latents, self._mv_predictor, cond, uncond, t=t, noise=noise, eps_pred=eps)
        return {"loss_sds": out.loss_sds, "grad_norm": out.grad.norm()}

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.min_step = int(self.num_train_timesteps * C(self.cfg.min_step_percent, epoch, global_step))
        self.max_step = int(self.num_train_timesteps * C(self.cfg.max_step_percent, epoch, global_step))
