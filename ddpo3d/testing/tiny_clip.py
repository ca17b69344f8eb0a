"""A tiny open_clip model for tests and benchmarks (offline, seeded, ~0.85 M params).

After :func:`register_tiny_clip` (the product never registers it: tests and benchmarks do),
the config is known to open_clip under :data:`TINY_CLIP_NAME`, so reward blocks can name it
like any open_clip model::

    {type: clip-score, clip_model: ddpo3d-tiny-clip, clip_pretrained: null, allow_random_init: true}

or point ``clip_checkpoint`` at a file written by :func:`write_tiny_clip_checkpoint`.
The tokenizer is open_clip's ``SimpleTokenizer`` over its bundled BPE vocabulary (offline).
Random weights are never a fallback: a reward config has to ask for them explicitly.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
import torch.nn as nn

from ddpo3d.utils.typing import Any, Dict, Optional

__all__ = [
    "TINY_CLIP_NAME",
    "TINY_CLIP_CONFIG",
    "TINY_CLIP_EMBED_DIM",
    "register_tiny_clip",
    "build_tiny_clip",
    "tiny_clip_options",
    "write_tiny_clip_checkpoint",
    "aesthetic_head_state_dict",
    "write_aesthetic_head",
]

TINY_CLIP_NAME = "ddpo3d-tiny-clip"
TINY_CLIP_EMBED_DIM = 16

#: open_clip model config: ViT (64² input, 16-px patches, width 32, 2 layers, 2 heads) and a
#: text transformer (width 16, 2 layers, CLIP's 49408-token vocabulary, context 77).
TINY_CLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": TINY_CLIP_EMBED_DIM,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}

_registered_dir: Optional[str] = None


def register_tiny_clip() -> str:
    """Register :data:`TINY_CLIP_CONFIG` with open_clip (idempotent).

    open_clip reads model configs from JSON files, so the config is written to a private
    temporary folder that is added with ``open_clip.add_model_config``.

    Returns:
        The model name, :data:`TINY_CLIP_NAME`.
    """
    global _registered_dir
    import open_clip

    if TINY_CLIP_NAME in open_clip.list_models():
        return TINY_CLIP_NAME
    folder = tempfile.mkdtemp(prefix="ddpo3d-tiny-clip-")
    with open(os.path.join(folder, f"{TINY_CLIP_NAME}.json"), "w") as f:
        json.dump(TINY_CLIP_CONFIG, f)
    open_clip.add_model_config(folder)
    _registered_dir = folder
    return TINY_CLIP_NAME


def build_tiny_clip(seed: int = 0) -> nn.Module:
    """The tiny open_clip ``CLIP`` model with seeded random weights, in eval mode.

    The global RNG state is left untouched.

    Args:
        seed: weight-init seed.

    Returns:
        An open_clip ``CLIP`` model (input 64x64, embedding width 16). Preprocess with
        :func:`ddpo3d.rewards.clip.clip_preprocess`.
    """
    import logging

    import open_clip

    name = register_tiny_clip()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None)
    finally:
        logging.disable(previous)
    return model.eval()


def tiny_clip_options(seed: int = 0) -> Dict[str, Any]:
    """Reward-block options selecting the tiny CLIP with seeded random weights (registers it first)."""
    register_tiny_clip()
    return {
        "clip_model": TINY_CLIP_NAME,
        "clip_pretrained": None,
        "allow_random_init": True,
        "random_init_seed": int(seed),
    }


def write_tiny_clip_checkpoint(path: str, seed: int = 0) -> str:
    """Save the seeded tiny CLIP's state dict to ``path`` (for ``clip_checkpoint:``)."""
    torch.save(build_tiny_clip(seed).state_dict(), path)
    return path


def aesthetic_head_state_dict(in_dim: int = 768, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights in the key layout of LAION's ``sac+logos+ava1-l14-linearMSE.pth``.

    The published head is ``nn.Sequential`` of Linear(in, 1024), Dropout, Linear(1024, 128),
    Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1) stored under an
    attribute ``layers``, so its keys are ``layers.{0,2,4,6,7}.{weight,bias}``
    (christophschuhmann/improved-aesthetic-predictor, ``simple_inference.py``).
    """
    gen = torch.Generator().manual_seed(seed)
    dims = [(in_dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state: Dict[str, torch.Tensor] = {}
    for idx, (i, o) in zip([0, 2, 4, 6, 7], dims):
        bound = 1.0 / i**0.5  # nn.Linear's default init range
        state[f"layers.{idx}.weight"] = (torch.rand(o, i, generator=gen) * 2 - 1) * bound
        state[f"layers.{idx}.bias"] = (torch.rand(o, generator=gen) * 2 - 1) * bound
    return state


def write_aesthetic_head(path: str, in_dim: int = TINY_CLIP_EMBED_DIM, seed: int = 0) -> str:
    """Write a random aesthetic head (real key layout, input width ``in_dim``) to ``path``."""
    torch.save(aesthetic_head_state_dict(in_dim, seed), path)
    return path
