"""Image-text alignment: cosine similarity of CLIP embeddings ("clip-score").

Default: ``cos(E_I(x), E_T(c))`` in ``[-1, 1]`` (Radford et al. 2021). With
``clipscore: true`` the CLIPScore form of Hessel et al. 2021 (EMNLP, Eq. 1),
``CLIP-S = w * max(cos, 0)``, with ``w = clipscore_scale``. Hessel et al. use ``w = 2.5``;
the default here is ``w = 100``, the "x100 clipped" convention of torchmetrics'
``CLIPScore`` that papers on text-to-3D report. The image path is differentiable; text
embeddings are computed without gradient and cached per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.clip import ClipBackbone, ClipConfig, load_clip
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.typing import Float, List, Tensor

__all__ = ["ClipScoreReward"]


@register_reward("clip-score")
class ClipScoreReward(Reward):
    """CLIP image-prompt cosine similarity (or CLIPScore). Differentiable."""

    differentiable = True

    @dataclass
    class Config(ClipConfig):
        clipscore: bool = False  # True: clipscore_scale * max(cos, 0) (Hessel et al. 2021) instead of cos
        clipscore_scale: float = 100.0  # w in CLIPScore; 100 as torchmetrics, 2.5 as in Hessel et al.

    clip: ClipBackbone

    def configure(self) -> None:
        self.clip = load_clip(self.cfg, where=f"reward {self.name!r}")

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """Cosine of normalised image and text embeddings, optionally as CLIPScore."""
        img = self.clip.encode_images(images)
        txt = self.clip.encode_text(prompts)
        cos = (img * txt).sum(dim=-1)
        if self.cfg.clipscore:
            return float(self.cfg.clipscore_scale) * cos.clamp(min=0.0)
        return cos
