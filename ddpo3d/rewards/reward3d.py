"""DreamReward's multi-view reward Reward3D ("reward3d").

Ye et al., "DreamReward: Text-to-3D Generation with Human Preference" (ECCV 2024, arXiv
2403.14613, Sec. 3.2); weights ``yejunliang23/Reward3D`` (``Reward3D_Scorer.pt``,
``Reward3D_CrossViewFusion.pt``). Both variants start like ImageReward (BLIP ViT-L/16 + MED
text encoder, :mod:`ddpo3d.rewards.blip`): each view ``v`` of an object gives the [CLS]
feature ``f_v`` (768-d) of its *view-dependent* prompt grounded on that view (prompts
tokenised to 100 tokens). They differ in how the 4 views are fused:

``variant: Reward3D_Scorer`` (the paper's model)
    ``g_v = MLP[:3](f_v)`` (ImageReward's MLP up to its 128-d layer), the four ``g_v``
    concatenated in view order (512-d) -> ``Scorer``: Linear 512->256 -> 64 -> 1 (dropout
    between, no activations); ``out = (r - 0.16717362830052426) / 1.0333394966054072``.

``variant: Reward3D_CrossViewFusion`` (released later as an extension)
    self-attention across the 4 view features (``nn.MultiheadAttention``, 12 heads, views as the
    sequence), a sigmoid gate ``a = σ(W [f; attn(f)])`` mixing ``a·attn + (1-a)·f``, mean over
    views, then ImageReward's whole MLP to a scalar; ``out = (r - 0.16717362830052426) / 5``.

Which to use: the Scorer is what the paper evaluates and what DreamReward's configs default to;
the fusion variant lets views exchange information before the head (a view can be judged with
the others in mind) and has a 5x smaller output scale, so DreamFL's hinge threshold means a
different thing with it. Both are differentiable.

View contract: the batch holds whole objects, 4 views each, consecutive: views ``4k..4k+3``
are object ``k``, in the order the multi-view camera datamodule yields them (MVDream's
``random-multiview-camera-datamodule``: azimuths increasing by 90° from a random start). A
batch that is not a multiple of 4 is an error. The reward is per object; each of its 4 views
receives the object's score (so ``scores`` keeps the ``[B]`` reward contract).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from ddpo3d.rewards.blip import BlipReward, BlipRewardConfig
from ddpo3d.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD, ImageRewardMLP
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Float, List, Optional, Tensor, Tuple
from ddpo3d.weights import ddpo3d_cache_dir

__all__ = ["Reward3D", "Reward3DScorerHead", "CrossViewFusion", "REWARD3D_VARIANTS", "REWARD3D_VIEWS"]

REWARD3D_REPO = "yejunliang23/Reward3D"
#: number of views per object both released variants were trained with
REWARD3D_VIEWS = 4
#: variant -> (checkpoint file, mean, std) as in DreamReward's ``Reward3D/Reward3D.py``
REWARD3D_VARIANTS = {
    "Reward3D_Scorer": ("Reward3D_Scorer.pt", IMAGEREWARD_MEAN, IMAGEREWARD_STD),
    "Reward3D_CrossViewFusion": ("Reward3D_CrossViewFusion.pt", IMAGEREWARD_MEAN, 5.0),
}


class Reward3DScorerHead(nn.Module):
    """The paper's Scorer: Linear(4·128 -> 256) -> Linear(256 -> 64) -> Linear(64 -> 1), dropout between."""

    def __init__(self, in_dim: int = REWARD3D_VIEWS * 128):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, 256)
        self.dropout1 = nn.Dropout(0.2)
        self.fc2 = nn.Linear(256, 64)
        self.dropout2 = nn.Dropout(0.2)
        self.fc3 = nn.Linear(64, 1)

    def forward(self, x: Float[Tensor, "N F"]) -> Float[Tensor, "N 1"]:
        return self.fc3(self.dropout2(self.fc2(self.dropout1(self.fc1(x)))))


class CrossViewFusion(nn.Module):
    """Attention across the views of each object, gated residual fusion, mean over views.

    Args:
        width: feature width (768).
        heads: attention heads (12 in the release).
        views: views per object.
    """

    def __init__(self, width: int = 768, heads: int = 12, views: int = REWARD3D_VIEWS):
        super().__init__()
        self.views = views
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=0.1, batch_first=False)
        self.fusion_gate = nn.Sequential(nn.Linear(2 * width, width), nn.Sigmoid())

    def forward(self, x: Float[Tensor, "B D"]) -> Float[Tensor, "N D"]:
        """``x``: per-view features, objects' views consecutive -> one fused feature per object."""
        seq = x.view(-1, self.views, x.shape[-1]).transpose(0, 1)  # [V, N, D]: views are the sequence
        attn, _ = self.self_attn(seq, seq, seq, need_weights=False)
        gate = self.fusion_gate(torch.cat([seq, attn], dim=-1))
        return (gate * attn + (1 - gate) * seq).mean(dim=0)


@register_reward("reward3d")
class Reward3D(BlipReward):
    """DreamReward's Reward3D; one score per object of 4 consecutive views, repeated per view."""

    @dataclass
    class Config(BlipRewardConfig):
        variant: str = "Reward3D_Scorer"  # Reward3D_Scorer (the paper's) | Reward3D_CrossViewFusion
        max_length: int = 100  # prompt tokens (DreamReward tokenises view-dependent prompts to 100)
        fusion_heads: int = 12  # attention heads of Reward3D_CrossViewFusion
        mean: Optional[float] = None  # None: the variant's (0.16717362830052426)
        std: Optional[float] = None  # None: the variant's (Scorer 1.0333394966054072, CrossViewFusion 5)

    mlp: ImageRewardMLP

    @property
    def max_length(self) -> int:
        return int(self.cfg.max_length)

    def build_heads(self) -> None:
        if self.cfg.variant not in REWARD3D_VARIANTS:
            raise ConfigError(
                f"reward {self.name!r}: variant must be one of {sorted(REWARD3D_VARIANTS)}, got {self.cfg.variant!r}"
            )
        width = self.blip_cfg.text_width
        self.mlp = ImageRewardMLP(width)
        if self.cfg.variant == "Reward3D_Scorer":
            self.Scorer = Reward3DScorerHead(REWARD3D_VIEWS * 128)
        else:
            if width % self.cfg.fusion_heads:
                raise ConfigError(f"reward {self.name!r}: fusion_heads {self.cfg.fusion_heads} does not divide {width}")
            self.cross_view_adapter = CrossViewFusion(width, self.cfg.fusion_heads, REWARD3D_VIEWS)
        _, mean, std = REWARD3D_VARIANTS[self.cfg.variant]
        self.mean = float(mean if self.cfg.mean is None else self.cfg.mean)
        self.std = float(std if self.cfg.std is None else self.cfg.std)

    def checkpoint_places(self) -> Tuple[str, List[str], List[Tuple[str, str]], str]:
        fname = REWARD3D_VARIANTS[self.cfg.variant][0]
        local = [os.path.join(ddpo3d_cache_dir(), fname), os.path.join("checkpoints", fname)]
        how = (
            f"huggingface-cli download {REWARD3D_REPO} {fname} (lands in the HF cache), "
            f"or set checkpoint: /path/to/{fname} in the reward block"
        )
        return f"DreamReward {self.cfg.variant} ({REWARD3D_REPO}/{fname})", local, [(REWARD3D_REPO, fname)], how

    def object_scores(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " N"]:
        """One normalised reward per object (``N = B / 4``)."""
        B = images.shape[0]
        if B % REWARD3D_VIEWS:
            raise ValueError(
                f"reward {self.name!r}: Reward3D scores objects of {REWARD3D_VIEWS} views (consecutive in the batch, "
                f"in the multi-view datamodule's azimuth order), but got a batch of {B} images; use n_view: 4 and a "
                "batch size that is a multiple of 4"
            )
        f = self.view_features(images, prompts)
        if self.cfg.variant == "Reward3D_Scorer":
            g = self.mlp.features_128(f).reshape(B // REWARD3D_VIEWS, REWARD3D_VIEWS * 128)  # view order kept
            r = self.Scorer(g)
        else:
            r = self.mlp(self.cross_view_adapter(f))
        return (r.squeeze(-1) - self.mean) / self.std

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """The object's reward, repeated for each of its 4 views."""
        return self.object_scores(images, prompts).repeat_interleave(REWARD3D_VIEWS)
