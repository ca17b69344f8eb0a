"""PickScore v1 ("pickscore"): a CLIP-H fine-tuned on Pick-a-Pic preferences, via transformers.

PickScore (Kirstain et al. 2023, arXiv 2305.01569): ``s(x, c) = exp(τ) · cos(E_I(x), E_T(c))``
with τ the model's ``logit_scale`` (≈ 100 · cos for the published weights). The weights are the
transformers ``CLIPModel`` checkpoint ``yuvalkirstain/PickScore_v1``; its reference code
preprocesses with the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor: shortest side resized
to 224 (bicubic), centre crop 224, CLIP mean/std. That is done here in tensor ops
(:func:`ddpo3d.rewards.clip.clip_preprocess`), so gradients reach the images; text is tokenized
with padding to the longest prompt, truncated at 77 tokens.

Loading is offline: ``model`` is a local folder or a hub repo id found in the Hugging Face cache
(``local_files_only``); nothing is downloaded unless ``DDPO3D_ALLOW_DOWNLOAD=1``. The tokenizer is
read from ``tokenizer`` (folder or repo in the cache: default the processor repo, then the model
repo) and otherwise built from open_clip's bundled BPE vocabulary (same token ids). Missing
weights raise one :class:`ddpo3d.weights.WeightsNotFoundError`. The features are taken as
``visual_projection(vision_model(...).pooler_output)`` (and the text equivalent), which is what
``get_image_features`` / ``get_text_features`` compute in transformers 4.x and 5.x alike.
"""

from __future__ import annotations

import collections
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess
from ddpo3d.rewards.registry import register_reward
from ddpo3d.utils.typing import Any, Float, List, Optional, Sequence, Tensor
from ddpo3d.weights import WeightsNotFoundError, describe_hf_file, downloads_allowed, hf_cache_dir

__all__ = ["PickScoreReward"]

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register_reward("pickscore")
class PickScoreReward(Reward):
    """PickScore v1: ``logit_scale.exp() · cos(image, prompt)``. Differentiable."""

    differentiable = True

    @dataclass
    class Config:
        model: str = PICKSCORE_REPO  # local folder or hub repo id of a transformers CLIPModel
        tokenizer: Optional[str] = (
            None  # folder / repo with CLIP tokenizer files; None: processor repo, model repo, bundled BPE
        )
        image_size: Optional[int] = None  # input size; None = the model's vision_config.image_size (224)
        cache_dir: Optional[str] = None  # Hugging Face cache to search (default: HF_HUB_CACHE / HF_HOME)
        device: Optional[str] = None  # move the model here at build time (None: CPU)

    def configure(self) -> None:
        from transformers import CLIPModel

        cfg = self.cfg
        local_only = not downloads_allowed()
        try:
            model = CLIPModel.from_pretrained(
                cfg.model, local_files_only=local_only, cache_dir=cfg.cache_dir or hf_cache_dir()
            )
        except (OSError, ValueError) as exc:
            where = (
                cfg.model
                if os.path.isdir(cfg.model)
                else describe_hf_file(cfg.model, "config.json + weights", cfg.cache_dir)
            )
            raise WeightsNotFoundError(
                f"PickScore ({cfg.model})",
                [where, f"(transformers said: {str(exc).splitlines()[0][:200]})"],
                f"download once where there is network access: huggingface-cli download {PICKSCORE_REPO} "
                "(fills the Hugging Face cache), or set model: /path/to/a/CLIPModel/folder in the reward block, "
                "or set DDPO3D_ALLOW_DOWNLOAD=1",
            ) from None
        self.model = model.eval()
        self.tokenizer = self._load_tokenizer(local_only)
        size = cfg.image_size or int(model.config.vision_config.image_size)
        self.image_size = int(size)
        self._text_cache: "collections.OrderedDict[str, Tensor]" = collections.OrderedDict()
        if cfg.device:
            self.to(cfg.device)

    def _load_tokenizer(self, local_only: bool) -> Any:
        from transformers import CLIPTokenizer

        cfg = self.cfg
        for source in [cfg.tokenizer] if cfg.tokenizer else [PROCESSOR_REPO, cfg.model]:
            try:
                tok = CLIPTokenizer.from_pretrained(
                    source, local_files_only=local_only, cache_dir=cfg.cache_dir or hf_cache_dir()
                )
                # transformers 5 returns an (almost) empty tokenizer for a folder without vocab files
                if len(tok) < 49408:
                    raise OSError(f"{source} holds no CLIP vocabulary ({len(tok)} tokens)")
                return tok
            except (OSError, ValueError, TypeError):
                if cfg.tokenizer:
                    raise WeightsNotFoundError(
                        f"PickScore tokenizer ({source})",
                        [source if os.path.isdir(source) else describe_hf_file(source, "vocab.json", cfg.cache_dir)],
                        "point tokenizer at a folder with CLIP's vocab.json and merges.txt, or leave it null",
                    ) from None
        from ddpo3d.rewards.clip_bpe import write_clip_tokenizer_files

        vocab, merges = write_clip_tokenizer_files(tempfile.mkdtemp(prefix="ddpo3d-clip-bpe-"))
        return CLIPTokenizer(vocab, merges, model_max_length=77)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def encode_images(self, images: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B D"]:
        """L2-normalised image features (differentiable)."""
        x = clip_preprocess(images.to(self.device, torch.float32), self.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Float[Tensor, "B D"]:
        """L2-normalised text features (no gradient), cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tok = self.tokenizer(list(missing), padding=True, truncation=True, max_length=77, return_tensors="pt")
            out = self.model.text_model(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            )
            emb = F.normalize(self.model.text_projection(out.pooler_output), dim=-1)
            for p, e in zip(missing, emb):
                self._text_cache[p] = e
            while len(self._text_cache) > 4096:
                self._text_cache.popitem(last=False)
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images: Float[Tensor, "B H W 3"], prompts: List[str]) -> Float[Tensor, " B"]:
        """``logit_scale.exp() · cos(image, prompt)``."""
        img = self.encode_images(images)
        txt = self.encode_text(prompts)
        return self.model.logit_scale.exp() * (img * txt).sum(-1)

    def _apply(self, fn, *args, **kwargs):  # .to(): drop cached text features
        if hasattr(self, "_text_cache"):
            self._text_cache.clear()
        return super()._apply(fn, *args, **kwargs)
