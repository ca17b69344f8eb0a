"""Tiny BLIP reward files for tests and CPU runs: a vocabulary and checkpoints in the real key layout.

:func:`write_tiny_blip_reward` writes ``vocab.txt`` (BERT's special tokens plus a few words)
and a checkpoint whose keys are those of the published ``ImageReward.pt`` /
``Reward3D_*.pt`` files (``blip.visual_encoder.*``, ``blip.text_encoder.*``,
``blip.vision_proj.*``, ``blip.text_proj.*``, ``mlp.layers.*`` and ``Scorer.*`` or
``cross_view_adapter.*``) at tiny sizes, and returns the reward block that loads them.
Nothing is downloaded; the weights are seeded random.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ddpo3d.utils.typing import Any, Dict, List, Optional

__all__ = ["TINY_VOCAB", "TINY_BLIP", "write_tiny_vocab", "tiny_reward_state_dict", "write_tiny_blip_reward"]

#: BERT special tokens first ([PAD] = 0 as in bert-base-uncased), then lower-case words and pieces.
TINY_VOCAB: List[str] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a an the of , . red blue green cat dog teapot chair car house side front back overhead view "
    "delicate porcelain cup made wood metal toy ##s ##ed ##ing"
).split()

#: tiny backbone sizes (BlipConfig keys); vocab_size = len(TINY_VOCAB) + [DEC] + [ENC]
TINY_BLIP: Dict[str, Any] = {
    "image_size": 32,
    "patch_size": 16,
    "vision_width": 24,
    "vision_depth": 2,
    "vision_heads": 2,
    "text_width": 24,
    "text_layers": 2,
    "text_heads": 2,
    "text_intermediate": 48,
    "vocab_size": len(TINY_VOCAB) + 2,
    "max_position_embeddings": 128,
    "embed_dim": 8,
}


def write_tiny_vocab(folder: str) -> str:
    """Write ``vocab.txt`` into ``folder``; returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(TINY_VOCAB) + "\n")
    return path


def tiny_reward_state_dict(kind: str = "imagereward", variant: str = "Reward3D_Scorer", seed: int = 0) -> dict:
    """A seeded state dict in the published key layout at :data:`TINY_BLIP` sizes.

    Args:
        kind: ``imagereward`` or ``reward3d``.
        variant: for ``reward3d``: ``Reward3D_Scorer`` or ``Reward3D_CrossViewFusion``.
        seed: RNG seed of the weights.
    """
    from ddpo3d.rewards.blip import BlipBackbone, parse_blip_config
    from ddpo3d.rewards.imagereward import ImageRewardMLP
    from ddpo3d.rewards.reward3d import CrossViewFusion, Reward3DScorerHead

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        holder = nn.Module()
        holder.blip = BlipBackbone(parse_blip_config(TINY_BLIP, "tiny BLIP"))
        holder.mlp = ImageRewardMLP(TINY_BLIP["text_width"])
        if kind == "reward3d":
            if variant == "Reward3D_Scorer":
                holder.Scorer = Reward3DScorerHead()
            else:
                holder.cross_view_adapter = CrossViewFusion(TINY_BLIP["text_width"], 12)
        elif kind != "imagereward":
            raise ValueError(f"kind must be 'imagereward' or 'reward3d', got {kind!r}")
        for name, p in holder.named_parameters():  # O(1) activations so rewards vary with the inputs
            if p.ndim >= 2 and "embed" not in name:
                nn.init.normal_(p, std=1.0 / p.shape[-1] ** 0.5)
        return {k: v.clone() for k, v in holder.state_dict().items()}


def write_tiny_blip_reward(
    folder: str, kind: str = "imagereward", variant: str = "Reward3D_Scorer", seed: int = 0, name: Optional[str] = None
) -> Dict[str, Any]:
    """Write a tiny checkpoint + vocabulary into ``folder`` and return the reward block loading them."""
    os.makedirs(folder, exist_ok=True)
    vocab = write_tiny_vocab(folder)
    fname = name or ("ImageReward.pt" if kind == "imagereward" else f"{variant}.pt")
    path = os.path.join(folder, fname)
    torch.save(tiny_reward_state_dict(kind, variant, seed), path)
    block: Dict[str, Any] = {"type": kind, "checkpoint": path, "tokenizer": vocab, "backbone": dict(TINY_BLIP)}
    if kind == "reward3d":
        block["variant"] = variant
    return block
