"""The reward contract: ``reward(images [B,H,W,3] in [0,1], prompts: B strings) -> scores [B]``.

Every reward is an ``nn.Module`` with a ``name``, a ``differentiable`` flag, a nested typed
``Config`` parsed strictly, and one method to implement, :meth:`Reward.score`. Input
validation, detaching the scores of non-differentiable rewards, and the per-term report
(:class:`RewardOutput`) live here so every reward behaves the same.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.finite import check_finite_scores
from ddpo3d.utils.typing import Any, Dict, Float, List, NamedTuple, Optional, Sequence, Tensor

__all__ = ["Reward", "RewardOutput", "validate_inputs", "RANGE_TOLERANCE"]

#: Images may leave ``[0, 1]`` by this much (renderers and bicubic resampling overshoot a little).
RANGE_TOLERANCE = 1e-3


class RewardOutput(NamedTuple):
    """What :meth:`Reward.evaluate` returns.

    Attributes:
        scores: ``Float[Tensor, " B"]`` the reward per image (for a composite: the weighted sum).
        terms: per-term scores by name, each ``Float[Tensor, " B"]``. A plain reward reports
            itself under its name; a composite reports each raw term under its name and the
            weighted term under ``"<name>_weighted"``.
    """

    scores: Float[Tensor, " B"]
    terms: Dict[str, Float[Tensor, " B"]]


def validate_inputs(images: Any, prompts: Any, where: str = "reward", tolerance: float = RANGE_TOLERANCE) -> List[str]:
    """Check the reward call contract; raise ``ValueError`` naming what is wrong.

    Args:
        images: must be a floating ``torch.Tensor`` of shape ``[B, H, W, 3]`` (channels last,
            threestudio's ``comp_rgb``), finite, with values in ``[0, 1]`` up to ``tolerance``.
        prompts: a sequence (not a single string) of exactly ``B`` strings.
        where: name used in the messages.
        tolerance: allowed overshoot outside ``[0, 1]``.

    Returns:
        ``prompts`` as a list of ``str``.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{where}: images must be a torch.Tensor of shape [B, H, W, 3], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3:
        hint = ""
        if images.ndim == 4 and images.shape[1] == 3:
            hint = " (looks channels-first [B, 3, H, W]; permute to channels-last with .permute(0, 2, 3, 1))"
        elif images.ndim == 3 and images.shape[-1] == 3:
            hint = " (a single image? add the batch dimension with images[None])"
        raise ValueError(f"{where}: images must have shape [B, H, W, 3], got {list(images.shape)}{hint}")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{where}: images must be non-empty, got shape {list(images.shape)}")
    if not torch.is_floating_point(images):
        raise ValueError(
            f"{where}: images must be a floating-point tensor with values in [0, 1], got dtype "
            f"{images.dtype} (for uint8 images divide by 255: images.float() / 255)"
        )
    with torch.no_grad():
        lo, hi = torch.stack([images.min(), images.max()]).tolist()  # one device sync
    if not (lo == lo and hi == hi) or lo in (float("inf"), float("-inf")) or hi in (float("inf"), float("-inf")):
        raise ValueError(f"{where}: images contain NaN or infinite values")
    if lo < -tolerance or hi > 1.0 + tolerance:
        raise ValueError(
            f"{where}: image values must lie in [0, 1] (tolerance {tolerance:g}), got range "
            f"[{lo:.4g}, {hi:.4g}]" + (" (looks like 0..255 pixel values: divide by 255)" if hi > 2.0 else "")
        )
    if isinstance(prompts, (str, bytes)):
        raise ValueError(
            f"{where}: prompts must be a list of {images.shape[0]} strings, got a single string {prompts!r}"
        )
    try:
        prompts = list(prompts)
    except TypeError:
        raise ValueError(
            f"{where}: prompts must be a list of {images.shape[0]} strings, got {type(prompts).__name__}"
        ) from None
    if len(prompts) != images.shape[0]:
        raise ValueError(
            f"{where}: got {len(prompts)} prompts for a batch of {images.shape[0]} images; pass one prompt per image"
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"{where}: prompts[{i}] must be a str, got {type(p).__name__}: {p!r}")
    return prompts


class Reward(nn.Module):
    """Base class of every reward.

    Subclasses set ``differentiable`` (class attribute or in :meth:`configure`), define a
    nested ``@dataclass Config`` and implement :meth:`score`. The registry sets ``name``
    to the registered type name; an instance's ``name`` can be overridden (a composite
    term's ``name:`` key).

    Rewards are frozen evaluators: their parameters never require grad and they stay in
    eval mode even when a parent module calls ``.train()``, but gradients flow through them
    to the images when ``differentiable`` is true.

    Args:
        cfg: dict / OmegaConf block with the options of :attr:`Config` (no ``type`` /
            ``weight``: those belong to :func:`ddpo3d.rewards.build_reward`).
    """

    name: str = "reward"
    differentiable: bool = False

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(self, cfg: Optional[Any] = None):
        super().__init__()
        self.name = type(self).name
        self.cfg = parse_structured(self.Config, cfg, where=f"reward {self.name!r} ({type(self).__name__})")
        self.configure()
        self.freeze()

    # -- hooks -----------------------------------------------------------------------------
    def configure(self) -> None:
        """Load models / resolve options after ``self.cfg`` is parsed. Default: nothing."""

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """Compute the reward of validated inputs.

        Args:
            images: ``[B, H, W, 3]`` floats in ``[0, 1]``.
            prompts: ``B`` strings.

        Returns:
            ``Float[Tensor, " B"]`` scores.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score()")

    # -- public API ------------------------------------------------------------------------
    def evaluate(self, images: Float[Tensor, "B H W 3"], prompts: Sequence[str]) -> RewardOutput:
        """Validate the inputs, score them, and report the terms.

        Args:
            images: ``[B, H, W, 3]`` floats in ``[0, 1]``.
            prompts: ``B`` strings.

        Returns:
            :class:`RewardOutput` with ``scores`` ``[B]`` (detached unless ``differentiable``)
            and ``terms == {self.name: scores}``.
        """
        prompts = validate_inputs(images, prompts, where=f"reward {self.name!r}")
        scores = self.score(images, prompts)
        scores = self._check_scores(scores, images)
        check_finite_scores(self, scores)  # raises only inside a training step (ddpo3d.utils.finite)
        return RewardOutput(scores, {self.name: scores})

    def forward(self, images: Float[Tensor, "B H W 3"], prompts: Sequence[str]) -> Float[Tensor, " B"]:
        """``reward(images, prompts) -> scores [B]``; see :meth:`evaluate`."""
        return self.evaluate(images, prompts).scores

    # -- helpers ---------------------------------------------------------------------------
    def _check_scores(self, scores: Any, images: Tensor) -> Tensor:
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"reward {self.name!r}: score() returned {type(scores).__name__}, not a tensor")
        if scores.shape != (images.shape[0],):
            raise ValueError(
                f"reward {self.name!r}: scores must have shape [{images.shape[0]}], got {list(scores.shape)}"
            )
        if not self.differentiable:
            scores = scores.detach()
        return scores.to(images.device)  # scores live where the images do (grad flows through .to)

    @property
    def device(self) -> torch.device:
        """Device of the reward's parameters/buffers (CPU when it has none)."""
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def freeze(self) -> "Reward":
        """No parameter requires grad; every submodule in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "Reward":
        """Rewards stay in eval mode (no dropout) whatever ``mode`` a parent passes."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, differentiable={self.differentiable}"
