"""A tiny seeded ``AutoencoderTiny`` (TAESD's architecture, 8 channels) saved in diffusers layout.

Stands in for ``madebyollin/taesd`` wherever a shipped config names it as ``objective.reward_decoder``
(tests and reduced runs; nothing is downloaded).
"""

from __future__ import annotations

import os

import torch


def write_tiny_taesd(folder: str, levels: int = 2, seed: int = 0) -> str:
    """Build and save a tiny ``AutoencoderTiny`` to ``folder`` (once; reused when present).

    Args:
        folder: where ``config.json`` and the weights go.
        levels: decoder stages; the decoder upsamples by ``2 ** (levels - 1)`` (match the VAE it
            stands beside, e.g. 2 for the tiny SD pipeline's two-level VAE).
        seed: torch seed of the random weights.

    Returns:
        ``folder`` (a value for ``objective.reward_decoder``).
    """
    from diffusers import AutoencoderTiny

    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    torch.manual_seed(seed)
    model = AutoencoderTiny(
        encoder_block_out_channels=(8,) * levels,
        decoder_block_out_channels=(8,) * levels,
        num_encoder_blocks=(1,) * levels,
        num_decoder_blocks=(1,) * levels,
        latent_channels=4,
    )
    model.save_pretrained(folder)
    return folder
