"""LAION improved aesthetic predictor v2 ("aesthetic").

Schuhmann et al., LAION-5B (2022) / christophschuhmann/improved-aesthetic-predictor: a
linear MLP regressor of the mean human aesthetic rating (1..10) from the L2-normalised
CLIP ViT-L/14 image embedding. The published head ``sac+logos+ava1-l14-linearMSE.pth``
(trained on SAC + LAION-Logos + AVA with MSE) is an ``nn.Sequential`` stored as ``layers``:

    0 Linear(768, 1024), 1 Dropout(0.2), 2 Linear(1024, 128), 3 Dropout(0.2),
    4 Linear(128, 64), 5 Dropout(0.1), 6 Linear(64, 16), 7 Linear(16, 1)

with no nonlinearities (``simple_inference.py`` of that repository), so its state-dict keys
are ``layers.{0,2,4,6,7}.{weight,bias}``. DDPO (Black et al. 2023, Sec. 6.1) uses the same
predictor as its aesthetic reward. Here the image path is differentiable (tensor
preprocessing in :mod:`ddpo3d.rewards.clip`), so the reward can be back-propagated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.clip import ClipBackbone, ClipConfig, load_clip
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.typing import Dict, Float, List, Optional, Tensor
from ddpo3d.weights import ddpo3d_cache_dir, resolve_weights_file, torch_hub_checkpoint_dir

__all__ = ["AestheticHead", "AestheticReward", "AESTHETIC_HEAD_FILE", "AESTHETIC_HEAD_URL", "load_aesthetic_head"]

AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
_LINEAR_IDS = (0, 2, 4, 6, 7)


def rating_layers(in_dim: int) -> nn.Sequential:
    """The rating MLP of the improved aesthetic predictor, reused by ImageReward's head: linear
    layers ``in_dim -> 1024 -> 128 -> 64 -> 16 -> 1`` with dropout between (a no-op in eval) and no
    activations; its checkpoints store them as ``layers.{0,2,4,6,7}``."""
    return nn.Sequential(
        nn.Linear(in_dim, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


class AestheticHead(nn.Module):
    """The improved-aesthetic-predictor MLP (linear layers with dropout, no activations).

    Args:
        in_dim: CLIP embedding width (768 for ViT-L/14).
    """

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = rating_layers(in_dim)

    def forward(self, emb: Float[Tensor, "B D"]) -> Float[Tensor, " B"]:
        """Predicted rating of L2-normalised embeddings ``emb`` -> ``[B]``."""
        return self.layers(emb).squeeze(-1)


def load_aesthetic_head(path: str) -> AestheticHead:
    """Load a head file in the published key layout (``layers.{0,2,4,6,7}.{weight,bias}``).

    The input width is read from ``layers.0.weight``. A ``{"state_dict": ...}`` wrapper and a
    ``module.`` prefix (DataParallel) are accepted.

    Raises:
        ValueError: the file does not hold the expected keys/shapes (names the file and keys).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"aesthetic head {path}: cannot be read by torch.load: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"aesthetic head {path}: expected a state dict, got {type(state).__name__}")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    expected = {f"layers.{i}.{p}" for i in _LINEAR_IDS for p in ("weight", "bias")}
    if set(state) != expected:
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        raise ValueError(
            f"aesthetic head {path}: not the improved-aesthetic-predictor layout "
            f"(layers.{{0,2,4,6,7}}.{{weight,bias}}); missing keys {missing}, unexpected keys {extra}"
        )
    in_dim = int(state["layers.0.weight"].shape[1])
    head = AestheticHead(in_dim)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"aesthetic head {path}: shapes do not match the predictor MLP: {exc}") from exc
    return head


@register_reward("aesthetic")
class AestheticReward(Reward):
    """LAION aesthetic score (about 1..10) of each image; prompts are ignored. Differentiable."""

    differentiable = True

    @dataclass
    class Config(ClipConfig):
        head_path: Optional[str] = (
            None  # head file: local path or "org/repo/file" in the HF cache; None: default places
        )

    clip: ClipBackbone
    head: AestheticHead

    def configure(self) -> None:
        where = f"reward {self.name!r}"
        path = resolve_weights_file(
            f"LAION aesthetic predictor head {AESTHETIC_HEAD_FILE}",
            self.cfg.head_path,
            default_locations=[
                os.path.join(ddpo3d_cache_dir(), AESTHETIC_HEAD_FILE),
                os.path.join(torch_hub_checkpoint_dir(), AESTHETIC_HEAD_FILE),
            ],
            how_to_get=(
                f"mkdir -p {ddpo3d_cache_dir()} && wget -O '{os.path.join(ddpo3d_cache_dir(), AESTHETIC_HEAD_FILE)}' "
                f"'{AESTHETIC_HEAD_URL}' , or set head_path: /path/to/{AESTHETIC_HEAD_FILE} in the reward block"
            ),
            cache_dir=self.cfg.clip_cache_dir,
        )
        self.head_file = path
        head = load_aesthetic_head(path)
        self.clip = load_clip(self.cfg, where=where)
        in_dim = head.layers[0].in_features
        if in_dim != self.clip.embed_dim:
            raise ValueError(
                f"{where}: head {path} expects {in_dim}-d embeddings but CLIP {self.cfg.clip_model!r} "
                f"produces {self.clip.embed_dim}-d ones (the published head needs ViT-L-14)"
            )
        self.head = head.to(self.clip.device)

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """``head(normalize(CLIP_image(preprocess(images))))``."""
        emb = self.clip.encode_images(images)
        return self.head(emb)

    def state_summary(self) -> Dict[str, str]:
        """Where the weights came from (for logs)."""
        return {"clip": self.clip.description, "head": self.head_file}
