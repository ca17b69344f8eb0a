"""Reward backpropagation: ``loss_reward = -mean(R(render))`` for differentiable rewards.

The DDPO3D paper's "aesthetic guidance" baseline (Sharma et al. 2023, arXiv 2312.04806): the
reward's gradient flows straight into the render, like DRaFT's last step (Clark et al. 2023,
arXiv 2309.17400) without any diffusion model in between.

Geometry rewards (``needs_render_out``, e.g. ``normal-consistency``) score the renderer's other
outputs (normals, depth, opacity) rather than the RGB image: they get ``render_out`` and their
gradient reaches the geometry through those outputs. This is the only objective that can train
them: the others score denoised predictions x̂_0, which have no geometry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.typing import Any, Callable, Dict, Float, Optional, Sequence, Tensor, Tuple


@dataclass
class RewardBackpropConfig:
    """Options of the reward-backprop objective (its strength is the system's ``lambda_reward``)."""


class RewardBackprop:
    """``-mean_b R(images_b)`` with gradients into the images.

    Args:
        cfg: dict / DictConfig of :class:`RewardBackpropConfig` keys.
    """

    Config = RewardBackpropConfig

    def __init__(self, cfg: Any = None):
        if isinstance(cfg, RewardBackpropConfig):
            cfg = dataclasses.asdict(cfg)
        self.cfg = parse_structured(RewardBackpropConfig, cfg, where="reward-backprop objective")

    def update_step(self, epoch: int, global_step: int) -> None:
        """Nothing is scheduled inside the objective (its strength is ``lambda_reward``)."""

    def state_dict(self) -> Dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Nothing to restore."""

    def __call__(
        self,
        images: Float[Tensor, "B H W 3"],
        prompts: Optional[Sequence[str]],
        reward: Callable[..., Tensor],
        render_out: Optional[Dict[str, Any]] = None,
    ) -> Tuple[Tensor, Dict[str, float]]:
        """The loss and its diagnostics.

        Args:
            images: renders in [0, 1] with grad.
            prompts: one per image (None = "").
            reward: a reward with ``differentiable = True``.
            render_out: the renderer's outputs and the camera batch, passed to rewards with
                ``needs_render_out`` (``reward(images, prompts, render_out=...)``); ignored otherwise.

        Returns:
            ``(loss_reward, {"reward_mean", "reward_std"})``.

        Raises:
            ValueError: the reward is not differentiable.
        """
        if not getattr(reward, "differentiable", False):
            name = getattr(reward, "name", type(reward).__name__)
            raise ValueError(
                f"reward-backprop needs a differentiable reward, but {name!r} has differentiable=False "
                "(e.g. JPEG size): use the 'ddpo3d' policy-gradient objective for it"
            )
        prompts = [""] * images.shape[0] if prompts is None else list(prompts)
        extra = {"render_out": render_out} if getattr(reward, "needs_render_out", False) else {}
        scores = reward(images, prompts, **extra).reshape(-1)
        loss = -scores.mean()
        with torch.no_grad():
            stats = {
                "reward_mean": float(scores.mean()),
                "reward_std": float(scores.std(unbiased=False)),
            }
        return loss, stats
