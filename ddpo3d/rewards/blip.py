"""BLIP backbone shared by the ImageReward-family rewards (``imagereward``, ``reward3d``).

BLIP (Li et al. 2022, arXiv 2201.12086) as ImageReward (Xu et al. 2023, arXiv 2304.05977)
and DreamReward's Reward3D (Ye et al. 2024, arXiv 2403.14613) use it to score an image
against a prompt:

* an image encoder: a ViT-L/16 at 224 px (24 blocks, width 1024, 16 heads, pre-norm blocks,
  LayerNorm eps 1e-6, qkv with bias, exact GELU, a learned [CLS] token and learned position
  embeddings, a final LayerNorm), giving ``1 + (224/16)^2 = 197`` image tokens;
* a text encoder, BLIP's "MED" BERT-base (12 layers, width 768, 12 heads, intermediate 3072,
  LayerNorm eps 1e-12, word + absolute position embeddings, no token-type embeddings) where
  every layer adds a cross-attention block whose keys/values come from the image tokens
  (width ``encoder_width`` = the ViT width);
* the reward heads read the text encoder's first ([CLS]) output token.

Parameter names follow the published checkpoints (``ImageReward.pt`` and the Reward3D
checkpoints: ``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``blip.vision_proj.*``,
``blip.text_proj.*``), so those files load with ``strict=True``. The only tolerated
differences tolerated are :data:`OPTIONAL_KEYS` (the constant ``position_ids`` buffer and BLIP's
contrastive projections, which no reward reads): a file may lack them, and
:func:`load_blip_state` fills them in and reports them. Any other missing or unexpected key is
an error naming it.

The tokenizer is ``bert-base-uncased`` (local folder / ``vocab.txt``, or the Hugging Face cache,
never downloaded) plus BLIP's two added tokens ``[DEC]`` (bos) and ``[ENC]``, giving the 30524
rows of the published word embedding. Preprocessing is tensor-only (bicubic resize of the short
side to 224, centre crop, CLIP mean/std: :func:`ddpo3d.rewards.clip.clip_preprocess`), so
gradients reach the images.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpo3d.rewards.base import Reward
from ddpo3d.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess
from ddpo3d.utils.config import ConfigError, parse_structured, to_primitive
from ddpo3d.utils.typing import Any, Dict, Float, Int, List, Optional, Sequence, Tensor, Tuple
from ddpo3d.weights import WeightsNotFoundError, describe_hf_file, find_hf_file, resolve_weights_file

__all__ = [
    "BlipConfig",
    "BlipBackbone",
    "BlipVisionTransformer",
    "MedTextEncoder",
    "BLIP_ADDED_TOKENS",
    "BERT_TOKENIZER_REPOS",
    "load_blip_tokenizer",
    "load_blip_state",
    "OPTIONAL_KEYS",
    "BlipRewardConfig",
    "BlipReward",
    "read_state_dict",
    "blip_preprocess",
]

logger = logging.getLogger(__name__)

#: BLIP's ``init_tokenizer``: ``[DEC]`` becomes the bos token, ``[ENC]`` an additional special token.
BLIP_ADDED_TOKENS = ("[DEC]", "[ENC]")
#: Hub repositories whose cached ``vocab.txt`` is ``bert-base-uncased`` (the old and the current id).
BERT_TOKENIZER_REPOS = ("bert-base-uncased", "google-bert/bert-base-uncased")
#: Backbone keys a file may omit: the constant ``position_ids`` buffer and BLIP's contrastive
#: projections, which no reward reads. Absent ones are filled from the model and reported.
OPTIONAL_KEYS = (
    "text_encoder.embeddings.position_ids",
    "vision_proj.weight",
    "vision_proj.bias",
    "text_proj.weight",
    "text_proj.bias",
)


@dataclass
class BlipConfig:
    """Sizes of the BLIP backbone. Defaults are the published ViT-L/16 + BERT-base MED
    (ImageReward's ``BLIP_Pretrain(image_size=224, vit='large')`` with ``med_config.json``)."""

    image_size: int = 224  # input resolution of the ViT (px)
    patch_size: int = 16  # ViT patch size (px)
    vision_width: int = 1024  # ViT width (also the text encoder's cross-attention encoder_width)
    vision_depth: int = 24  # ViT blocks
    vision_heads: int = 16  # ViT attention heads
    vision_mlp_ratio: float = 4.0  # ViT MLP hidden = ratio * width
    text_width: int = 768  # BERT hidden_size
    text_layers: int = 12  # BERT num_hidden_layers
    text_heads: int = 12  # BERT num_attention_heads
    text_intermediate: int = 3072  # BERT intermediate_size
    vocab_size: int = 30524  # bert-base-uncased 30522 + [DEC] + [ENC]
    max_position_embeddings: int = 512  # BERT absolute positions
    pad_token_id: int = 0  # BERT [PAD]
    embed_dim: int = 256  # BLIP's vision_proj / text_proj width (in the checkpoints, unused by the rewards)


# -- image encoder -----------------------------------------------------------------------------
class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B N D"]:
        return self.proj(x).flatten(2).transpose(1, 2)


class _ViTAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Float[Tensor, "B N D"]) -> Float[Tensor, "B N D"]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class _ViTMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _ViTAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _ViTMlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipVisionTransformer(nn.Module):
    """BLIP's ViT image encoder (pre-norm blocks, [CLS] + learned positions, final LayerNorm).

    Args:
        cfg: :class:`BlipConfig`.
    """

    def __init__(self, cfg: BlipConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ConfigError(f"BLIP: image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.vision_width % cfg.vision_heads:
            raise ConfigError(f"BLIP: vision_width {cfg.vision_width} is not divisible by vision_heads")
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = _PatchEmbed(cfg.patch_size, cfg.vision_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.vision_width))
        self.blocks = nn.ModuleList(
            _ViTBlock(cfg.vision_width, cfg.vision_heads, cfg.vision_mlp_ratio) for _ in range(cfg.vision_depth)
        )
        self.norm = nn.LayerNorm(cfg.vision_width, eps=1e-6)

    def forward(self, x: Float[Tensor, "B 3 S S"]) -> Float[Tensor, "B N D"]:
        """Image tokens ``[B, 1 + (S/p)^2, width]`` of normalised images."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed[:, : tokens.shape[1]]
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


# -- text encoder (MED) --------------------------------------------------------------------------
class _Embeddings(nn.Module):
    def __init__(self, cfg: BlipConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.text_width, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.text_width)
        self.LayerNorm = nn.LayerNorm(cfg.text_width, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings).expand((1, -1)))

    def forward(self, ids: Int[Tensor, "B L"]) -> Float[Tensor, "B L D"]:
        pos = self.position_ids[:, : ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos))


class _SelfAttention(nn.Module):
    """Named ``self`` in the checkpoints (``attention.self.query`` ...)."""

    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def forward(self, x: Tensor, kv: Tensor, additive_mask: Optional[Tensor]) -> Tensor:
        B, L, D = x.shape
        h = self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(t.shape[0], t.shape[1], h, D // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(kv)), split(self.value(kv))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // h)
        if additive_mask is not None:
            scores = scores + additive_mask
        out = scores.softmax(dim=-1) @ v
        return out.transpose(1, 2).reshape(B, L, D)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (BERT's SelfOutput / Output)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=1e-12)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.self = _SelfAttention(width, heads, kv_width)
        self.output = _DenseNorm(width, width)

    def forward(self, x: Tensor, kv: Tensor, additive_mask: Optional[Tensor]) -> Tensor:
        return self.output(self.self(x, kv, additive_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # BERT's "gelu" is the exact erf form


class _Layer(nn.Module):
    def __init__(self, cfg: BlipConfig):
        super().__init__()
        self.attention = _Attention(cfg.text_width, cfg.text_heads, cfg.text_width)
        self.crossattention = _Attention(cfg.text_width, cfg.text_heads, cfg.vision_width)
        self.intermediate = _Intermediate(cfg.text_width, cfg.text_intermediate)
        self.output = _DenseNorm(cfg.text_intermediate, cfg.text_width)

    def forward(self, x: Tensor, text_mask: Tensor, image: Tensor) -> Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image, None)  # every image token is attended (BLIP: all-ones mask)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, cfg: BlipConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.text_layers))


class MedTextEncoder(nn.Module):
    """BLIP's MED text encoder in its multimodal (image-grounded) mode, without pooler.

    Args:
        cfg: :class:`BlipConfig`.
    """

    def __init__(self, cfg: BlipConfig):
        super().__init__()
        if cfg.text_width % cfg.text_heads:
            raise ConfigError(f"BLIP: text_width {cfg.text_width} is not divisible by text_heads {cfg.text_heads}")
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(
        self,
        input_ids: Int[Tensor, "B L"],
        attention_mask: Int[Tensor, "B L"],
        image_embeds: Float[Tensor, "B N Dv"],
    ) -> Float[Tensor, "B L D"]:
        """Last hidden states of the text grounded on ``image_embeds``.

        Padding is masked in self-attention with BERT's additive ``(1 - mask) * -10000``.
        """
        x = self.embeddings(input_ids)
        text_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, text_mask, image_embeds)
        return x


class BlipBackbone(nn.Module):
    """Image encoder + MED text encoder (+ BLIP's projections, kept so checkpoints load strictly).

    Args:
        cfg: :class:`BlipConfig`.
    """

    def __init__(self, cfg: BlipConfig):
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = BlipVisionTransformer(cfg)
        self.text_encoder = MedTextEncoder(cfg)
        self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def text_features(
        self,
        pixels: Float[Tensor, "B 3 S S"],
        input_ids: Int[Tensor, "B L"],
        attention_mask: Int[Tensor, "B L"],
    ) -> Float[Tensor, "B D"]:
        """The [CLS] output of the text encoder grounded on each image (``[B, text_width]``)."""
        image = self.visual_encoder(pixels)
        return self.text_encoder(input_ids, attention_mask, image)[:, 0, :]


def blip_preprocess(images: Float[Tensor, "B H W 3"], size: int = 224) -> Float[Tensor, "B 3 S S"]:
    """ImageReward's eval transform on tensors: bicubic resize of the short side, centre crop,
    CLIP mean/std (the values of ``ImageReward._transform``). Differentiable."""
    return clip_preprocess(images, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


# -- tokenizer -----------------------------------------------------------------------------------
def load_blip_tokenizer(spec: Optional[str], cache_dir: Optional[str] = None, where: str = "BLIP") -> Any:
    """``bert-base-uncased`` plus BLIP's ``[DEC]`` / ``[ENC]``, offline.

    Args:
        spec: a folder holding ``vocab.txt``, a ``vocab.txt`` file, or ``None`` to look for
            ``vocab.txt`` of :data:`BERT_TOKENIZER_REPOS` in the Hugging Face cache.
        cache_dir: Hugging Face cache to search (default: the usual one).
        where: prefix of error messages.

    Returns:
        A ``transformers.BertTokenizer`` with ``len() == vocab + 2``.

    Raises:
        WeightsNotFoundError: no vocabulary found (names every place searched).
    """
    looked: List[str] = []
    vocab = None
    if spec is not None:
        path = os.path.expanduser(str(spec))
        candidate = os.path.join(path, "vocab.txt") if os.path.isdir(path) else path
        if os.path.isfile(candidate):
            vocab = candidate
        looked.append(f"local: {candidate}")
    else:
        for repo in BERT_TOKENIZER_REPOS:
            vocab = find_hf_file(repo, "vocab.txt", cache_dir=cache_dir)
            if vocab is not None:
                break
            looked.append(describe_hf_file(repo, "vocab.txt", cache_dir))
    if vocab is None:
        raise WeightsNotFoundError(
            f"{where} tokenizer (bert-base-uncased vocab.txt)",
            looked,
            'run once with network: python -c "from huggingface_hub import hf_hub_download; '
            "hf_hub_download('google-bert/bert-base-uncased', 'vocab.txt')\", or set tokenizer: /path/to/folder_or_vocab.txt",
        )
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab, do_lower_case=True)
    tok.add_special_tokens({"bos_token": BLIP_ADDED_TOKENS[0]})
    tok.add_special_tokens({"additional_special_tokens": [BLIP_ADDED_TOKENS[1]]})
    return tok


# -- checkpoints ---------------------------------------------------------------------------------
def read_state_dict(path: str, where: str) -> Dict[str, Tensor]:
    """A state dict from ``path`` (``torch.load`` of a ``.pt``/``.pth``, or ``.safetensors``).

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a ``module.`` prefix are accepted.
    """
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{where}: {path} cannot be read as a checkpoint: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: {path} does not hold a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def load_blip_state(model: nn.Module, state: Dict[str, Tensor], where: str, blip_prefix: str = "blip.") -> List[str]:
    """Load ``state`` into ``model`` strictly; returns the keys that were filled in.

    The only keys allowed to be absent are :data:`OPTIONAL_KEYS` (constants); every other
    missing or unexpected key, and every shape mismatch, is an error naming them.

    Args:
        model: a module whose BLIP backbone is the attribute ``blip``.
        state: the file's state dict.
        where: prefix of messages.
        blip_prefix: the backbone's prefix in ``state``.

    Returns:
        the optional buffer keys that the file lacked (filled from the model's own values).

    Raises:
        ValueError: missing / unexpected keys or shape mismatches.
    """
    own = model.state_dict()
    filled = []
    state = dict(state)
    for key in OPTIONAL_KEYS:
        full = blip_prefix + key
        if full in own and full not in state:
            state[full] = own[full]
            filled.append(full)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_abbrev(shapes)}")
        raise ValueError(f"{where}: checkpoint does not match the model's key layout; " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    if filled:
        logger.warning("%s: keys absent from the file (not read by the reward) kept their init: %s", where, filled)
    return filled


def _abbrev(items: Sequence[str], n: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def parse_blip_config(block: Any, where: str) -> BlipConfig:
    """:class:`BlipConfig` from a dict (``None`` = the published sizes); unknown keys are errors."""
    return parse_structured(BlipConfig, to_primitive(block) or {}, where=where)


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` padded / truncated to ``max_length`` as ImageReward does."""
    enc = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


# -- the reward base shared by imagereward / reward3d -------------------------------------------
@dataclass
class BlipRewardConfig:
    """Options shared by the BLIP-based rewards (their ``Config`` inherits these)."""

    checkpoint: Optional[str] = None  # local file or "org/repo/file" in the HF cache; None: the default places
    tokenizer: Optional[str] = None  # folder with vocab.txt or the file; None: bert-base-uncased in the HF cache
    cache_dir: Optional[str] = None  # Hugging Face cache searched (None: HF_HUB_CACHE / HF_HOME / default)
    backbone: Dict[str, Any] = field(default_factory=dict)  # BlipConfig overrides (tests); {}: published sizes
    device: Optional[str] = None  # move the model here at build time (None: CPU; use .to() later)


class BlipReward(Reward):
    """Common loading for the BLIP rewards: backbone sizes, tokenizer, checkpoint, strict load.

    Subclasses define ``checkpoint_name`` / ``default_places`` / ``how_to_get`` / ``max_length``,
    build their heads in :meth:`build_heads` and score in :meth:`score`.
    """

    differentiable = True
    blip: BlipBackbone

    def build_heads(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint_places(self) -> Tuple[str, List[str], List[Tuple[str, str]], str]:  # pragma: no cover
        """``(model name, local default files, (repo, file) hub defaults, how to get)``."""
        raise NotImplementedError

    def configure(self) -> None:
        where = f"reward {self.name!r}"
        self.blip_cfg = parse_blip_config(self.cfg.backbone, where=f"{where} backbone")
        self.tokenizer = load_blip_tokenizer(self.cfg.tokenizer, self.cfg.cache_dir, where=where)
        if len(self.tokenizer) != self.blip_cfg.vocab_size:
            raise ValueError(
                f"{where}: the tokenizer has {len(self.tokenizer)} tokens (vocab + [DEC] + [ENC]) but the backbone's "
                f"word embedding has vocab_size={self.blip_cfg.vocab_size} rows"
            )
        self.blip = BlipBackbone(self.blip_cfg)
        self.build_heads()
        model, local, hub, how = self.checkpoint_places()
        path = resolve_weights_file(
            model,
            self.cfg.checkpoint,
            default_locations=local,
            default_hf=hub,
            how_to_get=how,
            cache_dir=self.cfg.cache_dir,
        )
        self.checkpoint_file = path
        self.filled_keys = load_blip_state(self, read_state_dict(path, where), where=f"{where} ({path})")
        if self.cfg.device is not None:
            self.to(self.cfg.device)

    def view_features(self, images: Float[Tensor, "B H W 3"], prompts: Sequence[str]) -> Float[Tensor, "B D"]:
        """[CLS] features of the image-grounded text encoder, differentiable w.r.t. ``images``."""
        device = self.device
        pixels = blip_preprocess(images.to(device, torch.float32), self.blip_cfg.image_size)
        ids, mask = tokenize(self.tokenizer, prompts, self.max_length, device)
        return self.blip.text_features(pixels, ids, mask)

    def state_summary(self) -> Dict[str, str]:
        """Where the weights came from (for logs)."""
        return {"checkpoint": self.checkpoint_file, "filled_keys": ",".join(self.filled_keys)}
