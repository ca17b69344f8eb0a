"""``stable-diffusion-prompt-processor``: CLIP text embeddings of a Stable Diffusion pipeline."""

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
from ddpo3d.utils.typing import Any, Float, List, Tensor
from ddpo3d.weights import resolve_pretrained


def _load_tokenizer_and_encoder(pretrained_model_name_or_path: str, device):
    from transformers import CLIPTextModel, CLIPTokenizer

    path, local_only = resolve_pretrained(
        pretrained_model_name_or_path,
        f"Stable Diffusion text encoder + tokenizer ({pretrained_model_name_or_path})",
        required_file=os.path.join("text_encoder", "config.json"),
    )
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # the BPE CLIPTokenizer (not AutoTokenizer): its ids match OpenAI CLIP's
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=local_only)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=local_only)
    return tokenizer, freeze_text_encoder(text_encoder, device)


def _encode_clip(tokenizer: Any, text_encoder: Any, prompts: List[str], device: Any) -> Float[Tensor, "B 77 D"]:
    """Last hidden state of the CLIP text encoder for ``prompts`` padded to ``model_max_length`` (no grad)."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(device))[0]


@threestudio.register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(EncoderPromptProcessor):
    """Encodes prompts with the pipeline's ``tokenizer`` / ``text_encoder`` (last hidden state,
    padded to ``model_max_length``), as threestudio. Weights come from a local diffusers folder
    or the Hugging Face cache; missing weights raise ``ddpo3d.weights.WeightsNotFoundError``.
    """

    @dataclass
    class Config(PromptProcessor.Config):
        pass

    cfg: Config

    def configure_text_encoder(self) -> None:
        self.tokenizer, self.text_encoder = _load_tokenizer_and_encoder(
            self.cfg.pretrained_model_name_or_path, self.device
        )

    def token_counter(self):
        """CLIP token count (with the start / end tokens) and the tokenizer's ``model_max_length``."""
        from transformers import CLIPTokenizer

        path, local_only = resolve_pretrained(
            self.cfg.pretrained_model_name_or_path,
            f"Stable Diffusion tokenizer ({self.cfg.pretrained_model_name_or_path})",
            required_file=os.path.join("text_encoder", "config.json"),
        )
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=local_only)
        return (lambda text: len(tokenizer(text).input_ids)), int(tokenizer.model_max_length)

    def encode_prompts(self, prompts: List[str]) -> Float[Tensor, "B 77 D"]:
        return _encode_clip(self.tokenizer, self.text_encoder, prompts, self.device)

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str) -> None:
        device = get_device()
        tokenizer, text_encoder = _load_tokenizer_and_encoder(pretrained_model_name_or_path, device)
        text_embeddings = _encode_clip(tokenizer, text_encoder, prompts, device)
        save_text_embeddings(pretrained_model_name_or_path, prompts, text_embeddings, cache_dir)
        del text_encoder
