"""Human Preference Score v2 / v2.1 ("hpsv2"): a preference-tuned open_clip ViT-H-14.

HPSv2 (Wu et al. 2023, arXiv 2306.09341) fine-tunes open_clip ViT-H-14 (laion2B-s32B-b79K) on
human preference pairs; the score is the raw cosine of the L2-normalised image and prompt
embeddings (the package's ``score`` multiplies ``image_features @ text_features.T``, whose
diagonal is this cosine; papers often report it x100). Weights: the hub repo ``xswu/HPSv2``,
``HPS_v2.1_compressed.pt`` (default) or ``HPS_v2_compressed.pt`` (``version: v2.0``), a
``torch.save`` of ``{"state_dict": <open_clip CLIP state dict>}``. They are looked up in the
Hugging Face cache (or a local ``checkpoint`` path); nothing is downloaded unless
``DDPO3D_ALLOW_DOWNLOAD=1``; missing weights raise one :class:`ddpo3d.weights.WeightsNotFoundError`.
The ``hpsv2`` package is not used (its runtime requirements pin old packages).

Preprocessing is HPSv2's evaluation transform (open_clip's ``ResizeMaxSize`` + ``Normalize``)
in tensor ops, so gradients reach the images: resize so the LONGEST side equals the model's
input size (bicubic, sizes rounded), pad the short side symmetrically with black (0 before
normalisation; the extra pixel, if any, on the right / bottom), then CLIP mean/std.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipBackbone, _known_model, _quiet_open_clip
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Float, List, Optional, Sequence, Tensor
from ddpo3d.weights import resolve_weights_file

__all__ = ["HPSv2Reward", "longest_side_preprocess", "HPS_FILES"]

#: checkpoint file in the ``xswu/HPSv2`` hub repo per version.
HPS_FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}
HPS_REPO = "xswu/HPSv2"


def longest_side_preprocess(
    images: Float[Tensor, "B H W 3"],
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    fill: float = 0.0,
) -> Float[Tensor, "B 3 S S"]:
    """HPSv2's eval transform on channels-last tensors, differentiable.

    ``scale = size / max(H, W)``, new size ``(round(H·scale), round(W·scale))`` (bicubic,
    ``align_corners=False``, no antialias), padding ``[left, top] = [pad_w // 2, pad_h // 2]``
    and the rest on the right / bottom with ``fill``, then ``(x - mean) / std``.

    Args:
        images: ``[B, H, W, 3]`` in [0, 1].
        size: the model's square input size.
        mean, std: normalisation.
        fill: padding value in [0, 1] units.

    Returns:
        ``[B, 3, size, size]``.
    """
    x = images.permute(0, 3, 1, 2)
    if not torch.is_floating_point(x) or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=False)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@register_reward("hpsv2")
class HPSv2Reward(Reward):
    """HPSv2.1 (or v2.0) preference score: cosine of image and prompt embeddings. Differentiable."""

    differentiable = True

    @dataclass
    class Config:
        version: str = "v2.1"  # "v2.1" (HPS_v2.1_compressed.pt) | "v2.0" (HPS_v2_compressed.pt)
        checkpoint: Optional[str] = None  # local file or hub spec "org/repo/file"; None = xswu/HPSv2 in the HF cache
        clip_model: str = "ViT-H-14"  # open_clip architecture the checkpoint was trained on
        cache_dir: Optional[str] = None  # Hugging Face cache to search (default: HF_HUB_CACHE / HF_HOME)
        allow_random_init: bool = False  # tests/demos only: random weights instead of a checkpoint
        random_init_seed: int = 0  # seed of the random weights
        device: Optional[str] = None  # move the model here at build time (None: CPU)

    clip: ClipBackbone

    def configure(self) -> None:
        cfg = self.cfg
        where = f"reward {self.name!r}"
        if cfg.version not in HPS_FILES:
            raise ConfigError(f"{where}: version must be one of {sorted(HPS_FILES)}, got {cfg.version!r}")
        import open_clip

        _known_model(open_clip, str(cfg.clip_model), where)
        path = None
        if not (cfg.allow_random_init and cfg.checkpoint is None):
            filename = HPS_FILES[cfg.version]
            path = resolve_weights_file(
                f"HPS{cfg.version} ({HPS_REPO}/{filename})",
                cfg.checkpoint,
                default_hf=[(HPS_REPO, filename)],
                how_to_get=(
                    f"download once where there is network access: huggingface-cli download {HPS_REPO} {filename} "
                    f"(fills the Hugging Face cache), or set checkpoint: /path/to/{filename} in the reward block, "
                    "or set DDPO3D_ALLOW_DOWNLOAD=1"
                ),
                cache_dir=cfg.cache_dir,
            )
        with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.random_init_seed))
            model = open_clip.create_model(str(cfg.clip_model), pretrained=None)
        if path is not None:
            load_hps_checkpoint(model, path, where)
            description = f"HPS{cfg.version} {cfg.clip_model} weights={path}"
        else:
            description = f"HPS {cfg.clip_model} RANDOM weights (seed {int(cfg.random_init_seed)})"
        tokenizer = open_clip.get_tokenizer(str(cfg.clip_model))
        self.clip = ClipBackbone(model, tokenizer, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, description)
        if cfg.device:
            self.clip.to(cfg.device)

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """Cosine of the normalised image (longest-side resize + pad) and prompt embeddings."""
        x = longest_side_preprocess(
            images.to(self.clip.device, torch.float32), self.clip.image_size[0], self.clip.mean, self.clip.std
        )
        img = F.normalize(self.clip.model.encode_image(x), dim=-1)
        txt = self.clip.encode_text(prompts)
        return (img * txt).sum(dim=-1)


def load_hps_checkpoint(model: torch.nn.Module, path: str, where: str) -> None:
    """Load ``{"state_dict": ...}`` (or a bare state dict; a ``module.`` prefix is dropped) strictly."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{where}: could not read HPS checkpoint {path}: {exc}") from exc
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{where}: HPS checkpoint {path} holds no state dict (got {type(blob).__name__})")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{where}: HPS checkpoint {os.path.basename(path)} does not fit open_clip model "
            f"{type(model).__name__} ({path}): {exc}"
        ) from exc
