"""``ddpo3d-gaussian-splat``: a set of 3D Gaussians (Kerbl et al. 2023) as threestudio geometry.

Parameters (``nn.Parameter``, gsplat's names), N rows each:

* ``means [N, 3]`` centres; ``scales [N, 3]`` log standard deviations; ``quats [N, 4]``
  rotations ``(w, x, y, z)`` (normalised when read); ``opacities [N]`` logits;
  ``sh0 [N, 1, 3]`` degree-0 SH; ``shN [N, (d+1)^2 - 1, 3]`` higher SH (absent for d = 0).

Hooks a system calls (see the functions' docstrings)::

    groups = geometry.optimizer_param_groups({"eps": 1e-15})   # per-attribute lrs
    optimizer = torch.optim.Adam(groups + other_groups)
    geometry.bind_optimizer(optimizer)      # optional: lr decay in update_step, default optimizer
    ...                                      # each step:
    out = renderer(**batch); loss.backward()
    geometry.accumulate_viewspace_grads(out) # after backward (reads out["viewspace_points"].grad)
    optimizer.step(); optimizer.zero_grad()
    geometry.densify_and_prune(optimizer, global_step)   # no-op outside its schedule

``update_step`` (called by threestudio's systems every step) raises the active SH degree
and, with a bound optimizer, sets the position learning rate (3DGS exponential decay).
Densification rewrites the parameters; the Adam moments of surviving rows are kept and
new rows start at zero, so the optimizer stays consistent (``optimizer_replace_param``).
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpo3d.gaussians.densify import knn_mean_sq_dist, optimizer_replace_param, split_gaussians
from ddpo3d.gaussians.ply import load_gaussians_ply, save_gaussians_ply
from ddpo3d.gaussians.sh import num_sh_bases, rgb_to_sh0
from ddpo3d.host import BaseModule, info, register, warn
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
class GaussianSplatGeometry(BaseModule):
    """3D Gaussians with SH colours, DreamGaussian/3DGS-style densification and pruning."""

    @dataclass
    class Config(BaseModule.Config):
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
        self._reset_stats()

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

    def _reset_stats(self) -> None:
        n, dev = self.num_points, self.means.device
        self._grad_accum = torch.zeros(n, device=dev)
        self._grad_count = torch.zeros(n, device=dev)
        self._max_radii2d = torch.zeros(n, device=dev)

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

    @torch.no_grad()
    def accumulate_viewspace_grads(self, render_out: Dict[str, Any]) -> None:
        """Add this step's view-space positional gradient norms to the densification stats.

        Call after ``backward`` with the renderer's output. Uses ``viewspace_points``
        (``[B, N, 2]`` pixel-space means whose ``.grad`` the renderer retained),
        ``visibility_filter`` ``[B, N]`` and ``radii`` ``[B, N]``. Gradients are rescaled
        from pixels to NDC (x ``W/2``, ``H/2``, as 3DGS's thresholds are in NDC) and by the
        batch size (undoing a batch-mean loss), as gsplat's ``DefaultStrategy`` does.
        """
        pts = render_out.get("viewspace_points")
        if pts is None:
            raise KeyError(
                "accumulate_viewspace_grads: render output has no 'viewspace_points' "
                "(use ddpo3d-gaussian-splat-renderer in training mode)"
            )
        if pts.grad is None:
            raise RuntimeError(
                "accumulate_viewspace_grads: 'viewspace_points' has no gradient; call it after "
                "loss.backward() on a training-mode render"
            )
        B, N = pts.shape[:2]
        if N != self.num_points:
            raise RuntimeError(
                f"accumulate_viewspace_grads: render has {N} Gaussians, geometry has "
                f"{self.num_points} (densified in between?)"
            )
        H, W = render_out["comp_rgb"].shape[1:3]
        g = pts.grad.clone()
        g[..., 0] *= 0.5 * W * B
        g[..., 1] *= 0.5 * H * B
        vis = render_out["visibility_filter"].to(g.dtype)
        self._grad_accum += (g.norm(dim=-1) * vis).sum(0)
        self._grad_count += vis.sum(0)
        radii = render_out["radii"].to(g.dtype) * vis
        self._max_radii2d = torch.maximum(self._max_radii2d, radii.max(0).values)

    # ------------------------------------------------------------------ row surgery
    def _rewrite_rows(self, optimizer, param_fn, state_fn) -> None:
        """Replace every parameter by ``param_fn(name, tensor)`` and map its optimizer state
        rows with ``state_fn(name, state_tensor)``."""
        for name in self.param_names():
            old = getattr(self, name)
            new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
            if optimizer is not None and not optimizer_replace_param(
                optimizer, old, new, lambda t, name=name: state_fn(name, t)
            ):
                raise RuntimeError(
                    f"ddpo3d-gaussian-splat: parameter geometry.{name} is not in the optimizer's param groups; "
                    f"build the optimizer from geometry.optimizer_param_groups() (or pass the right optimizer)"
                )
            setattr(self, name, new)

    def append_gaussians(self, rows: Dict[str, Tensor], optimizer=None) -> None:
        """Append Gaussians (raw parameter values per name); their optimizer moments start at 0."""
        k = rows["means"].shape[0]
        self._rewrite_rows(
            optimizer,
            lambda n, t: torch.cat([t, rows[n].to(t)], dim=0),
            lambda n, s: torch.cat([s, s.new_zeros((k,) + s.shape[1:])], dim=0),
        )
        z = self._grad_accum.new_zeros(k)
        self._grad_accum = torch.cat([self._grad_accum, z])
        self._grad_count = torch.cat([self._grad_count, z])
        self._max_radii2d = torch.cat([self._max_radii2d, z])

    def keep_gaussians(self, keep: Tensor, optimizer=None) -> None:
        """Keep only the rows where ``keep`` is True (parameters, optimizer state, stats)."""
        keep = keep.to(self.means.device)
        self._rewrite_rows(optimizer, lambda n, t: t[keep], lambda n, s: s[keep])
        self._grad_accum = self._grad_accum[keep]
        self._grad_count = self._grad_count[keep]
        self._max_radii2d = self._max_radii2d[keep]

    @torch.no_grad()
    def densify(self, optimizer=None) -> Dict[str, int]:
        """Clone small / split large Gaussians whose mean view-space gradient is at least
        ``densify_grad_threshold`` (3DGS ``densify_and_clone`` / ``densify_and_split``).

        Returns:
            ``{"cloned": .., "split": ..}`` counts.
        """
        c = self.cfg
        grads = torch.where(
            self._grad_count > 0, self._grad_accum / self._grad_count.clamp_min(1), torch.zeros_like(self._grad_accum)
        )
        selected = grads >= c.densify_grad_threshold
        big = self.get_scales().max(dim=1).values > c.percent_dense * c.scene_extent
        if c.max_num_points > 0:  # keep the highest gradients that fit the budget
            budget = max(c.max_num_points - self.num_points, 0)
            cost = torch.where(big, torch.full_like(grads, c.split_num - 1), torch.ones_like(grads))
            order = torch.argsort(torch.where(selected, grads, torch.full_like(grads, -1.0)), descending=True)
            fits = torch.cumsum(cost[order] * selected[order], 0) <= budget
            allowed = torch.zeros_like(selected)
            allowed[order] = fits
            selected = selected & allowed
        clone, split = selected & ~big, selected & big
        n_clone, n_split = int(clone.sum()), int(split.sum())
        if n_clone + n_split == 0:
            return {"cloned": 0, "split": 0}
        names = self.param_names()
        new = {n: getattr(self, n).detach()[clone] for n in names}
        if n_split:
            means, log_scales = split_gaussians(self.means[split], self.scales[split], self.quats[split], c.split_num)
            for n in names:
                rep = getattr(self, n).detach()[split]
                child = {"means": means, "scales": log_scales}.get(
                    n, rep.repeat((c.split_num,) + (1,) * (rep.dim() - 1))
                )
                new[n] = torch.cat([new[n], child], dim=0)
        n_old = self.num_points
        self.append_gaussians(new, optimizer)
        if n_split:  # remove the split parents
            keep = torch.ones(self.num_points, dtype=torch.bool, device=self.means.device)
            keep[:n_old][split] = False
            self.keep_gaussians(keep, optimizer)
        return {"cloned": n_clone, "split": n_split}

    @torch.no_grad()
    def prune(self, optimizer=None) -> int:
        """Remove nearly transparent (and, if configured, too large) Gaussians.

        Returns:
            Number removed (0 if everything would go: a warning, nothing removed).
        """
        c = self.cfg
        remove = self.get_opacities() < c.prune_opacity_threshold
        if c.max_scale is not None:
            remove |= self.get_scales().max(dim=1).values > c.max_scale * c.scene_extent
        if c.max_screen_size is not None:
            remove |= self._max_radii2d > c.max_screen_size
        n = int(remove.sum())
        if n == self.num_points:
            warn("ddpo3d-gaussian-splat: pruning would remove every Gaussian; skipped")
            return 0
        if n:
            self.keep_gaussians(~remove, optimizer)
        return n

    @torch.no_grad()
    def reset_opacity(self, optimizer=None) -> None:
        """Opacities to ``min(o, opacity_reset_value)`` with fresh optimizer moments for
        them (3DGS ``reset_opacity``)."""
        cap = torch.logit(torch.tensor(self.cfg.opacity_reset_value))
        old = self.opacities
        new = nn.Parameter(torch.minimum(old.detach(), cap.to(old)))
        if optimizer is not None and not optimizer_replace_param(optimizer, old, new, torch.zeros_like):
            raise RuntimeError("ddpo3d-gaussian-splat: geometry.opacities is not in the optimizer's param groups")
        self.opacities = new

    def densify_and_prune(self, optimizer: Optional[torch.optim.Optimizer] = None, step: int = 0) -> Dict[str, float]:
        """The schedule of 3DGS's training loop, to call once per step after ``optimizer.step()``.

        While ``step < densify_until_iter``: every ``densification_interval`` steps after
        ``densify_from_iter`` densify, prune and reset the statistics; every
        ``opacity_reset_interval`` steps reset opacities.

        Args:
            optimizer: the optimizer holding the geometry's parameters (default: the bound one).
            step: the global step.

        Returns:
            counts ``cloned``, ``split``, ``pruned``, ``num_points``, and the median / 90th
            percentile of the mean view-space gradient norms (``grad_p50`` / ``grad_p90``,
            to calibrate ``densify_grad_threshold``); empty on no-op steps.
        """
        optimizer = optimizer if optimizer is not None else self._bound_optimizer()
        c = self.cfg
        out: Dict[str, float] = {}
        if step >= c.densify_until_iter:
            return out
        if step > c.densify_from_iter and c.densification_interval > 0 and step % c.densification_interval == 0:
            seen = self._grad_count > 0
            if seen.any():  # calibration aid for densify_grad_threshold (log these)
                g = self._grad_accum[seen] / self._grad_count[seen]
                out["grad_p50"] = float(g.median())
                out["grad_p90"] = float(torch.quantile(g, 0.9))
            out.update(self.densify(optimizer))
            out["pruned"] = self.prune(optimizer)
            out["num_points"] = self.num_points
            self._reset_stats()
        if c.opacity_reset_interval > 0 and step > 0 and step % c.opacity_reset_interval == 0:
            self.reset_opacity(optimizer)
            out["opacity_reset"] = 1
        return out

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
        self._reset_stats()

    def save_ply(self, path: str) -> str:
        """Write the Gaussians as a standard 3DGS PLY (see :mod:`ddpo3d.gaussians.ply`)."""
        shN = self.shN if self.shN is not None else self.means.new_zeros(self.num_points, 0, 3)
        return save_gaussians_ply(path, self.means, self.sh0, shN, self.opacities, self.scales, self.quats)

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        """threestudio geometry ``export`` hook: the raw attributes (CPU tensors)."""
        return {n: getattr(self, n).detach().cpu() for n in self.param_names()}
