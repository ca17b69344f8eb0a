"""A cheap decoder for reward images: a diffusers ``AutoencoderTiny`` (TAESD) in place of the SD VAE.

TAESD (Bohan 2023, github.com/madebyollin/taesd; ``madebyollin/taesd`` for SD 1.x/2.x latents)
decodes Stable Diffusion's *scaled* latents (``x_0 = 0.18215 · z``, what the objectives hold)
to images in [-1, 1] with a few conv layers: ~2 % of the SD VAE decoder's cost at 512². Its images
are a close approximation of the VAE's, good enough to score a reward on; SDS itself still uses
the full VAE encoder.

Weights follow the project's rule (:mod:`ddpo3d.weights`): a local folder in diffusers layout or a
Hugging Face repo id found in the local cache; nothing is downloaded; otherwise one
:class:`~ddpo3d.weights.WeightsNotFoundError` says where it looked and how to get it.
"""

from __future__ import annotations

import os

import torch

from ddpo3d.utils.typing import Any, Float, Tensor
from ddpo3d.weights import WeightsNotFoundError, describe_hf_file, find_hf_file

TAESD_REPO = "madebyollin/taesd"
HOW_TO_GET = (
    f"huggingface-cli download {TAESD_REPO}   (SD 1.x / 2.x latents), or set objective.reward_decoder "
    "to a local AutoencoderTiny folder (config.json + weights), or to null for the full VAE"
)


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
            return os.path.dirname(hit)
        looked.append(describe_hf_file(spec, "config.json"))
    raise WeightsNotFoundError(f"tiny autoencoder {spec!r} (objective.reward_decoder)", looked, HOW_TO_GET)


class TinyLatentDecoder:
    """Decodes scaled SD latents with an ``AutoencoderTiny`` (held, not registered as a submodule).

    Args:
        spec: local folder or hub repo id (e.g. ``"madebyollin/taesd"``).
        device, dtype: where the decoder runs.
    """

    def __init__(self, spec: str, device: Any = "cpu", dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderTiny

        folder = resolve_tiny_decoder(spec)
        self.model = AutoencoderTiny.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        self.model.to(device).eval().requires_grad_(False)
        self.dtype = dtype

    @torch.no_grad()
    def decode(self, x0: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B H W 3"]:
        """Scaled latents -> images in [0, 1], channels last."""
        x = self.model.decode(x0.to(self.dtype)).sample.float()
        return ((x + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)
