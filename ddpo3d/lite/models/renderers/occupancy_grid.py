"""A binary occupancy grid over the scene box, updated like nerfacc's ``OccGridEstimator``.

Instant-NGP (Müller et al. 2022, Sec. 5.1 / App. E.2) keeps a coarse grid of cells that may
hold density and skips samples elsewhere. Update rule (nerfacc ``update_every_n_steps``):
every ``n`` steps, evaluate ``occ = occ_eval_fn(x)`` (an alpha estimate) at one jittered
point per cell (all cells during the first ``warmup_steps``, afterwards a random quarter
plus every occupied cell), ``occs = max(ema_decay * occs, occ)``, and mark a cell occupied
when ``occs > min(occ_thre, mean(occs))``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ddpo3d.utils.typing import Bool, Callable, Float, Tensor


class OccupancyGrid(nn.Module):
    """``resolution^3`` cells over ``aabb``; ``binaries`` starts all-occupied.

    Args:
        aabb: ``[2, 3]`` box (min, max).
        resolution: cells per axis.
    """

    def __init__(self, aabb: Float[Tensor, "2 3"], resolution: int = 32):
        super().__init__()
        self.resolution = int(resolution)
        self.register_buffer("aabb", aabb.detach().clone().float(), persistent=False)
        n = self.resolution**3
        self.register_buffer("occs", torch.zeros(n))
        self.register_buffer("binaries", torch.ones(n, dtype=torch.bool))
        r = torch.arange(self.resolution)
        grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("grid_coords", grid, persistent=False)

    def _cell_index(self, x: Float[Tensor, "N 3"]):
        u = (x - self.aabb[0].to(x)) / (self.aabb[1] - self.aabb[0]).to(x)
        inside = ((u >= 0) & (u <= 1)).all(-1)
        c = (u * self.resolution).long().clamp(0, self.resolution - 1)
        idx = (c[:, 0] * self.resolution + c[:, 1]) * self.resolution + c[:, 2]
        return idx, inside

    def query(self, x: Float[Tensor, "... 3"]) -> Bool[Tensor, "..."]:
        """Whether each point lies in an occupied cell (points outside the box: False)."""
        shape = x.shape[:-1]
        idx, inside = self._cell_index(x.reshape(-1, 3))
        return (self.binaries[idx] & inside).reshape(shape)

    @torch.no_grad()
    def update_every_n_steps(
        self,
        step: int,
        occ_eval_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
    ) -> None:
        """Refresh the grid every ``n`` steps (see the module docstring)."""
        if step % n != 0:
            return
        n_cells = self.resolution**3
        if step < warmup_steps:
            cells = torch.arange(n_cells, device=self.occs.device)
        else:
            rand = torch.randint(0, n_cells, (n_cells // 4,), device=self.occs.device)
            occupied = self.binaries.nonzero(as_tuple=True)[0]
            cells = torch.cat([rand, occupied])
        coords = self.grid_coords[cells].float()
        u = (coords + torch.rand_like(coords)) / self.resolution
        x = self.aabb[0] + u * (self.aabb[1] - self.aabb[0])
        occ = occ_eval_fn(x).reshape(-1).to(self.occs)
        self.occs[cells] = torch.maximum(self.occs[cells] * ema_decay, occ)
        thre = min(occ_thre, self.occs[self.occs >= 0].mean().item())
        self.binaries.copy_(self.occs > thre)
