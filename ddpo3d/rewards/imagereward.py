"""ImageReward v1.0 ("imagereward"): human-preference score of an image for a prompt.

Xu et al., "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image
Generation" (NeurIPS 2023, arXiv 2304.05977); weights ``THUDM/ImageReward`` (``ImageReward.pt``
with ``med_config.json``, whose sizes are :class:`ddpo3d.rewards.blip.BlipConfig`'s defaults).

    f   = MED_text([CLS] prompt | ViT-L/16(image))[:, 0]          # 768-d, see ddpo3d.rewards.blip
    r   = MLP(f)                                                    # 768 -> 1024 -> 128 -> 64 -> 16 -> 1
    out = (r - 0.16717362830052426) / 1.0333394966054072

The MLP is linear (dropout between the layers, no activations) and stored as ``mlp.layers``
(``layers.{0,2,4,6,7}``); the prompt is tokenised to 35 tokens (padded / truncated), as in
ImageReward's ``score``. The mean/std normalise the reward to about zero mean and unit std over
ImageReward's training set. Gradients reach the images (tensor preprocessing), as ReFL uses them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.nn as nn

from ddpo3d.rewards.aesthetic import rating_layers
from ddpo3d.rewards.blip import BlipReward, BlipRewardConfig
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.typing import Float, List, Tensor, Tuple
from ddpo3d.weights import ddpo3d_cache_dir

__all__ = ["ImageRewardMLP", "ImageReward", "IMAGEREWARD_MEAN", "IMAGEREWARD_STD", "IMAGEREWARD_FILE"]

#: ``ImageReward.mean`` / ``ImageReward.std`` of ``THUDM/ImageReward``'s ``ImageReward.py``.
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_REPO = "THUDM/ImageReward"


class ImageRewardMLP(nn.Module):
    """ImageReward's head: linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (dropout between, in eval no-op).

    Args:
        in_dim: width of the text [CLS] feature (768).
    """

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = rating_layers(in_dim)  # the aesthetic predictor's stack, same key names

    def forward(self, x: Float[Tensor, "B D"]) -> Float[Tensor, "B 1"]:
        return self.layers(x)

    def features_128(self, x: Float[Tensor, "B D"]) -> Float[Tensor, "B 128"]:
        """Output of the second linear layer (``layers[2]``, 128-d): Reward3D Scorer's per-view feature."""
        return self.layers[2](self.layers[1](self.layers[0](x)))


@register_reward("imagereward")
class ImageReward(BlipReward):
    """ImageReward v1.0 score per (image, prompt); about N(0, 1) on its training data. Differentiable."""

    @dataclass
    class Config(BlipRewardConfig):
        max_length: int = 35  # prompt tokens (ImageReward pads / truncates to 35)
        mean: float = IMAGEREWARD_MEAN  # subtracted from the MLP output
        std: float = IMAGEREWARD_STD  # divides (r - mean)

    mlp: ImageRewardMLP

    @property
    def max_length(self) -> int:
        return int(self.cfg.max_length)

    def build_heads(self) -> None:
        self.mlp = ImageRewardMLP(self.blip_cfg.text_width)

    def checkpoint_places(self) -> Tuple[str, List[str], List[Tuple[str, str]], str]:
        local = [
            os.path.join(os.path.expanduser("~"), ".cache", "ImageReward", IMAGEREWARD_FILE),  # the package's root
            os.path.join(ddpo3d_cache_dir(), IMAGEREWARD_FILE),
        ]
        how = (
            f"huggingface-cli download {IMAGEREWARD_REPO} {IMAGEREWARD_FILE} (lands in the HF cache), "
            f"or set checkpoint: /path/to/{IMAGEREWARD_FILE} in the reward block"
        )
        return (
            f"ImageReward v1.0 ({IMAGEREWARD_REPO}/{IMAGEREWARD_FILE})",
            local,
            [(IMAGEREWARD_REPO, IMAGEREWARD_FILE)],
            how,
        )

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """``(MLP(f) - mean) / std`` per image."""
        r = self.mlp(self.view_features(images, prompts)).squeeze(-1)
        return (r - self.cfg.mean) / self.cfg.std
