"""A tiny seeded TAESD twin (8 channels) saved in diffusers' ``AutoencoderTiny`` folder layout.

Stands in for ``madebyollin/taesd`` wherever a shipped config names it as ``objective.reward_decoder``
(tests and reduced runs; nothing is downloaded). Built with the project's own decoder
(:mod:`ddpo3d.diffusion.tiny_decoder`), so it needs no particular diffusers version; the folder
holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` with ``decoder.*`` keys, as the
real one does (its encoder is not used by the reward path and not written).
"""

from __future__ import annotations

import json
import os

import torch

from ddpo3d.utils.typing import Optional, Sequence


def write_tiny_taesd(
    folder: str, levels: int = 2, seed: int = 0, channels: int = 8, blocks: Optional[Sequence[int]] = None
) -> str:
    """Build and save a tiny TAESD decoder to ``folder`` (once; reused when present).

    Args:
        folder: where ``config.json`` and the weights go.
        levels: decoder stages; the decoder upsamples by ``2 ** (levels - 1)`` (match the VAE it
            stands beside, e.g. 2 for the tiny SD pipeline's two-level VAE).
        seed: torch seed of the random weights.
        channels: channels of every decoder stage (TAESD: 64).
        blocks: residual blocks per stage (default one each; TAESD: ``(3, 3, 3, 1)`` with ``levels=4``).

    Returns:
        ``folder`` (a value for ``objective.reward_decoder``).
    """
    from safetensors.torch import save_file

    from ddpo3d.diffusion.tiny_decoder import TinyDecoderNet

    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    config = {
        "_class_name": "AutoencoderTiny",
        "act_fn": "relu",
        "decoder_block_out_channels": [channels] * levels,
        "encoder_block_out_channels": [channels] * levels,
        "num_decoder_blocks": list(blocks) if blocks is not None else [1] * levels,
        "num_encoder_blocks": [1] * levels,
        "latent_channels": 4,
        "in_channels": 3,
        "out_channels": 3,
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
        "scaling_factor": 1.0,
    }
    torch.manual_seed(seed)
    net = TinyDecoderNet(config)
    os.makedirs(folder, exist_ok=True)
    state = {f"decoder.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return folder
