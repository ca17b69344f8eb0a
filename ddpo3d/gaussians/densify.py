"""Densification helpers (Kerbl et al. 2023, Sec. 5.2 "Adaptive Control of Gaussians"):
stateless maths plus the optimizer surgery that keeps Adam's moments aligned with
parameters whose number of rows changes.

The policy (when to clone / split / prune) and the row operations live in
:mod:`ddpo3d.gaussians.strategy`; these functions do the optimizer surgery and the sampling.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ddpo3d.gaussians.projection import quat_to_rotmat
from ddpo3d.utils.typing import Callable, Float, Optional, Tensor, Tuple


def optimizer_replace_param(
    optimizer: Optional[torch.optim.Optimizer],
    old: nn.Parameter,
    new: nn.Parameter,
    rows: Callable[[Tensor], Tensor],
) -> bool:
    """Swap ``old`` for ``new`` in ``optimizer`` and carry its per-row state over.

    Every state tensor shaped like ``old`` (Adam's ``exp_avg`` / ``exp_avg_sq``, AMSGrad's
    ``max_exp_avg_sq``, SGD's ``momentum_buffer`` ...) is mapped with ``rows`` (e.g.
    ``lambda t: t[mask]`` to prune, or concatenating zeros to append: a fresh Gaussian
    starts with zero moments, as in 3DGS's ``cat_tensors_to_optimizer``); scalar state
    such as Adam's ``step`` is kept.

    Args:
        optimizer: the optimizer (``None``: nothing to do).
        old: the parameter currently registered.
        new: its replacement.
        rows: maps a state tensor of ``old``'s shape to one of ``new``'s shape.

    Returns:
        True if ``old`` was found in a param group.
    """
    if optimizer is None:
        return False
    found = False
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                params[i] = new
                found = True
    if not found:
        return False
    state = optimizer.state.pop(old, None)
    if state:
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape == old.shape:
                value = rows(value)
                if value.shape != new.shape:
                    raise RuntimeError(
                        f"optimizer state {key!r} mapped to {tuple(value.shape)}, parameter is {tuple(new.shape)}"
                    )
            new_state[key] = value
        optimizer.state[new] = new_state
    return True


def split_gaussians(
    means: Float[Tensor, "N 3"],
    log_scales: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    n_split: int = 2,
    scale_divisor: float = 1.6,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Float[Tensor, "M 3"], Float[Tensor, "M 3"]]:
    """Children of large Gaussians (3DGS ``densify_and_split``).

    Each parent yields ``n_split`` children with centres drawn from the parent's own
    distribution ``mu + R (s * z)``, ``z ~ N(0, I)``, and scales divided by
    ``scale_divisor`` (3DGS: ``0.8 * n_split = 1.6``). Children are ordered
    ``[all parents, first child; all parents, second child; ...]``.

    Returns:
        ``means [n_split N, 3]`` and ``log_scales [n_split N, 3]``.
    """
    scales = log_scales.exp().repeat(n_split, 1)
    z = torch.randn(scales.shape, generator=generator, dtype=scales.dtype, device="cpu").to(scales.device)
    R = quat_to_rotmat(quats).repeat(n_split, 1, 1)
    new_means = means.repeat(n_split, 1) + (R @ (scales * z)[..., None])[..., 0]
    new_log_scales = torch.log(scales / scale_divisor)
    return new_means, new_log_scales


def knn_mean_sq_dist(points: Float[Tensor, "N 3"], k: int = 3, block: int = 1024) -> Float[Tensor, " N"]:
    """Mean squared distance to the ``k`` nearest other points (3DGS's ``distCUDA2``
    initial scale), computed in row blocks to bound memory."""
    N = points.shape[0]
    if N <= 1:
        return torch.ones(N, dtype=points.dtype, device=points.device)
    k = min(k, N - 1)
    out = []
    for i in range(0, N, block):
        d2 = torch.cdist(points[i : i + block], points).pow(2)
        idx = torch.arange(i, min(i + block, N), device=points.device)
        d2[torch.arange(idx.numel(), device=points.device), idx] = float("inf")
        out.append(d2.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out)
