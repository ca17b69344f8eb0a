"""Shared CLIP backbone for the CLIP-based rewards (aesthetic, clip-score).

* Weights come from a local checkpoint file, or an open_clip pretrained tag found in the
  Hugging Face / open_clip caches; nothing is downloaded unless ``DDPO3D_ALLOW_DOWNLOAD=1``
  (:func:`ddpo3d.weights.downloads_allowed`; never under ``HF_HUB_OFFLINE``). Missing weights raise
  :class:`ddpo3d.weights.WeightsNotFoundError`. Random weights only with an explicit
  ``allow_random_init: true`` and no weights configured (tests, benchmarks).
* Preprocessing is pure tensor ops so gradients reach the images: bicubic resize of the
  shortest side to the model's input size, centre crop, CLIP mean/std normalisation. This
  mirrors open_clip's eval transform (torchvision ``Resize(size, BICUBIC)`` +
  ``CenterCrop`` + ``Normalize``) on tensors, without antialiasing (antialias changes the
  filter when downsampling; plain bicubic keeps the op simple and differentiable).
* The model is frozen (no parameter requires grad) and in eval mode; backbones with the
  same options are shared between rewards while any of them is alive.

``open_clip`` is imported only inside :func:`load_clip`, never at ``import ddpo3d.rewards``.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import logging
import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Any, Dict, Float, List, Optional, Sequence, Tensor, Tuple, Union
from ddpo3d.weights import (
    WeightsNotFoundError,
    describe_hf_file,
    downloads_allowed,
    find_hf_file,
    open_clip_cache_dir,
)

__all__ = [
    "ClipConfig",
    "ClipBackbone",
    "clip_preprocess",
    "load_clip",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
]

#: CLIP's normalisation constants (Radford et al. 2021; open_clip ``OPENAI_DATASET_MEAN/STD``).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_TEXT_CACHE_SIZE = 4096


@dataclass
class ClipConfig:
    """CLIP options shared by the CLIP-based rewards (their ``Config`` inherits these)."""

    clip_model: str = "ViT-L-14"  # open_clip model name (open_clip.list_models())
    clip_pretrained: Optional[str] = "openai"  # open_clip pretrained tag, looked up in the caches only
    clip_checkpoint: Optional[str] = None  # local weights file (.bin/.pt/.safetensors); overrides the cache lookup
    clip_cache_dir: Optional[str] = None  # extra cache folder searched (HF layout or open_clip URL files)
    clip_quick_gelu: Optional[bool] = None  # None: as the pretrained tag says (True for 'openai')
    allow_random_init: bool = False  # tests/benchmarks only: random CLIP when no weights are configured
    random_init_seed: int = 0  # seed of the random CLIP weights
    device: Optional[str] = None  # move the model here at build time (None: CPU; use .to() later)


def clip_preprocess(
    images: Float[Tensor, "B H W 3"],
    size: Union[int, Tuple[int, int]],
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> Float[Tensor, "B 3 S S"]:
    """Differentiable CLIP preprocessing of channels-last images.

    Resize so the shortest side equals ``size`` (bicubic, ``align_corners=False``, no
    antialias; the long side is ``int(size * long / short)`` as in torchvision's
    ``Resize``), centre-crop ``size x size`` (torchvision's rounding), then
    ``(x - mean) / std``.

    Args:
        images: ``[B, H, W, 3]`` floats in ``[0, 1]``.
        size: model input size (int, or ``(h, w)``).
        mean: per-channel mean.
        std: per-channel std.

    Returns:
        ``[B, 3, S, S]`` normalised tensor (``[B, 3, h, w]`` for a tuple size).
    """
    if isinstance(size, (tuple, list)):
        out_h, out_w = int(size[0]), int(size[1])
    else:
        out_h = out_w = int(size)
    x = images.permute(0, 3, 1, 2)
    if not torch.is_floating_point(x) or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    h, w = x.shape[-2:]
    short = max(out_h, out_w)
    if h <= w:
        new_h, new_w = short, int(short * w / h)
    else:
        new_h, new_w = int(short * h / w), short
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=False)
    top = int(round((new_h - out_h) / 2.0))
    left = int(round((new_w - out_w) / 2.0))
    x = x[..., top : top + out_h, left : left + out_w]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class ClipBackbone(nn.Module):
    """A frozen open_clip model with differentiable image encoding and cached text encoding.

    Args:
        model: an open_clip ``CLIP`` model.
        tokenizer: open_clip tokenizer (callable ``list[str] -> LongTensor [N, L]``).
        mean: normalisation mean.
        std: normalisation std.
        description: what was loaded (for repr and errors).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, mean: Sequence[float], std: Sequence[float], description: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.description = description
        size = getattr(model.visual, "image_size", 224)
        self.image_size: Tuple[int, int] = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self._text_cache: "collections.OrderedDict[str, Tensor]" = collections.OrderedDict()
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "ClipBackbone":
        """Always eval (frozen feature extractor)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text embedding."""
        proj = getattr(self.model.visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(getattr(self.model, "embed_dim", None) or self.model.text_projection.shape[-1])

    def encode_images(self, images: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B D"]:
        """L2-normalised image embeddings, differentiable w.r.t. ``images``.

        Args:
            images: ``[B, H, W, 3]`` floats in ``[0, 1]``.

        Returns:
            ``[B, D]`` unit vectors (float32, on the model's device).
        """
        x = clip_preprocess(images.to(self.device, torch.float32), self.image_size, self.mean, self.std)
        return F.normalize(self.model.encode_image(x), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Float[Tensor, "B D"]:
        """L2-normalised text embeddings (no gradient), cached per prompt string.

        Args:
            prompts: ``B`` strings.

        Returns:
            ``[B, D]`` unit vectors on the model's device.
        """
        device = self.device
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tokens = self.tokenizer(list(missing)).to(device)
            emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            for p, e in zip(missing, emb):
                self._text_cache[p] = e
            while len(self._text_cache) > _TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        for p in prompts:
            self._text_cache.move_to_end(p)
        return torch.stack([self._text_cache[p].to(device) for p in prompts])

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda(): drop cached text embeddings
        self._text_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.description}, image_size={self.image_size}"


# Backbones with identical options are shared while alive (a composite of aesthetic +
# clip-score over ViT-L/14 loads the 1.7 GB model once).
_SHARED: "weakref.WeakValueDictionary[tuple, ClipBackbone]" = weakref.WeakValueDictionary()


@contextlib.contextmanager
def _quiet_open_clip():
    """Silence open_clip's root-logger chatter ("initialized randomly") for the block."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _known_model(open_clip: Any, name: str, where: str) -> None:
    known = open_clip.list_models()
    if name not in known:
        hint = difflib.get_close_matches(name, known, n=3)
        raise ConfigError(
            f"{where}: unknown open_clip model {name!r}"
            + (f"; close matches: {', '.join(hint)}" if hint else "")
            + " (open_clip.list_models() lists all)"
        )


def _find_pretrained_file(
    open_clip: Any, name: str, tag: str, cache_dir: Optional[str], where: str
) -> Tuple[Optional[str], Dict[str, Any]]:
    """Local file of ``(name, tag)`` in the caches, plus the tag's config.

    Returns ``(None, cfg)`` when the file is missing but a download is allowed (open_clip
    then downloads it); raises ``WeightsNotFoundError`` when it is missing otherwise.
    """
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(
            f"{where}: {tag!r} is not an open_clip pretrained tag of {name!r} (known tags: "
            f"{', '.join(tags) or 'none'}); for a local file set clip_checkpoint instead"
        )
    looked: List[str] = []
    hf_caches = [None] + ([cache_dir] if cache_dir else [])
    hub = pcfg.get("hf_hub") or ""
    if hub:
        # open_clip's convention: "org/repo/" means the default file names, "org/repo/file" one file
        if hub.endswith("/"):
            repo_id, filenames = hub.rstrip("/"), ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        else:
            repo_id, filename = os.path.split(hub)
            filenames = [filename]
            if filename.endswith((".bin", ".pth")):
                filenames.insert(0, filename[:-4] + ".safetensors")
        for hf_cache in hf_caches:
            for fn in filenames:
                hit = find_hf_file(repo_id, fn, cache_dir=hf_cache)
                if hit:
                    return hit, pcfg
                looked.append(describe_hf_file(repo_id, fn, hf_cache))
    url = pcfg.get("url") or ""
    if url:
        for folder in ([cache_dir] if cache_dir else []) + [open_clip_cache_dir()]:
            path = os.path.join(folder, os.path.basename(url))
            if os.path.isfile(path):
                return path, pcfg
            looked.append(f"open_clip URL cache: {path}")
    if downloads_allowed():
        return None, pcfg
    raise WeightsNotFoundError(
        f"open_clip {name} (pretrained={tag!r})",
        looked,
        f'download once where there is network access: python -c "import open_clip; '
        f"open_clip.create_model('{name}', pretrained='{tag}')\" (fills the Hugging Face cache), "
        f"or set clip_checkpoint: /path/to/weights in the reward block, or set DDPO3D_ALLOW_DOWNLOAD=1",
    )


def _load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a full CLIP checkpoint (open_clip / OpenAI state dict, safetensors or TorchScript)."""
    from open_clip.factory import load_checkpoint

    try:
        load_checkpoint(model, path, strict=True, weights_only=True)
        return
    except RuntimeError as exc:
        if "Missing key" in str(exc) or "Unexpected key" in str(exc) or "size mismatch" in str(exc):
            raise ValueError(f"CLIP checkpoint {path} does not fit the configured model: {exc}") from exc
        first_error = exc
    except Exception as exc:  # e.g. an OpenAI TorchScript archive rejected by weights_only
        first_error = exc
    try:  # OpenAI's original ViT-*.pt files are TorchScript archives
        state = torch.jit.load(path, map_location="cpu").state_dict()
    except Exception:
        raise ValueError(f"Could not read CLIP checkpoint {path}: {first_error}") from first_error
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    # TorchScript archives also hold non-persistent buffers (e.g. the causal ``attn_mask``)
    buffers = {name for name, _ in model.named_buffers()}
    state = {k: v for k, v in state.items() if k not in buffers or k in model.state_dict()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"CLIP checkpoint {path} does not fit the configured model: {exc}") from exc


def load_clip(cfg: Any, where: str = "CLIP") -> ClipBackbone:
    """Build (or reuse) the frozen CLIP backbone described by a :class:`ClipConfig`.

    Args:
        cfg: object with the :class:`ClipConfig` fields (a reward's parsed config).
        where: name of the caller for error messages.

    Returns:
        A :class:`ClipBackbone` in eval mode with frozen parameters.

    Raises:
        ConfigError: unknown model/tag, or no weights configured without ``allow_random_init``.
        WeightsNotFoundError: the configured weights are not on this machine.
    """
    name = str(cfg.clip_model)
    tag = cfg.clip_pretrained
    ckpt = os.path.expanduser(str(cfg.clip_checkpoint)) if cfg.clip_checkpoint else None
    if ckpt is None and tag is None and not cfg.allow_random_init:
        raise ConfigError(
            f"{where}: no weights configured for CLIP model {name!r}: set clip_pretrained (an open_clip "
            f"tag such as 'openai') or clip_checkpoint (a local file). Random weights only with "
            f"allow_random_init: true (tests and benchmarks)"
        )
    key = (
        name,
        tag,
        ckpt,
        cfg.clip_cache_dir,
        cfg.clip_quick_gelu,
        int(cfg.random_init_seed) if (ckpt is None and tag is None) else None,
        str(cfg.device or "cpu"),
    )
    shared = _SHARED.get(key)
    if shared is not None:
        return shared

    import open_clip

    _known_model(open_clip, name, where)
    path: Optional[str] = None
    pcfg: Dict[str, Any] = {}
    if ckpt is not None:
        if not os.path.isfile(ckpt):
            raise WeightsNotFoundError(
                f"open_clip {name} (clip_checkpoint)",
                [f"local file: {ckpt}" + (" (exists but is not a file)" if os.path.exists(ckpt) else "")],
                "point clip_checkpoint at an existing open_clip/OpenAI CLIP weights file, or unset it "
                "to use the open_clip cache via clip_pretrained",
            )
        path = ckpt
        if tag is not None:
            pcfg = open_clip.get_pretrained_cfg(name, tag) or {}
    elif tag is not None:
        path, pcfg = _find_pretrained_file(open_clip, name, str(tag), cfg.clip_cache_dir, where)
    quick_gelu = cfg.clip_quick_gelu if cfg.clip_quick_gelu is not None else bool(pcfg.get("quick_gelu", False))

    with _quiet_open_clip():
        if path is None and tag is not None:  # allowed download through open_clip
            model = open_clip.create_model(
                name, pretrained=str(tag), cache_dir=cfg.clip_cache_dir, force_quick_gelu=quick_gelu
            )
            description = f"{name} pretrained={tag!r} (downloaded)"
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(cfg.random_init_seed))
                model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
            if path is not None:
                _load_checkpoint(model, path)
                description = f"{name} weights={path}"
            else:
                description = f"{name} RANDOM weights (seed {int(cfg.random_init_seed)})"
        tokenizer = open_clip.get_tokenizer(name)
    preprocess_cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = pcfg.get("mean") or preprocess_cfg.get("mean") or OPENAI_CLIP_MEAN
    std = pcfg.get("std") or preprocess_cfg.get("std") or OPENAI_CLIP_STD
    backbone = ClipBackbone(model, tokenizer, mean, std, description)
    if cfg.device:
        backbone.to(cfg.device)
    _SHARED[key] = backbone
    return backbone
