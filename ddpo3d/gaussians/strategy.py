"""Adaptive density control of 3D Gaussians (Kerbl et al. 2023, Sec. 5.2), split as gsplat does:
stateless operations on a parameter dict, and a small strategy object that decides when to use them.

The operations (:func:`duplicate`, :func:`split`, :func:`remove`, :func:`reset_opacity`) take
``params`` (``{name: nn.Parameter}`` with one row per Gaussian: gsplat's ``means``, ``scales``
(log), ``quats``, ``opacities`` (logits), ``sh0``, ``shN``) and the optimizer holding them, and
return new parameters with the optimizer's per-row state carried over (new rows start with zero
moments, as 3DGS's ``cat_tensors_to_optimizer``). They keep no state.

:class:`DensifyStrategy` holds the schedule and thresholds; its running statistics live in a
plain dict (:meth:`DensifyStrategy.initialize_state`) owned by the caller::

    strategy = DensifyStrategy(densify_from_iter=100, ...)
    state = strategy.initialize_state(num_points, device)
    ...                                    # each training step:
    loss.backward()
    strategy.step_post_backward(state, info)          # view-space gradient statistics
    optimizer.step()
    params, stats = strategy.step_post_optimizer(params, optimizer, state, step)

Unlike gsplat's ``DefaultStrategy``, which refines inside ``step_post_backward`` (before the
optimizer step), refinement here runs after the step, in 3DGS's order, so a refinement step's
gradients are still applied.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ddpo3d.gaussians.densify import optimizer_replace_param, split_gaussians
from ddpo3d.utils.typing import Any, Bool, Callable, Dict, Optional, Tensor, Tuple

Params = Dict[str, nn.Parameter]


def rewrite_rows(
    params: Params,
    optimizer: Optional[torch.optim.Optimizer],
    param_fn: Callable[[str, Tensor], Tensor],
    state_fn: Callable[[str, Tensor], Tensor],
) -> Params:
    """New parameters ``param_fn(name, old)`` with the optimizer's per-row state mapped by ``state_fn``.

    Args:
        params: the current parameters.
        optimizer: the optimizer holding them (None: parameters only).
        param_fn: ``(name, detached old tensor) -> new tensor``.
        state_fn: ``(name, state tensor shaped like old) -> state tensor shaped like new``.

    Returns:
        the new parameter dict (same names, same ``requires_grad``).

    Raises:
        RuntimeError: a parameter is not in ``optimizer``'s param groups.
    """
    out: Params = {}
    for name, old in params.items():
        new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        if optimizer is not None and not optimizer_replace_param(
            optimizer, old, new, lambda t, name=name: state_fn(name, t)
        ):
            raise RuntimeError(
                f"ddpo3d-gaussian-splat: parameter geometry.{name} is not in the optimizer's param groups; "
                f"build the optimizer from geometry.optimizer_param_groups() (or pass the right optimizer)"
            )
        out[name] = new
    return out


def append(params: Params, optimizer: Optional[torch.optim.Optimizer], rows: Dict[str, Tensor]) -> Params:
    """``params`` with ``rows`` (raw values per name) appended; their optimizer moments start at 0."""
    k = next(iter(rows.values())).shape[0]
    return rewrite_rows(
        params,
        optimizer,
        lambda n, t: torch.cat([t, rows[n].to(t)], dim=0),
        lambda n, s: torch.cat([s, s.new_zeros((k,) + s.shape[1:])], dim=0),
    )


def remove(params: Params, optimizer: Optional[torch.optim.Optimizer], mask: Bool[Tensor, " N"]) -> Params:
    """``params`` without the rows where ``mask`` is True (parameters and optimizer state)."""
    keep = ~mask
    return rewrite_rows(params, optimizer, lambda n, t: t[keep], lambda n, s: s[keep])


def duplicate(params: Params, optimizer: Optional[torch.optim.Optimizer], mask: Bool[Tensor, " N"]) -> Params:
    """3DGS ``densify_and_clone``: append a copy of every row where ``mask`` is True."""
    return append(params, optimizer, {n: p.detach()[mask] for n, p in params.items()})


def split(
    params: Params,
    optimizer: Optional[torch.optim.Optimizer],
    mask: Bool[Tensor, " N"],
    n_split: int = 2,
    generator: Optional[torch.Generator] = None,
) -> Params:
    """3DGS ``densify_and_split``: replace every row where ``mask`` is True by ``n_split``
    children drawn from it (:func:`ddpo3d.gaussians.densify.split_gaussians`), appended at the end."""
    means, log_scales = split_gaussians(
        params["means"][mask], params["scales"][mask], params["quats"][mask], n_split, generator=generator
    )
    rows = {}
    for n, p in params.items():
        rep = p.detach()[mask]
        rows[n] = {"means": means, "scales": log_scales}.get(n, rep.repeat((n_split,) + (1,) * (rep.dim() - 1)))
    n_old = mask.shape[0]
    params = append(params, optimizer, rows)
    parents = torch.zeros(n_old + means.shape[0], dtype=torch.bool, device=mask.device)
    parents[:n_old] = mask
    return remove(params, optimizer, parents)


def reset_opacity(params: Params, optimizer: Optional[torch.optim.Optimizer], value: float) -> Params:
    """3DGS ``reset_opacity``: opacities to ``min(o, value)`` with fresh optimizer moments."""
    cap = torch.logit(torch.tensor(value))
    old = params["opacities"]
    new = nn.Parameter(torch.minimum(old.detach(), cap.to(old)))
    if optimizer is not None and not optimizer_replace_param(optimizer, old, new, torch.zeros_like):
        raise RuntimeError("ddpo3d-gaussian-splat: geometry.opacities is not in the optimizer's param groups")
    return {**params, "opacities": new}


def _grow(state: Dict[str, Tensor], k: int) -> None:
    """Append ``k`` zero rows (new Gaussians have no statistics yet) to every state tensor."""
    for key, v in state.items():
        state[key] = torch.cat([v, v.new_zeros(k)])


def _drop(state: Dict[str, Tensor], mask: Bool[Tensor, " N"]) -> None:
    """Remove the rows where ``mask`` is True from every state tensor."""
    for key, v in state.items():
        state[key] = v[~mask]


@dataclass
class DensifyStrategy:
    """When to clone, split, prune and reset (3DGS's training-loop schedule).

    Attributes (the geometry config's keys of the same names):
        densify_from_iter, densify_until_iter: densify when ``from < step < until``.
        densification_interval: every this many steps.
        densify_grad_threshold: mean view-space (NDC) positional gradient norm that selects a Gaussian.
        percent_dense, scene_extent: clone if max std <= ``percent_dense * scene_extent``, else split.
        split_num: children per split Gaussian.
        opacity_reset_interval, opacity_reset_value: every this many steps (0: never) cap opacities.
        prune_opacity_threshold: prune if opacity < this.
        max_scale: prune if max std > ``max_scale * scene_extent`` (None: off).
        max_screen_size: prune if max 2D radius (px) > this (None: off).
        max_num_points: cap on N for densification (0: none); highest gradients first.
    """

    densify_from_iter: int = 100
    densify_until_iter: int = 3000
    densification_interval: int = 100
    densify_grad_threshold: float = 0.0002
    percent_dense: float = 0.01
    scene_extent: float = 1.0
    split_num: int = 2
    opacity_reset_interval: int = 0
    opacity_reset_value: float = 0.01
    prune_opacity_threshold: float = 0.005
    max_scale: Optional[float] = None
    max_screen_size: Optional[float] = None
    max_num_points: int = 0

    @staticmethod
    def initialize_state(n: int, device: Any = None) -> Dict[str, Tensor]:
        """Zeroed statistics for ``n`` Gaussians: ``grad2d`` (summed gradient norms),
        ``count`` (views that saw each Gaussian), ``radii`` (max 2D radius, px)."""
        return {k: torch.zeros(n, device=device) for k in ("grad2d", "count", "radii")}

    @torch.no_grad()
    def step_post_backward(self, state: Dict[str, Tensor], info: Dict[str, Any], loss_scale: float = 1.0) -> bool:
        """Add this step's view-space positional gradient norms to ``state`` (after ``backward``).

        Args:
            state: from :meth:`initialize_state`, one row per Gaussian.
            info: the training render's ``viewspace_points`` (``[B, N, 2]`` pixel-space means
                with a retained ``.grad``), ``visibility_filter`` and ``radii`` (``[B, N]``),
                ``width`` and ``height``.
            loss_scale: an fp16 AMP loss scale still in the gradient (divided out).

        Returns:
            False when the gradient is not finite (an AMP step that will be skipped: nothing added).

        Gradients are rescaled from pixels to NDC (x ``W/2``, ``H/2``, as 3DGS's thresholds are
        in NDC) and by the batch size (undoing a batch-mean loss), as gsplat's ``DefaultStrategy``.
        """
        pts = info.get("viewspace_points")
        if pts is None:
            raise KeyError(
                "densification: the render has no 'viewspace_points' (use ddpo3d-gaussian-splat-renderer in training mode)"
            )
        if pts.grad is None:
            raise RuntimeError(
                "densification: 'viewspace_points' has no gradient; accumulate after loss.backward() "
                "on a training-mode render"
            )
        B, N = pts.shape[:2]
        if N != state["grad2d"].shape[0]:
            raise RuntimeError(
                f"densification: render has {N} Gaussians, the statistics {state['grad2d'].shape[0]} "
                f"(densified in between?)"
            )
        g = pts.grad.clone()
        if loss_scale != 1.0:
            g.div_(loss_scale)
            if not torch.isfinite(g).all():
                return False
        g[..., 0] *= 0.5 * info["width"] * B
        g[..., 1] *= 0.5 * info["height"] * B
        vis = info["visibility_filter"].to(g.dtype)
        state["grad2d"] += (g.norm(dim=-1) * vis).sum(0)
        state["count"] += vis.sum(0)
        radii = info["radii"].to(g.dtype) * vis
        state["radii"] = torch.maximum(state["radii"], radii.max(0).values)
        return True

    @torch.no_grad()
    def densify(
        self, params: Params, optimizer: Optional[torch.optim.Optimizer], state: Dict[str, Tensor]
    ) -> Tuple[Params, Dict[str, int]]:
        """Clone small / split large Gaussians whose mean view-space gradient reaches the threshold.

        Returns:
            ``(params, {"cloned": .., "split": ..})``; ``state`` rows follow (new rows zero).
        """
        count = state["count"]
        grads = torch.where(count > 0, state["grad2d"] / count.clamp_min(1), torch.zeros_like(count))
        selected = grads >= self.densify_grad_threshold
        big = params["scales"].exp().max(dim=1).values > self.percent_dense * self.scene_extent
        n = grads.shape[0]
        if self.max_num_points > 0:  # keep the highest gradients that fit the budget
            budget = max(self.max_num_points - n, 0)
            cost = torch.where(big, torch.full_like(grads, self.split_num - 1), torch.ones_like(grads))
            order = torch.argsort(torch.where(selected, grads, torch.full_like(grads, -1.0)), descending=True)
            fits = torch.cumsum(cost[order] * selected[order], 0) <= budget
            allowed = torch.zeros_like(selected)
            allowed[order] = fits
            selected = selected & allowed
        clone, to_split = selected & ~big, selected & big
        n_clone, n_split = int(clone.sum()), int(to_split.sum())
        if n_clone + n_split == 0:
            return params, {"cloned": 0, "split": 0}
        if n_clone:
            params = duplicate(params, optimizer, clone)
            _grow(state, n_clone)
        if n_split:  # the parents' rows are unchanged by the clones appended after them
            split_mask = torch.cat([to_split, to_split.new_zeros(n_clone)])
            params = split(params, optimizer, split_mask, self.split_num)
            n_children = self.split_num * n_split
            _grow(state, n_children)
            _drop(state, torch.cat([split_mask, split_mask.new_zeros(n_children)]))
        return params, {"cloned": n_clone, "split": n_split}

    @torch.no_grad()
    def prune(
        self, params: Params, optimizer: Optional[torch.optim.Optimizer], state: Dict[str, Tensor]
    ) -> Tuple[Params, int]:
        """Remove nearly transparent (and, if configured, too large) Gaussians.

        Returns:
            ``(params, number removed)`` (0 if everything would go: nothing removed).
        """
        remove_mask = torch.sigmoid(params["opacities"]) < self.prune_opacity_threshold
        if self.max_scale is not None:
            remove_mask |= params["scales"].exp().max(dim=1).values > self.max_scale * self.scene_extent
        if self.max_screen_size is not None:
            remove_mask |= state["radii"] > self.max_screen_size
        n = int(remove_mask.sum())
        if n == remove_mask.shape[0]:
            warnings.warn("ddpo3d-gaussian-splat: pruning would remove every Gaussian; skipped", stacklevel=2)
            return params, 0
        if n:
            params = remove(params, optimizer, remove_mask)
            _drop(state, remove_mask)
        return params, n

    def step_post_optimizer(
        self, params: Params, optimizer: Optional[torch.optim.Optimizer], state: Dict[str, Tensor], step: int
    ) -> Tuple[Params, Dict[str, float]]:
        """The schedule, once per step after ``optimizer.step()``.

        While ``step < densify_until_iter``: every ``densification_interval`` steps after
        ``densify_from_iter`` densify, prune and reset the statistics; every
        ``opacity_reset_interval`` steps reset opacities.

        Returns:
            ``(params, stats)``: stats are the counts ``cloned``, ``split``, ``pruned``,
            ``num_points``, and the median / 90th percentile of the mean view-space gradient
            norms (``grad_p50`` / ``grad_p90``, to calibrate ``densify_grad_threshold``); empty
            on no-op steps. ``state`` is reset in place after a densification.
        """
        out: Dict[str, float] = {}
        if step >= self.densify_until_iter:
            return params, out
        if (
            step > self.densify_from_iter
            and self.densification_interval > 0
            and step % self.densification_interval == 0
        ):
            seen = state["count"] > 0
            if seen.any():  # calibration aid for densify_grad_threshold (log these)
                g = state["grad2d"][seen] / state["count"][seen]
                out["grad_p50"] = float(g.median())
                out["grad_p90"] = float(torch.quantile(g, 0.9))
            params, counts = self.densify(params, optimizer, state)
            out.update(counts)
            params, out["pruned"] = self.prune(params, optimizer, state)
            out["num_points"] = params["means"].shape[0]
            state.update(self.initialize_state(params["means"].shape[0], params["means"].device))
        if self.opacity_reset_interval > 0 and step > 0 and step % self.opacity_reset_interval == 0:
            params = reset_opacity(params, optimizer, self.opacity_reset_value)
            out["opacity_reset"] = 1
        return params, out
