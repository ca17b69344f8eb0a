"""``ddpo3d-toy-guidance``: SDS + alignment against the exact prior of the toy world.

For a prompt naming a toy object ("a red sphere", see :mod:`ddpo3d.toy`), the prior's data
distribution for a camera is a Gaussian (std ``sigma_data``) around that object's render
from the camera. Its ε̂ is exact (:class:`ddpo3d.diffusion.AnalyticGaussianPrior`), so SDS
rebuilds the object and any reward's effect is measured against a known ground truth. The
unconditional model for CFG is the equal mixture over ``uncond_prompts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddpo3d.diffusion.analytic import AnalyticGaussianPrior
from ddpo3d.host import BaseObject, register
from ddpo3d.objectives.sds import SDSConfig
from ddpo3d.toy import parse_toy_prompt, render_toy_object
from ddpo3d.utils.typing import Any, Float, List, Optional, Tensor, Tuple

from .alignment import AlignmentConfig, RewardAlignmentMixin


@register("ddpo3d-toy-guidance")
class ToyGuidance(RewardAlignmentMixin, BaseObject):
    """Analytic-prior guidance for the toy world (no weights, CPU friendly)."""

    @dataclass
    class Config(SDSConfig, AlignmentConfig):
        sigma_data: float = 0.05  # std of the prior around the object's render (x0 = 2·rgb - 1 units)
        background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # reference background RGB
        reference_samples: int = 96  # samples per ray of the reference render
        # the unconditional mixture used when guidance_scale > 0
        uncond_prompts: List[str] = field(
            default_factory=lambda: ["a red sphere", "a blue cube", "a green torus", "a yellow cone"]
        )
        view_dependent_prompting: bool = False  # the toy world has no view-dependent phrasing

    cfg: Config

    def configure(self) -> None:
        self.predictor = AnalyticGaussianPrior(sigma_data=self.cfg.sigma_data).to(self.device)
        self.uncond_objects = [parse_toy_prompt(p) for p in self.cfg.uncond_prompts]
        self.configure_alignment()

    def reference(self, prompt: str, rays_o: Tensor, rays_d: Tensor) -> Float[Tensor, "B H W 3"]:
        """The toy object's render from the batch cameras (the prior's mean, in [0, 1])."""
        rgb, _ = render_toy_object(
            parse_toy_prompt(prompt), rays_o, rays_d, tuple(self.cfg.background), self.cfg.reference_samples
        )
        return rgb

    def conditions(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: Any,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
        rays_o: Optional[Tensor] = None,
        rays_d: Optional[Tensor] = None,
        **batch: Any,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """The prior's component means from the batch's cameras (systems pass ``**batch``):
        ``cond`` the named object's render, ``uncond`` (when ``guidance_scale != 0``) the
        ``uncond_prompts`` objects' renders."""
        if rays_o is None or rays_d is None:
            raise ValueError("ddpo3d-toy-guidance needs the camera batch's rays_o and rays_d (pass **batch)")
        if tuple(rays_o.shape[1:3]) != tuple(rgb.shape[1:3]):
            raise ValueError(f"rays {tuple(rays_o.shape)} do not match the render {tuple(rgb.shape)}")
        with torch.no_grad():
            cond = self.predictor.encode(self.reference(str(prompt_utils.prompt), rays_o, rays_d))[:, None]
            uncond = None
            if self.cfg.guidance_scale != 0:
                refs = [
                    render_toy_object(o, rays_o, rays_d, tuple(self.cfg.background), self.cfg.reference_samples)[0]
                    for o in self.uncond_objects
                ]
                uncond = torch.stack([self.predictor.encode(r) for r in refs], 1)
        return cond, uncond

    def t_range(self) -> None:
        """No host guidance: the objective's own schedule of ``min_step_percent`` /
        ``max_step_percent`` is the only one."""
        return None
