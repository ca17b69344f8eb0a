"""``stable-diffusion-prompt-processor``: CLIP text embeddings of a Stable Diffusion pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.prompt_processors.base import PromptProcessor, hash_prompt, resolve_pretrained
from ddpo3d.lite.utils.misc import cleanup, get_device
from ddpo3d.utils.typing import Float, List, Tensor, Tuple, Union


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
    text_encoder = text_encoder.to(device).eval()
    for p in text_encoder.parameters():
        p.requires_grad_(False)
    return tokenizer, text_encoder


@threestudio.register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(PromptProcessor):
    """Encodes prompts with the pipeline's ``tokenizer`` / ``text_encoder`` (last hidden state,
    padded to ``model_max_length``), as threestudio. Weights come from a local diffusers folder
    or the Hugging Face cache; missing weights raise ``ddpo3d.weights.WeightsNotFoundError``.
    """

    @dataclass
    class Config(PromptProcessor.Config):
        pass

    cfg: Config

    def configure_text_encoder(self) -> None:
        self.tokenizer, self.text_encoder = _load_tokenizer_and_encoder(self.cfg.pretrained_model_name_or_path, self.device)

    def destroy_text_encoder(self) -> None:
        del self.tokenizer
        del self.text_encoder
        cleanup()

    def get_text_embeddings(
        self, prompt: Union[str, List[str]], negative_prompt: Union[str, List[str]]
    ) -> Tuple[Float[Tensor, "B 77 D"], Float[Tensor, "B 77 D"]]:
        """Embeddings of prompts and negative prompts (needs :meth:`configure_text_encoder`)."""
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        negative_prompt = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        kw = dict(padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            emb = self.text_encoder(self.tokenizer(prompt, **kw).input_ids.to(self.device))[0]
            uncond = self.text_encoder(self.tokenizer(negative_prompt, **kw).input_ids.to(self.device))[0]
        return emb, uncond

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str) -> None:
        device = get_device()
        tokenizer, text_encoder = _load_tokenizer_and_encoder(pretrained_model_name_or_path, device)
        with torch.no_grad():
            tokens = tokenizer(
                prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            )
            text_embeddings = text_encoder(tokens.input_ids.to(device))[0]
        for prompt, embedding in zip(prompts, text_embeddings):
            torch.save(
                embedding.detach().cpu(), os.path.join(cache_dir, f"{hash_prompt(pretrained_model_name_or_path, prompt)}.pt")
            )
        del text_encoder
