"""Weighted sum of rewards with per-term reporting (built from a list of reward blocks).

``R(x, c) = sum_i w_i * R_i(x, c)``. The terms dict reports every raw term ``R_i`` under its
name and every weighted term ``w_i * R_i`` under ``"<name>_weighted"``, so training logs can
show both. The composite is differentiable iff every term is; in a mixed composite the
non-differentiable terms are detached (their values still count in the sum, their
gradient is zero). It needs the renderer's outputs (``needs_render_out``) iff a term does; then
``reward(images, prompts, render_out=...)`` hands them to those terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch  # noqa: F401  (doctest namespace)
import torch.nn as nn

from ddpo3d.rewards.base import Reward, RewardOutput, validate_inputs
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Any, Dict, Float, List, Optional, Sequence, Tensor, Tuple

__all__ = ["CompositeReward"]


class CompositeReward(Reward):
    """``sum_i w_i * R_i`` over named terms.

    Args:
        rewards: the term rewards (each keeps its ``name``; names must be unique).
        weights: one float per reward.

    Example:
        >>> from ddpo3d.rewards import build_reward
        >>> r = build_reward([{"type": "jpeg-compressibility", "weight": 0.5},
        ...                   {"type": "jpeg-incompressibility", "weight": 0.1}])
        >>> sorted(r.evaluate(torch.rand(2, 8, 8, 3), ["a", "b"]).terms)  # doctest: +NORMALIZE_WHITESPACE
        ['jpeg-compressibility', 'jpeg-compressibility_weighted',
         'jpeg-incompressibility', 'jpeg-incompressibility_weighted']
    """

    name = "weighted-sum"

    @dataclass
    class Config:
        pass

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float]):
        super().__init__(None)
        rewards = list(rewards)
        weights = [float(w) for w in weights]
        if len(rewards) == 0:
            raise ConfigError("A composite reward needs at least one term")
        if len(rewards) != len(weights):
            raise ConfigError(f"Got {len(rewards)} rewards but {len(weights)} weights")
        names = [r.name for r in rewards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(
                f"Composite reward has several terms named {', '.join(map(repr, dupes))}; give each "
                f"block a distinct 'name:' key"
            )
        self.rewards = nn.ModuleList(rewards)
        self.weights: List[float] = weights
        self.differentiable = all(r.differentiable for r in rewards)
        self.needs_render_out = any(getattr(r, "needs_render_out", False) for r in rewards)

    @classmethod
    def from_terms(cls, terms: Sequence[Tuple[Reward, float]]) -> "CompositeReward":
        """Build from ``[(reward, weight), ...]``."""
        return cls([r for r, _ in terms], [w for _, w in terms])

    @property
    def term_names(self) -> List[str]:
        """Names of the terms, in order."""
        return [r.name for r in self.rewards]

    def evaluate(
        self,
        images: Float[Tensor, "B H W 3"],
        prompts: Sequence[str],
        render_out: Optional[Dict[str, Any]] = None,
    ) -> RewardOutput:
        """Weighted sum of the terms.

        Args:
            images: ``[B, H, W, 3]`` floats in ``[0, 1]``.
            prompts: ``B`` strings.
            render_out: the renderer's outputs, for the terms with ``needs_render_out``.

        Returns:
            :class:`RewardOutput`: ``scores = sum_i w_i * R_i``; ``terms`` has ``<name>`` (raw
            ``R_i``) and ``<name>_weighted`` (``w_i * R_i``) for every term.
        """
        prompts = validate_inputs(images, prompts, where=f"reward {self.name!r}")
        terms: Dict[str, Tensor] = {}
        total = None
        for reward, weight in zip(self.rewards, self.weights):
            extra = {"render_out": render_out} if getattr(reward, "needs_render_out", False) else {}
            raw = reward.evaluate(images, prompts, **extra).scores
            weighted = weight * raw
            terms[reward.name] = raw
            terms[f"{reward.name}_weighted"] = weighted
            total = weighted if total is None else total + weighted.to(total.device)
        assert total is not None
        if not self.differentiable:
            total = total.detach()
        return RewardOutput(total, terms)

    def forward(
        self,
        images: Float[Tensor, "B H W 3"],
        prompts: Sequence[str],
        render_out: Optional[Dict[str, Any]] = None,
    ) -> Float[Tensor, " B"]:
        """``reward(images, prompts[, render_out=...]) -> scores [B]``; see :meth:`evaluate`."""
        return self.evaluate(images, prompts, render_out=render_out).scores

    def extra_repr(self) -> str:
        ws = ", ".join(f"{n}: {w:g}" for n, w in zip(self.term_names, self.weights))
        return f"differentiable={self.differentiable}, weights={{{ws}}}"
