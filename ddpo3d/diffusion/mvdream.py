"""ε-prediction adapter over an MVDream model (Shi et al. 2023, "MVDream", arXiv 2308.16512).

MVDream's latent diffusion model (``mvdream.model_zoo.build_model``, an ldm ``LatentDiffusion``)
predicts ε for ``n_view`` views of one object jointly: its UNet attends across the views of each
group (``num_frames``) and is conditioned on each view's camera (the flattened, normalised 4x4
``c2w``). :class:`MVDreamPredictor` exposes it through :class:`~ddpo3d.diffusion.base.NoisePredictor`,
so SDS, DDPO3D, reward backprop and DreamFL run on it with the same code as on Stable Diffusion.

Contracts (threestudio-mvdream's ``MultiviewDiffusionGuidance``):

* one timestep per batch (all views of all objects share ``t``); a batch with several is an error;
* batches hold whole objects: ``B`` is a multiple of ``n_view``, views of an object consecutive;
* one model call evaluates both CFG halves, ordered (cond, uncond): ``x = cat([x_t, x_t])``,
  ``context = cat([cond, uncond])``, ``camera = cat([camera, camera])``;
* MVDream's CFG is ``ε_u + s (ε_c - ε_u)``; :func:`mvdream_to_threestudio_scale` converts ``s``
  to the ``ε_c + s' (ε_c - ε_u)`` form our objectives use (``s' = s - 1``).

The conditions are dicts ``{"context": [B, L, D] text embeddings, "camera": [B, 16] or None}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpo3d.diffusion.base import NoisePredictor
from ddpo3d.utils.typing import Any, Dict, Float, Int, Optional, Tensor, Tuple

__all__ = ["MVDreamPredictor", "normalize_camera", "mvdream_to_threestudio_scale"]


def mvdream_to_threestudio_scale(scale: float) -> float:
    """``s`` of MVDream's ``ε_u + s (ε_c - ε_u)`` as ``s'`` of threestudio's ``ε_c + s' (ε_c - ε_u)``."""
    return float(scale) - 1.0


def normalize_camera(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 16"]:
    """MVDream's ``camera_utils.normalize_camera``: the camera position scaled to unit length, flattened.

    Unlike MVDream's function this does not write into ``c2w``.
    """
    cam = c2w.reshape(-1, 4, 4).clone()
    t = cam[:, :3, 3]
    cam[:, :3, 3] = t / (t.norm(dim=1, keepdim=True) + 1e-8)
    return cam.reshape(-1, 16)


class MVDreamPredictor(NoisePredictor):
    """A :class:`NoisePredictor` over an MVDream-interface model.

    Args:
        model: has ``alphas_cumprod``, ``apply_model(x, t, {context, camera, num_frames})``,
            ``encode_first_stage``, ``get_first_stage_encoding``, ``decode_first_stage``.
        n_view: views per object (``num_frames``).
        image_size: resolution the renders are resized to before encoding (MVDream: 256).

    Attributes:
        last_pair: ``(eps_cond, eps_uncond)`` of the latest :meth:`predict_eps_pair` call (detached),
            for estimators that need the text-only ε̂ of the shared forward (MVDream's x̂0 rescale).
    """

    def __init__(self, model: Any, n_view: int = 4, image_size: int = 256):
        super().__init__(model.alphas_cumprod.detach().float().cpu())
        self.model = model  # not registered as a submodule: the guidance owns it
        self.n_view = int(n_view)
        self.image_size = int(image_size)
        self.last_pair: Optional[Tuple[Tensor, Optional[Tensor]]] = None
        self.to(model.alphas_cumprod.device)

    def encode(self, images: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 4 h w"]:
        """Renders -> latents: bilinear resize to ``image_size``, ``2x - 1``, first-stage encoding (differentiable)."""
        x = F.interpolate(
            images.permute(0, 3, 1, 2), (self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        return self.model.get_first_stage_encoding(self.model.encode_first_stage(x * 2.0 - 1.0))

    def decode(self, x0: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B H W 3"]:
        """Latents -> images in [0, 1] (``decode_first_stage``, ``x/2 + 1/2``, clamped)."""
        img = self.model.decode_first_stage(x0.to(self.model.alphas_cumprod.dtype))
        return (img.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    def check_batch(self, x_t: Tensor, t: Tensor) -> None:
        """Raise ``ValueError`` unless ``B % n_view == 0`` and ``t`` is one value for the batch."""
        B = x_t.shape[0]
        if B % self.n_view:
            raise ValueError(
                f"MVDream evaluates objects of n_view={self.n_view} views (consecutive in the batch), got a batch of "
                f"{B}; use a batch_size that is a multiple of n_view"
            )
        t = torch.as_tensor(t).reshape(-1)
        if t.numel() > 1 and bool((t != t[0]).any()):
            raise ValueError(f"MVDream needs one timestep per batch, got several: {sorted(set(t.tolist()))}")

    def predict_eps_pair(
        self,
        x_t: Float[Tensor, "B 4 h w"],
        t: Int[Tensor, " B"],
        cond: Dict[str, Any],
        uncond: Optional[Dict[str, Any]] = None,
    ) -> Tuple[Float[Tensor, "B 4 h w"], Optional[Float[Tensor, "B 4 h w"]]]:
        """One ``apply_model`` call on ``[x_t; x_t]`` with contexts (cond, uncond) and cameras repeated."""
        self.check_batch(x_t, t)
        B = x_t.shape[0]
        halves = 1 if uncond is None else 2
        context = cond["context"] if uncond is None else torch.cat([cond["context"], uncond["context"]])
        x = x_t if uncond is None else torch.cat([x_t, x_t])
        t_model = torch.as_tensor(t, device=x_t.device).reshape(-1)[:1].repeat(B * halves)
        extra: Dict[str, Any] = {"context": context}
        camera = cond.get("camera")
        if camera is not None:
            extra["camera"] = camera.repeat(halves, 1).to(context)
            extra["num_frames"] = self.n_view
        out = self.model.apply_model(x.to(context.dtype), t_model, extra).to(x_t.dtype)
        eps_c, eps_u = (out, None) if uncond is None else out.chunk(2)
        self.last_pair = (eps_c.detach(), None if eps_u is None else eps_u.detach())
        return eps_c, eps_u
