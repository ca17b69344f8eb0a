"""``ddpo3d-gaussian-splat``: a set of 3D Gaussians (Kerbl et al. 2023) as threestudio geometry.

Parameters (``nn.Parameter``, gsplat's names), N rows each:

* ``means [N, 3]`` centres; ``scales [N, 3]`` log standard deviations; ``quats [N, 4]``
  rotations ``(w, x, y, z)`` (normalised when read); ``opacities [N]`` logits;
  ``sh0 [N, 1, 3]`` degree-0 SH; ``shN [N, (d+1)^2 - 1, 3]`` higher SH (absent for d = 0).

Training (3DGS's loop, see :mod:`ddpo3d.gaussians.strategy`)::

    groups = geometry.optimizer_param_groups({"eps": 1e-15})   # per-attribute lrs
    optimizer = torch.optim.Adam(groups + other_groups)
    geometry.bind_optimizer(optimizer)      # lr decay in update_step, default optimizer
    ...                                      # each step:
    out = renderer(**batch)                  # training mode: hands its view-space info to the geometry
    loss.backward()
    geometry.step_post_backward()            # densification statistics
    optimizer.step(); optimizer.zero_grad()
    geometry.step_post_optimizer(optimizer, global_step)   # densify / prune / reset on its schedule

Under Lightning the geometry's own callback (:meth:`GaussianSplatGeometry.training_callbacks`,
:class:`~.densification.GaussianDensification`) makes these calls; a system only returns the
geometry's callbacks from ``configure_callbacks``.

``update_step`` (called by threestudio's systems every step) raises the active SH degree
and, with a bound optimizer, sets the position learning rate (3DGS exponential decay).
Densification rewrites the parameters; the Adam moments of surviving rows are kept and
new rows start at zero, so the optimizer stays consistent.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpo3d.gaussians.densify import knn_mean_sq_dist
from ddpo3d.gaussians.ply import load_gaussians_ply, save_gaussians_ply
from ddpo3d.gaussians.sh import num_sh_bases, rgb_to_sh0
from ddpo3d.gaussians.strategy import DensifyStrategy
from ddpo3d.host import BaseGeometry, info, register, warn
from ddpo3d.utils.typing import Any, Dict, Float, List, Optional, Tensor, Tuple

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def expon_lr(
    step: int, lr_init: float, lr_final: float, max_steps: int, delay_steps: int = 0, delay_mult: float = 1.0
) -> float:
    """3DGS's ``get_expon_lr_func``: log-linear from ``lr_init`` to ``lr_final`` over
    ``max_steps``, optionally scaled by a sine warm-up ``delay_mult -> 1`` over ``delay_steps``
    (Kerbl et al. 2023 reference code, adapted from Plenoxels)."""
    if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
        return 0.0
    if delay_steps > 0:
        delay = delay_mult + (1 - delay_mult) * math.sin(0.5 * math.pi * min(max(step / delay_steps, 0.0), 1.0))
    else:
        delay = 1.0
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return delay * math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


@register("ddpo3d-gaussian-splat")
class GaussianSplatGeometry(BaseGeometry):
    """3D Gaussians with SH colours, DreamGaussian/3DGS-style densification and pruning."""

    @dataclass
    class Config(BaseGeometry.Config):
        # --- representation
        sh_degree: int = 0  # maximum SH degree 0..3 (DreamGaussian uses 0)
        sh_degree_increase_interval: int = 0  # steps per +1 active degree (3DGS: 1000); 0 = max at once
        # --- initialisation
        init: str = "sphere"  # "sphere" (uniform in a ball) | "ellipsoid" (shell: shape prior)
        #                       | "mesh:<path>" (surface samples, trimesh) | "ply:<path>" (3DGS PLY)
        num_points: int = 5000  # initial number of Gaussians (sphere / ellipsoid / mesh)
        init_radius: float = 0.5  # ball radius for "sphere"; default ellipsoid radius
        init_shape_radii: Optional[Tuple[float, float, float]] = None  # ellipsoid semi-axes
        init_shell_thickness: float = 0.1  # ellipsoid shell, fraction of the radius inwards
        init_mesh_scale: float = 1.0  # "mesh:": scale after centring to the unit bounding sphere
        init_color: Optional[Tuple[float, float, float]] = (0.5, 0.5, 0.5)  # None: random colours
        init_opacity: float = 0.1  # initial opacity (activated)
        init_scale: Optional[float] = None  # initial std (world units); None: sqrt of mean sq. 3-NN distance
        # --- learning rates (3DGS defaults); position lr decays exponentially
        position_lr_init: float = 0.00016
        position_lr_final: float = 0.0000016
        position_lr_delay_mult: float = 0.01
        position_lr_delay_steps: int = 0
        position_lr_max_steps: int = 30000
        spatial_lr_scale: float = 1.0  # multiplies the position lr (3DGS: camera extent)
        scale_lr: float = 0.005
        rotation_lr: float = 0.001
        opacity_lr: float = 0.05
        feature_lr: float = 0.0025
        feature_rest_lr_factor: float = 0.05  # shN lr = feature_lr * this (3DGS: 1/20)
        # --- adaptive density control (3DGS Sec. 5.2)
        densify_from_iter: int = 100  # densify when step > this ...
        densify_until_iter: int = 3000  # ... and step < this (statistics gathered before it)
        densification_interval: int = 100  # every this many steps
        densify_grad_threshold: float = 0.0002  # mean view-space (NDC) positional grad norm
        percent_dense: float = 0.01  # clone if max scale <= percent_dense * scene_extent, else split
        scene_extent: float = 1.0  # world size the percentages refer to
        split_num: int = 2  # children per split Gaussian
        opacity_reset_interval: int = 0  # 0 = never; else opacities -> min(o, opacity_reset_value)
        opacity_reset_value: float = 0.01
        prune_opacity_threshold: float = 0.005  # prune if opacity < this
        max_scale: Optional[float] = None  # prune if max std > max_scale * scene_extent (3DGS: 0.1)
        max_screen_size: Optional[float] = None  # prune if max 2D radius (px) > this (3DGS: 20)
        max_num_points: int = 0  # cap on N for densification (0: no cap); highest grads first

    cfg: Config

    # ------------------------------------------------------------------ construction
    def configure(self) -> None:
        if self.cfg.sh_degree not in (0, 1, 2, 3):
            raise ValueError(f"ddpo3d-gaussian-splat: sh_degree must be 0..3, got {self.cfg.sh_degree}")
        if self.cfg.split_num < 2:
            raise ValueError(f"ddpo3d-gaussian-splat: split_num must be >= 2, got {self.cfg.split_num}")
        data = self._initial_gaussians()
        self._set_params(data)
        self.active_sh_degree = 0 if self.cfg.sh_degree_increase_interval > 0 else self.cfg.sh_degree
        self.position_lr = self._position_lr_at(0)
        self._optimizer_ref = None
        c = self.cfg
        self.strategy = DensifyStrategy(
            **{k: getattr(c, k) for k in DensifyStrategy.__dataclass_fields__}  # the config's densify keys
        )
        self.strategy_state = self.strategy.initialize_state(self.num_points, self.means.device)
        self._render_info: Optional[Dict[str, Any]] = None

    def _initial_gaussians(self) -> Dict[str, Tensor]:
        cfg = self.cfg
        init = cfg.init
        if init.startswith("ply:"):
            return self._from_ply(init[4:])
        n = cfg.num_points
        if n < 1:
            raise ValueError(f"ddpo3d-gaussian-splat: num_points must be >= 1, got {n}")
        if init == "sphere":
            # uniform in a ball: direction ~ N(0, I) normalised, radius ~ R u^(1/3)
            d = F.normalize(torch.randn(n, 3), dim=-1)
            means = d * cfg.init_radius * torch.rand(n, 1).pow(1.0 / 3.0)
        elif init == "ellipsoid":
            radii = torch.tensor(cfg.init_shape_radii if cfg.init_shape_radii is not None else (cfg.init_radius,) * 3)
            d = F.normalize(torch.randn(n, 3), dim=-1)
            means = d * radii * (1.0 - cfg.init_shell_thickness * torch.rand(n, 1))
        elif init.startswith("mesh:"):
            means = self._sample_mesh(init[5:], n)
        else:
            raise ValueError(
                f"ddpo3d-gaussian-splat: unknown init {init!r}; use 'sphere', 'ellipsoid', 'mesh:<path>' or 'ply:<path>'"
            )
        if cfg.init_scale is not None:
            scales = torch.full((n, 3), float(cfg.init_scale))
        else:
            scales = knn_mean_sq_dist(means, k=3).clamp_min(1e-7).sqrt()[:, None].repeat(1, 3)
        rgb = torch.rand(n, 3) if cfg.init_color is None else torch.tensor(cfg.init_color).expand(n, 3)
        K = num_sh_bases(cfg.sh_degree)
        opacity = torch.full((n,), float(cfg.init_opacity)).clamp(1e-6, 1 - 1e-6)
        return {
            "means": means,
            "scales": scales.log(),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
            "opacities": torch.logit(opacity),
            "sh0": rgb_to_sh0(rgb).reshape(n, 1, 3).clone(),
            "shN": torch.zeros(n, K - 1, 3),
        }

    def _from_ply(self, path: str) -> Dict[str, Tensor]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ddpo3d-gaussian-splat: init PLY {path!r} does not exist")
        d = load_gaussians_ply(path)
        K = num_sh_bases(self.cfg.sh_degree)
        shN = d["shN"]
        if shN.shape[1] >= K - 1:
            shN = shN[:, : K - 1]
        else:  # a lower-degree file: the extra coefficients start at zero
            shN = torch.cat([shN, torch.zeros(shN.shape[0], K - 1 - shN.shape[1], 3)], dim=1)
        info(f"ddpo3d-gaussian-splat: {d['means'].shape[0]} Gaussians from {path}")
        return {
            "means": d["means"],
            "scales": d["log_scales"],
            "quats": d["quats"],
            "opacities": d["opacity_logits"],
            "sh0": d["sh0"],
            "shN": shN,
        }

    def _sample_mesh(self, path: str, n: int) -> Tensor:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ddpo3d-gaussian-splat: init mesh {path!r} does not exist")
        import trimesh

        mesh = trimesh.load(path, force="mesh")
        pts = torch.as_tensor(mesh.sample(n), dtype=torch.float32)
        center = 0.5 * (pts.max(0).values + pts.min(0).values)
        pts = pts - center
        return pts / pts.norm(dim=-1).max().clamp_min(1e-12) * self.cfg.init_mesh_scale

    def _set_params(self, data: Dict[str, Tensor]) -> None:
        for name in PARAM_NAMES:
            t = data[name].to(self.device, torch.float32).contiguous()
            if name == "shN" and t.shape[1] == 0:
                self.shN = None
                continue
            setattr(self, name, nn.Parameter(t))

    @property
    def params(self) -> Dict[str, nn.Parameter]:
        """The parameters that exist, by name (the dict :mod:`ddpo3d.gaussians.strategy` works on)."""
        return {n: getattr(self, n) for n in self.param_names()}

    def set_params(self, params: Dict[str, nn.Parameter]) -> None:
        """Install parameters returned by a :mod:`ddpo3d.gaussians.strategy` operation."""
        for name, p in params.items():
            setattr(self, name, p)

    # ------------------------------------------------------------------ accessors
    @property
    def num_points(self) -> int:
        return self.means.shape[0]

    def param_names(self) -> List[str]:
        """Names of the parameters that exist (``shN`` only for ``sh_degree > 0``)."""
        return [n for n in PARAM_NAMES if getattr(self, n, None) is not None]

    def get_scales(self) -> Float[Tensor, "N 3"]:
        """Standard deviations (``exp`` of the log-scale parameter)."""
        return self.scales.exp()

    def get_quats(self) -> Float[Tensor, "N 4"]:
        return F.normalize(self.quats, dim=-1)

    def get_opacities(self) -> Float[Tensor, " N"]:
        return torch.sigmoid(self.opacities)

    def get_sh(self) -> Float[Tensor, "N K 3"]:
        """All SH coefficients ``[N, (sh_degree+1)^2, 3]``."""
        return self.sh0 if self.shN is None else torch.cat([self.sh0, self.shN], dim=1)

    def forward(self) -> Dict[str, Any]:
        """Activated attributes for a rasteriser (gsplat argument names)."""
        return {
            "means": self.means,
            "quats": self.get_quats(),
            "scales": self.get_scales(),
            "opacities": self.get_opacities(),
            "colors": self.get_sh(),
            "sh_degree": self.active_sh_degree,
        }

    # ------------------------------------------------------------------ optimisation hooks
    def _position_lr_at(self, step: int) -> float:
        c = self.cfg
        return c.spatial_lr_scale * expon_lr(
            step,
            c.position_lr_init,
            c.position_lr_final,
            c.position_lr_max_steps,
            c.position_lr_delay_steps,
            c.position_lr_delay_mult,
        )

    def optimizer_param_groups(self, base_cfg: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
        """One param group per attribute with its own learning rate (3DGS ``training_setup``).

        Args:
            base_cfg: optimizer options copied into every group (e.g. ``{"eps": 1e-15}``,
                3DGS's Adam epsilon; ``betas``); an ``lr`` there is ignored, the
                per-attribute rates of the config win.

        Returns:
            ``[{"params": [p], "lr": lr, "name": "geometry.<attr>", ...}, ...]`` for
            ``torch.optim.Adam(groups)``. Names follow threestudio's ``parse_optimizer``
            convention, so a config may equally list ``geometry.means`` etc. under
            ``optimizer.params``.
        """
        extra = {k: v for k, v in dict(base_cfg or {}).items() if k not in ("lr", "params", "name")}
        c = self.cfg
        lrs = {
            "means": self._position_lr_at(0),
            "scales": c.scale_lr,
            "quats": c.rotation_lr,
            "opacities": c.opacity_lr,
            "sh0": c.feature_lr,
            "shN": c.feature_lr * c.feature_rest_lr_factor,
        }
        return [
            {"params": [getattr(self, n)], "lr": lrs[n], "name": f"geometry.{n}", **extra} for n in self.param_names()
        ]

    def bind_optimizer(self, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Remember ``optimizer`` (weakly): ``update_step`` then writes the decayed position
        lr into it, and ``densify_and_prune`` uses it when called without one."""
        # a Lightning ``LightningOptimizer`` wrapper may be short-lived: keep the real optimizer
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        self._optimizer_ref = None if optimizer is None else weakref.ref(optimizer)

    def _bound_optimizer(self) -> Optional[torch.optim.Optimizer]:
        return None if self._optimizer_ref is None else self._optimizer_ref()

    def update_learning_rate(self, optimizer: torch.optim.Optimizer, global_step: int) -> float:
        """Set the lr of the param group holding ``means`` to the decayed position lr.

        Returns:
            The lr written (the group must hold ``means`` alone; otherwise a warning and no change).
        """
        lr = self._position_lr_at(global_step)
        self.position_lr = lr
        for group in optimizer.param_groups:
            if any(p is self.means for p in group["params"]):
                if len(group["params"]) != 1:
                    warn("ddpo3d-gaussian-splat: 'means' shares a param group; position lr decay skipped")
                    return lr
                group["lr"] = lr
        return lr

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        c = self.cfg
        if c.sh_degree_increase_interval > 0:
            self.active_sh_degree = min(c.sh_degree, global_step // c.sh_degree_increase_interval)
        optimizer = self._bound_optimizer()
        if optimizer is not None:
            self.update_learning_rate(optimizer, global_step)
        else:
            self.position_lr = self._position_lr_at(global_step)

    # ------------------------------------------------------------------ densification
    def training_callbacks(self) -> List[Any]:
        """The Lightning callback that drives this geometry's densification (a system returns
        it from ``configure_callbacks``)."""
        from .densification import GaussianDensification

        return [GaussianDensification(self)]

    def step_pre_backward(self, info: Dict[str, Any]) -> None:
        """Remember the training render's view-space info (the renderer calls this; ``info``
        holds ``viewspace_points`` with a retained gradient, ``visibility_filter``, ``radii``,
        ``width``, ``height``)."""
        self._render_info = info

    def step_post_backward(self, loss_scale: float = 1.0) -> bool:
        """Add the last training render's view-space gradients to the densification statistics
        (after ``backward``; see :meth:`DensifyStrategy.step_post_backward`).

        Returns:
            False when there was no training render, or its gradient is not finite (a skipped AMP step).
        """
        info, self._render_info = self._render_info, None
        if info is None:
            return False
        return self.strategy.step_post_backward(self.strategy_state, info, loss_scale)

    def step_post_optimizer(self, optimizer: Optional[torch.optim.Optimizer] = None, step: int = 0) -> Dict[str, float]:
        """Densify / prune / reset on the strategy's schedule, once per step after ``optimizer.step()``.

        Args:
            optimizer: the optimizer holding the geometry's parameters (default: the bound one).
            step: the global step.

        Returns:
            the strategy's stats (empty on no-op steps).
        """
        optimizer = optimizer if optimizer is not None else self._bound_optimizer()
        params, stats = self.strategy.step_post_optimizer(self.params, optimizer, self.strategy_state, step)
        self.set_params(params)
        return stats

    # ------------------------------------------------------------------ I/O
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints hold a different number of Gaussians than a fresh model: resize first
        for name in PARAM_NAMES:
            key = prefix + name
            if key in state_dict and (
                getattr(self, name, None) is None or getattr(self, name).shape != state_dict[key].shape
            ):
                setattr(self, name, nn.Parameter(torch.empty_like(state_dict[key], device=self.means.device)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.strategy_state = self.strategy.initialize_state(self.num_points, self.means.device)

    def save_ply(self, path: str) -> str:
        """Write the Gaussians as a standard 3DGS PLY (see :mod:`ddpo3d.gaussians.ply`)."""
        shN = self.shN if self.shN is not None else self.means.new_zeros(self.num_points, 0, 3)
        return save_gaussians_ply(path, self.means, self.sh0, shN, self.opacities, self.scales, self.quats)

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        """threestudio geometry ``export`` hook: the raw attributes (CPU tensors)."""
        return {n: getattr(self, n).detach().cpu() for n in self.param_names()}
