"""Procedural toy objects ("a red sphere", "a blue cube", ...) and their exact renders.

Each object is a signed distance function (SDF) with a flat albedo. Its density is a
sharp sigmoid of the SDF, so it can be rendered with the same emission-absorption volume
rendering a NeRF uses (Max 1995; Mildenhall et al. 2020, eq. 3), from any camera batch of
threestudio's random-camera datamodule (``rays_o``, ``rays_d``). World axes follow
threestudio: ``z`` is up, cameras orbit the origin.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from ddpo3d.utils.typing import Callable, Float, Tensor, Tuple

COLORS = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.15, 0.70, 0.25),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.92, 0.82, 0.15),
    "orange": (0.95, 0.55, 0.10),
    "purple": (0.55, 0.20, 0.70),
    "white": (0.92, 0.92, 0.92),
    "black": (0.08, 0.08, 0.08),
}


def _sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 0.5


def _cube(p: Tensor) -> Tensor:
    # exact box SDF (Quilez), half extent 0.4
    q = p.abs() - 0.4
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


def _torus(p: Tensor) -> Tensor:
    # ring in the xy plane (z up): major radius 0.45, tube radius 0.18
    ring = torch.stack([p[..., :2].norm(dim=-1) - 0.45, p[..., 2]], dim=-1)
    return ring.norm(dim=-1) - 0.18


def _cone(p: Tensor) -> Tensor:
    # upright cone, base radius 0.45 at z=-0.4, apex at z=0.45 (bound, not exact, SDF)
    h, r = 0.85, 0.45
    z = p[..., 2] + 0.4
    radial = p[..., :2].norm(dim=-1)
    side = (radial * h - (h - z) * r) / (h**2 + r**2) ** 0.5
    return torch.maximum(torch.maximum(side, -z), z - h)


SHAPES: dict = {"sphere": _sphere, "cube": _cube, "torus": _torus, "cone": _cone}


@dataclass(frozen=True)
class ToyObject:
    """A procedural object: a shape SDF with a flat colour."""

    shape: str
    color_name: str

    @property
    def color(self) -> Tuple[float, float, float]:
        return COLORS[self.color_name]

    @property
    def sdf(self) -> Callable[[Tensor], Tensor]:
        return SHAPES[self.shape]

    @property
    def prompt(self) -> str:
        return f"a {self.color_name} {self.shape}"

    def density(
        self, points: Float[Tensor, "... 3"], scale: float = 200.0, sharpness: float = 0.01
    ) -> Float[Tensor, "..."]:
        """Volume density: ``scale * sigmoid(-sdf / sharpness)``."""
        return scale * torch.sigmoid(-self.sdf(points) / sharpness)


def parse_toy_prompt(prompt: str) -> ToyObject:
    """Find the colour and shape words in a prompt ("a red sphere" -> red sphere).

    Raises:
        ValueError: naming the prompt and listing the known colours and shapes.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    shape = next((w for w in words if w in SHAPES), None)
    color = next((w for w in words if w in COLORS), None)
    if shape is None or color is None:
        missing = "shape" if shape is None else "colour"
        close = difflib.get_close_matches(words[-1] if words else "", list(SHAPES) + list(COLORS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Toy prompt {prompt!r} names no known {missing}.{hint} Known colours: "
            f"{', '.join(COLORS)}; known shapes: {', '.join(SHAPES)} (e.g. 'a red sphere')."
        )
    return ToyObject(shape=shape, color_name=color)


@torch.no_grad()
def render_toy_object(
    obj: ToyObject,
    rays_o: Float[Tensor, "B H W 3"],
    rays_d: Float[Tensor, "B H W 3"],
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0),
    num_samples: int = 128,
    radius: float = 1.0,
) -> Tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 1"]]:
    """Render an object with emission-absorption volume rendering (deterministic midpoints).

    Rays are sampled between their entry and exit of the sphere of ``radius``; the colour
    is the object's flat albedo composited over a solid background.

    Args:
        obj: the object.
        rays_o: ray origins (threestudio's ``rays_o``).
        rays_d: unit ray directions (threestudio's ``rays_d``).
        background: RGB of the background in [0, 1].
        num_samples: samples per ray.
        radius: radius of the bounding sphere that holds the object.

    Returns:
        ``(rgb, opacity)``: images in [0, 1] and accumulated opacity.
    """
    d = torch.nn.functional.normalize(rays_d, dim=-1)
    # ray-sphere intersection |o + t d| = radius
    b = (rays_o * d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius**2
    disc = (b * b - c).clamp_min(0.0)
    t_near = (-b - disc.sqrt()).clamp_min(0.0)
    t_far = (-b + disc.sqrt()).clamp_min(0.0)
    frac = (torch.arange(num_samples, device=d.device, dtype=d.dtype) + 0.5) / num_samples
    t = t_near[..., None] + (t_far - t_near)[..., None] * frac  # [B,H,W,N]
    delta = ((t_far - t_near) / num_samples)[..., None].expand_as(t)
    points = rays_o[..., None, :] + d[..., None, :] * t[..., None]
    sigma = obj.density(points)
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * trans
    opacity = weights.sum(-1, keepdim=True)
    color = torch.tensor(obj.color, device=d.device, dtype=d.dtype)
    bg = torch.tensor(background, device=d.device, dtype=d.dtype)
    rgb = opacity * color + (1.0 - opacity) * bg
    return rgb, opacity
