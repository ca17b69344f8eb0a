"""A tiny transformers ``CLIPModel`` in PickScore's key layout, for tests and demos (offline, seeded).

PickScore v1 is a plain transformers ``CLIPModel`` checkpoint, so a ``CLIPModel`` built from a
small ``CLIPConfig`` and written with ``save_pretrained`` has the real file and key layout
(``config.json`` + ``model.safetensors``). Text: CLIP's 49408-token vocabulary, width 16, 2
layers, 77 positions; vision: 64² input, 16-px patches, width 32, 2 layers; projection 16.
"""

from __future__ import annotations

import os

import torch

from ddpo3d.utils.typing import Any

__all__ = ["build_tiny_pickscore", "write_tiny_pickscore"]


def build_tiny_pickscore(seed: int = 0) -> Any:
    """The tiny ``CLIPModel`` with seeded random weights, in eval mode (global RNG untouched)."""
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": 49408,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "eos_token_id": 49407,
        "bos_token_id": 49406,
        "pad_token_id": 49407,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    return model.eval()


def write_tiny_pickscore(path: str, seed: int = 0) -> str:
    """``save_pretrained`` the tiny model into folder ``path`` (reused if it holds a config) and return it."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        build_tiny_pickscore(seed).save_pretrained(path)
    return path
