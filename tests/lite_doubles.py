"""Test doubles for the runtime's system tests: tiny registered geometry / material /
background / renderer / prompt processor / guidance, so the system, trainer and launcher
can be exercised without the real models (and fast, at 16x16).

Registered under ``test-*`` names, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpo3d import lite
from ddpo3d.lite.utils.base import BaseModule, BaseObject


def _register(name):
    def deco(cls):
        if name not in lite.__modules__:
            lite.register(name)(cls)
        return lite.__modules__[name]

    return deco


@_register("test-sphere-geometry")
class SphereGeometry(BaseModule):
    """Density ``scale * (radius - |x|)``, a learnable radius and colour; threestudio's
    ``forward_field`` / ``forward_level`` / ``export`` names."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        sphere_radius: float = 0.5
        isosurface_resolution: int = 24
        isosurface_threshold: float = 0.0

    def configure(self) -> None:
        r = self.cfg.radius
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
        self.sphere_radius = nn.Parameter(torch.tensor(self.cfg.sphere_radius))
        self.color = nn.Parameter(torch.zeros(3))
        self.view_weight = nn.Parameter(torch.zeros(3, 3))
        self.steps_seen = []

    def forward_field(self, points):
        return (10.0 * (self.sphere_radius - points.norm(dim=-1, keepdim=True))), None

    def forward_level(self, field, threshold):
        return -(field - threshold)

    def export(self, points, **kwargs):
        return {"features": torch.sigmoid(self.color).expand(points.shape[0], 3)}

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.steps_seen.append(global_step)


@_register("test-plain-material")
class PlainMaterial(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    def export(self, points, features=None, **kwargs):
        return {"albedo": features}


@_register("test-solid-background")
class SolidBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        color: tuple = (1.0, 1.0, 1.0)

    def configure(self) -> None:
        self.env_color = nn.Parameter(torch.tensor(list(self.cfg.color), dtype=torch.float32))

    def forward(self, dirs):
        return self.env_color.expand(*dirs.shape[:-1], 3)


@_register("test-analytic-renderer")
class AnalyticRenderer(BaseModule):
    """Opacity from the ray's closest approach to the sphere, colour from the geometry's
    colour and view direction; per-sample outputs (``weights``, ``normal``, ``t_dirs``) are
    one sample per ray at the closest point."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        with_normals: bool = True

    def configure(self, geometry, material, background) -> None:
        self._subs = {"geometry": geometry, "material": material, "background": background}

    def forward(self, rays_o, rays_d, light_positions=None, bg_color=None, **kwargs):
        geo, bg = self._subs["geometry"], self._subs["background"]
        b, h, w, _ = rays_o.shape
        t = -(rays_o * rays_d).sum(-1, keepdim=True)
        closest = rays_o + t * rays_d
        dist = closest.norm(dim=-1, keepdim=True)
        opacity = torch.sigmoid(20.0 * (geo.sphere_radius - dist))
        fg = torch.sigmoid(geo.color + rays_d @ geo.view_weight)
        comp_rgb = fg * opacity + bg(rays_d) * (1 - opacity)
        out = {"comp_rgb": comp_rgb, "opacity": opacity, "depth": t}
        if self.cfg.with_normals:
            normal = F.normalize(closest, dim=-1)
            out.update(
                {
                    "weights": opacity.reshape(-1, 1),
                    "normal": normal.reshape(-1, 3),
                    "t_dirs": rays_d.reshape(-1, 3),
                    "comp_normal": (normal * 0.5 + 0.5) * opacity,
                }
            )
        return out


@_register("test-prompt-processor")
class PromptProcessor(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "a sphere"
        pretrained_model_name_or_path: str = ""  # accepted so stock configs can swap this double in

    def __call__(self):
        return {"prompt": self.cfg.prompt}


@_register("test-mse-guidance")
class MSEGuidance(BaseObject):
    """``loss_sds``: MSE to a target colour; extra ``loss_extra`` when asked; raises
    ``KeyboardInterrupt`` at ``interrupt_at_step`` (>= 0) to test Ctrl-C handling. For the
    training guard: a NaN loss at the steps in ``nan_loss_steps``, a finite loss with a NaN
    gradient at ``nan_grad_steps``, ``ValueError`` at ``raise_at_step``."""

    @dataclass
    class Config(BaseObject.Config):
        target: tuple = (1.0, 0.0, 0.0)
        return_extra_loss: bool = False
        interrupt_at_step: int = -1
        nan_loss_steps: tuple = ()
        nan_grad_steps: tuple = ()
        raise_at_step: int = -1
        guidance_scale: float = 1.0
        # accepted so stock configs can swap this double in
        pretrained_model_name_or_path: str = ""
        weighting_strategy: str = "sds"
        min_step_percent: float = 0.02
        max_step_percent: float = 0.98

    def configure(self) -> None:
        self.global_step = 0
        self.calls = 0
        self.shapes = []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.global_step = global_step

    def __call__(
        self, rgb, prompt_utils, elevation=None, azimuth=None, camera_distances=None, rgb_as_latents=False, **kwargs
    ):
        if self.cfg.interrupt_at_step >= 0 and self.global_step >= self.cfg.interrupt_at_step:
            raise KeyboardInterrupt
        self.calls += 1
        self.shapes.append(tuple(rgb.shape))
        target = torch.tensor(list(self.cfg.target), dtype=rgb.dtype)
        out = {
            "loss_sds": ((rgb - target) ** 2).mean(),
            "grad_norm": torch.tensor(1.0),
            "prompt_len": len(prompt_utils["prompt"]),
        }
        if self.cfg.return_extra_loss:
            out["loss_extra"] = rgb.mean()
        if self.global_step == self.cfg.raise_at_step:
            raise ValueError("test guidance failed on purpose")
        if self.global_step in tuple(self.cfg.nan_loss_steps):
            out["loss_sds"] = out["loss_sds"] * float("nan")
        if self.global_step in tuple(self.cfg.nan_grad_steps):
            # value 0, gradient NaN: d sqrt(|x|)/dx at x = 0
            out["loss_sds"] = out["loss_sds"] + (rgb - rgb.detach()).abs().sqrt().mean()
        return out


def system_config(**overrides):
    """A ``dreamfusion-system`` block over the doubles."""
    cfg = {
        "geometry_type": "test-sphere-geometry",
        "geometry": {},
        "material_type": "test-plain-material",
        "background_type": "test-solid-background",
        "renderer_type": "test-analytic-renderer",
        "renderer": {},
        "prompt_processor_type": "test-prompt-processor",
        "prompt_processor": {"prompt": "a red ball"},
        "guidance_type": "test-mse-guidance",
        "guidance": {},
        "loss": {"lambda_sds": 1.0, "lambda_orient": [0, 0.0, 1.0, 3], "lambda_sparsity": 0.1, "lambda_opaque": 0.0},
        "optimizer": {
            "name": "Adam",
            "args": {"lr": 0.05, "betas": [0.9, 0.99], "eps": 1e-15},
            "params": {"geometry": {"lr": 0.05}, "background": {"lr": 0.01}},
        },
    }
    cfg.update(overrides)
    return cfg


def experiment_yaml(root: str, max_steps: int = 3, **system_overrides) -> str:
    """YAML text of a tiny experiment over the doubles, outputs under ``root``."""
    from omegaconf import OmegaConf

    cfg = {
        "name": "tiny",
        "tag": "${rmspace:${system.prompt_processor.prompt},_}",
        "exp_root_dir": root,
        "use_timestamp": False,
        "seed": 0,
        "data_type": "random-camera-datamodule",
        "data": {
            "batch_size": 1,
            "width": 16,
            "height": 16,
            "eval_width": 16,
            "eval_height": 16,
            "n_val_views": 2,
            "n_test_views": 3,
            "camera_distance_range": [1.5, 2.0],
            "eval_camera_distance": 2.0,
        },
        # ddpo3d-system's one extra key (threestudio's dreamfusion-system has no such field)
        "system_type": "test-guarded-system" if "max_consecutive_skips" in system_overrides else "dreamfusion-system",
        "system": system_config(**system_overrides),
        "trainer": {
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "val_check_interval": 2,
            "enable_progress_bar": False,
            "precision": "16-mixed",
        },
        "checkpoint": {"save_last": True, "save_top_k": -1, "every_n_train_steps": max_steps},
    }
    return OmegaConf.to_yaml(OmegaConf.create(cfg))


def _guarded_system():
    from dataclasses import dataclass

    from ddpo3d.lite.systems.dreamfusion import DreamFusion

    @_register("test-guarded-system")
    class GuardedSystem(DreamFusion):
        """lite's dreamfusion-system plus ddpo3d-system's ``max_consecutive_skips`` key."""

        @dataclass
        class Config(DreamFusion.Config):
            max_consecutive_skips: int = 5

    return GuardedSystem


_guarded_system()
