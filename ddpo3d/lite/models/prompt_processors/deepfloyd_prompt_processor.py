"""``deep-floyd-prompt-processor``: T5 text embeddings for DeepFloyd IF (threestudio 0.2.3's
``prompt_processors/deepfloyd_prompt_processor.py``).

Prompts are tokenized with the pipeline's ``tokenizer`` (T5), padded / truncated to 77 tokens
(what ``IFPipeline.encode_prompt`` does), and encoded by its ``text_encoder``
(``T5EncoderModel``, last hidden state, with the attention mask). Embeddings are
``[77, D]`` per prompt (``D`` = 4096 for IF-I-XL's T5-XXL) and cached on disk by the base
class.

Differences from threestudio, all about loading: the encoder is loaded from a local
folder or the Hugging Face cache only (missing -> ``ddpo3d.weights.WeightsNotFoundError``);
threestudio loads it 8-bit through bitsandbytes (CUDA only), here it is float16 on CUDA
(the ``fp16`` weight variant when the folder has it) and float32 on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.prompt_processors.base import (
    EncoderPromptProcessor,
    PromptProcessor,
    freeze_text_encoder,
    save_text_embeddings,
)
from ddpo3d.lite.utils.misc import get_device
from ddpo3d.utils.typing import Any, Float, List, Optional, Tensor, Tuple
from ddpo3d.weights import resolve_pretrained

#: T5 prompt length of DeepFloyd IF (``IFPipeline.encode_prompt``)
MAX_LENGTH = 77


def _has_variant(folder: str, variant: str) -> bool:
    """Whether a diffusers / transformers weights folder holds a ``<name>.<variant>.<ext>`` file."""
    if not os.path.isdir(folder):
        return False
    return any(f".{variant}." in name for name in os.listdir(folder))


def load_t5_tokenizer_and_encoder(pretrained_model_name_or_path: str, device: Any) -> Tuple[Any, Any]:
    """The T5 tokenizer and frozen encoder of a DeepFloyd IF pipeline folder.

    Args:
        pretrained_model_name_or_path: local IF pipeline folder or hub id (looked up in the
            Hugging Face cache only, unless ``DDPO3D_ALLOW_DOWNLOAD=1``).
        device: where the encoder runs.

    Returns:
        ``(tokenizer, text_encoder)``; the encoder is in eval mode without gradients.

    Raises:
        ddpo3d.weights.WeightsNotFoundError: the folder / cache entry has no ``text_encoder``.
    """
    from transformers import T5EncoderModel, T5Tokenizer

    path, local_only = resolve_pretrained(
        pretrained_model_name_or_path,
        f"DeepFloyd IF T5 text encoder + tokenizer ({pretrained_model_name_or_path})",
        required_file=os.path.join("text_encoder", "config.json"),
    )
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    kwargs: dict = {"local_files_only": local_only}
    if on_cuda:
        kwargs["dtype"] = torch.float16
        if _has_variant(os.path.join(path, "text_encoder"), "fp16"):
            kwargs["variant"] = "fp16"
    tokenizer = T5Tokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=local_only)
    text_encoder = T5EncoderModel.from_pretrained(path, subfolder="text_encoder", **kwargs)
    return tokenizer, freeze_text_encoder(text_encoder, device)


def encode_t5(tokenizer: Any, text_encoder: Any, prompts: List[str], device: Any) -> Float[Tensor, "B 77 D"]:
    """Last hidden state of the T5 encoder for ``prompts`` padded to 77 tokens (IF's recipe:
    padding to ``max_length``, truncation, ``</s>`` appended, attention mask passed)."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=MAX_LENGTH,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = text_encoder(
            tokens.input_ids.to(device),
            attention_mask=tokens.attention_mask.to(device),
        )
    return out[0].float()


@threestudio.register("deep-floyd-prompt-processor")
class DeepFloydPromptProcessor(EncoderPromptProcessor):
    """Prompt processor for DeepFloyd IF: T5 embeddings of the prompt, negative prompt and
    view-dependent prompts, with the base class's config keys and disk cache.

    Config: every :class:`PromptProcessor` key; ``pretrained_model_name_or_path`` defaults
    to ``"DeepFloyd/IF-I-XL-v1.0"``.
    """

    @dataclass
    class Config(PromptProcessor.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"

    cfg: Config

    # threestudio keeps these for debugging; the cached embeddings come from spawn_func
    def configure_text_encoder(self) -> None:
        self.tokenizer, self.text_encoder = load_t5_tokenizer_and_encoder(
            self.cfg.pretrained_model_name_or_path, self.device
        )

    def encode_prompts(self, prompts: List[str]) -> Float[Tensor, "B 77 D"]:
        return encode_t5(self.tokenizer, self.text_encoder, prompts, self.device)

    @staticmethod
    def spawn_func(
        pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str, device: Optional[Any] = None
    ) -> None:
        """Encode ``prompts`` and save one ``<md5(model-prompt)>.pt`` (``[77, D]``) per prompt.

        Args:
            pretrained_model_name_or_path: the IF pipeline (local folder or cached hub id).
            prompts: prompts to encode.
            cache_dir: where the ``.pt`` files go.
            device: where to run the encoder (default: the runtime's device).
        """
        device = get_device() if device is None else device
        tokenizer, text_encoder = load_t5_tokenizer_and_encoder(pretrained_model_name_or_path, device)
        text_embeddings = encode_t5(tokenizer, text_encoder, prompts, device)
        save_text_embeddings(pretrained_model_name_or_path, prompts, text_embeddings, cache_dir)
        del text_encoder
