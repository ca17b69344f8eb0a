"""A cheap decoder for reward images: TAESD's decoder in place of the SD VAE.

TAESD (Bohan 2023, github.com/madebyollin/taesd; ``madebyollin/taesd`` for SD 1.x/2.x latents)
decodes Stable Diffusion's *scaled* latents (``x_0 = 0.18215 · z``, what the objectives hold)
to images in [-1, 1] with a few conv layers: ~2 % of the SD VAE decoder's cost at 512². Its images
are a close approximation of the VAE's, good enough to score a reward on; SDS itself still uses
the full VAE encoder.

The decoder is built here from the folder's ``config.json`` (diffusers' ``AutoencoderTiny``
layout: ``decoder_block_out_channels``, ``num_decoder_blocks``, ``upsampling_scaling_factor``,
``act_fn``, ``upsample_fn``, ``latent_channels``, ``out_channels``) and loads the ``decoder.*``
tensors of its weights file, so it works with every diffusers version we support (diffusers'
own ``AutoencoderTiny`` only exists from 0.20, and threestudio 0.2.3 pins 0.19.3). Architecture:
``tanh(z/3)·3`` clamp, conv + activation, then per stage ``n`` residual blocks
(``relu(conv-act-conv-act-conv(x) + x)``), a nearest 2x upsample and a bias-free conv; the last
stage ends in a conv with bias to RGB; the output in [0, 1] is mapped to [-1, 1].

Weights follow the project's rule (:mod:`ddpo3d.weights`): a local folder in diffusers layout or a
Hugging Face repo id found in the local cache; nothing is downloaded; otherwise one
:class:`~ddpo3d.weights.WeightsNotFoundError` says where it looked and how to get it.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ddpo3d.utils.typing import Any, Dict, Float, Tensor
from ddpo3d.weights import WeightsNotFoundError, describe_hf_file, find_hf_file

TAESD_REPO = "madebyollin/taesd"
HOW_TO_GET = (
    f"huggingface-cli download {TAESD_REPO}   (SD 1.x / 2.x latents), or set objective.reward_decoder "
    "to a local AutoencoderTiny folder (config.json + weights), or to null for the full VAE"
)
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "mish": nn.Mish}


def resolve_tiny_decoder(spec: str) -> str:
    """The local folder holding an ``AutoencoderTiny`` for ``spec`` (a folder or a cached hub repo id).

    Raises:
        WeightsNotFoundError: neither exists on this machine.
    """
    path = os.path.expanduser(str(spec))
    looked = [f"local folder: {path}"]
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if spec.count("/") == 1 and not os.path.isabs(path):
        hit = find_hf_file(spec, "config.json")
        if hit is not None:
            find_hf_file(spec, WEIGHT_FILES[0])  # the weights sit beside the config in the cache snapshot
            return os.path.dirname(hit)
        looked.append(describe_hf_file(spec, "config.json"))
    raise WeightsNotFoundError(f"tiny autoencoder {spec!r} (objective.reward_decoder)", looked, HOW_TO_GET)


class TinyResBlock(nn.Module):
    """``fuse(conv(x) + x)``: three 3x3 convs with the activation between them, ReLU after the sum."""

    def __init__(self, channels: int, act: type):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            act(),
            nn.Conv2d(channels, channels, 3, padding=1),
            act(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: Float[Tensor, "B C H W"]) -> Float[Tensor, "B C H W"]:
        return self.fuse(self.conv(x) + self.skip(x))


class TinyDecoderNet(nn.Module):
    """TAESD's decoder (module names as diffusers' ``DecoderTiny``: ``layers.<i>...``).

    Args:
        config: the ``AutoencoderTiny`` ``config.json`` fields (defaults: TAESD's).
    """

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        channels = list(config.get("decoder_block_out_channels", (64, 64, 64, 64)))
        blocks = list(config.get("num_decoder_blocks", (3, 3, 3, 1)))
        act_name = str(config.get("act_fn", "relu"))
        if len(channels) != len(blocks):
            raise ValueError(
                f"tiny decoder config: decoder_block_out_channels {channels} vs num_decoder_blocks {blocks}"
            )
        if act_name not in ACTIVATIONS:
            raise ValueError(f"tiny decoder config: act_fn {act_name!r} not one of {sorted(ACTIVATIONS)}")
        if any(c != channels[0] for c in channels):
            raise ValueError(f"tiny decoder config: unequal decoder_block_out_channels {channels} are not supported")
        act = ACTIVATIONS[act_name]
        scale = int(config.get("upsampling_scaling_factor", 2))
        mode = str(config.get("upsample_fn", "nearest"))
        out_channels = int(config.get("out_channels", 3))
        layers: list = [nn.Conv2d(int(config.get("latent_channels", 4)), channels[0], 3, padding=1), act()]
        for i, (ch, n) in enumerate(zip(channels, blocks)):
            last = i == len(channels) - 1
            layers += [TinyResBlock(ch, act) for _ in range(n)]
            if not last:
                layers.append(nn.Upsample(scale_factor=scale, mode=mode))
            layers.append(nn.Conv2d(ch, out_channels if last else ch, 3, padding=1, bias=last))
        self.layers = nn.Sequential(*layers)
        self.upsampling = scale ** (len(channels) - 1)

    def forward(self, z: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Scaled latents -> images in [-1, 1] (channels first)."""
        return self.layers(torch.tanh(z / 3.0) * 3.0) * 2.0 - 1.0


def load_tiny_decoder(folder: str) -> TinyDecoderNet:
    """Build :class:`TinyDecoderNet` from ``folder/config.json`` and load its ``decoder.*`` weights.

    Args:
        folder: a diffusers ``AutoencoderTiny`` folder.

    Returns:
        The decoder in eval mode with gradients off.

    Raises:
        WeightsNotFoundError: no weights file beside the config.
        ValueError: the weights do not fit the config (names the missing / unexpected keys).
    """
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    net = TinyDecoderNet(config)
    files = [os.path.join(folder, n) for n in WEIGHT_FILES if os.path.isfile(os.path.join(folder, n))]
    if not files:
        raise WeightsNotFoundError(
            f"tiny autoencoder weights in {folder!r} (objective.reward_decoder)",
            [os.path.join(folder, n) for n in WEIGHT_FILES],
            HOW_TO_GET,
        )
    if files[0].endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(files[0])
    else:
        state = torch.load(files[0], map_location="cpu", weights_only=True)
    decoder = {k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}
    missing, unexpected = net.load_state_dict(decoder, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"tiny autoencoder {files[0]}: weights do not fit its config.json "
            f"(missing decoder keys {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return net.eval().requires_grad_(False)


class TinyLatentDecoder:
    """Decodes scaled SD latents with TAESD's decoder (held, not registered as a submodule).

    Args:
        spec: local folder or hub repo id (e.g. ``"madebyollin/taesd"``).
        device, dtype: where the decoder runs.
    """

    def __init__(self, spec: str, device: Any = "cpu", dtype: torch.dtype = torch.float32):
        self.model = load_tiny_decoder(resolve_tiny_decoder(spec)).to(device=device, dtype=dtype)
        self.dtype = dtype

    @torch.no_grad()
    def decode(self, x0: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B H W 3"]:
        """Scaled latents -> images in [0, 1], channels last."""
        x = self.model(x0.to(self.dtype)).float()
        return ((x + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)
