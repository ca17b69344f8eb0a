"""Prompt processing with view-dependent prompts (threestudio's ``prompt_processors/base.py``).

``PromptProcessor`` computes text embeddings for the prompt, the negative prompt and the
four view-dependent variants (side / front / back / overhead), caches them on disk under
``.threestudio_cache/text_embeddings`` (``$DDPO3D_TEXT_EMBEDDING_CACHE`` overrides, our
addition) keyed by ``md5(f"{model}-{prompt}")``, and returns a :class:`PromptProcessorOutput`
that picks the embedding of each camera's direction. :class:`EncoderPromptProcessor` adds
what the tokenizer + text-encoder processors share (with :func:`freeze_text_encoder` and
:func:`save_text_embeddings` for their loaders and ``spawn_func``).

Weights are found by :func:`ddpo3d.weights.resolve_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch

import ddpo3d.lite as threestudio
from ddpo3d.lite.utils.base import BaseObject
from ddpo3d.lite.utils.misc import cleanup
from ddpo3d.utils.prompts import check_prompt, fit_prompt
from ddpo3d.utils.typing import Any, Callable, Dict, Float, List, Optional, Tensor, Tuple, Union

DEFAULT_CACHE_DIR = ".threestudio_cache/text_embeddings"


def hash_prompt(model: str, prompt: str) -> str:
    """Cache key of a prompt's embedding: ``md5(f"{model}-{prompt}")`` (threestudio's)."""
    return hashlib.md5(f"{model}-{prompt}".encode()).hexdigest()


def shift_azimuth_deg(azimuth: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """Wrap azimuth angles (degrees) to ``[-180, 180)``."""
    return (azimuth + 180) % 360 - 180


@dataclass
class DirectionConfig:
    """A view direction: its name, how it rewrites the (negative) prompt, and which cameras
    it applies to (``condition(elevation, azimuth, distance) -> Bool[B]``, degrees)."""

    name: str
    prompt: Callable[[str], str]
    negative_prompt: Callable[[str], str]
    condition: Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class PromptProcessorOutput:
    """Embeddings of a prompt and its view-dependent variants.

    ``get_text_embeddings`` returns ``cat([cond, uncond])`` (threestudio's order, 2B rows).
    The fields and methods are threestudio 0.2.3's and nothing more, so code written against
    this class runs unchanged on threestudio.
    """

    text_embeddings: Float[Tensor, "N Nf"]
    uncond_text_embeddings: Float[Tensor, "N Nf"]
    text_embeddings_vd: Float[Tensor, "Nv N Nf"]
    uncond_text_embeddings_vd: Float[Tensor, "Nv N Nf"]
    directions: List[DirectionConfig]
    direction2idx: Dict[str, int]
    use_perp_neg: bool
    perp_neg_f_sb: Tuple[float, float, float]
    perp_neg_f_fsb: Tuple[float, float, float]
    perp_neg_f_fs: Tuple[float, float, float]
    perp_neg_f_sf: Tuple[float, float, float]
    prompt: str
    prompts_vd: List[str]

    def get_text_embeddings(
        self,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
        view_dependent_prompting: bool = True,
    ) -> Float[Tensor, "BB N Nf"]:
        """``cat([cond, uncond], 0)`` for a batch of cameras (NB: cond first, as threestudio)."""
        batch_size = elevation.shape[0]
        if view_dependent_prompting:
            # later directions override earlier ones (side is the default, then front, back, overhead)
            idx = torch.zeros_like(elevation, dtype=torch.long)
            for d in self.directions:
                idx[d.condition(elevation, azimuth, camera_distances)] = self.direction2idx[d.name]
            idx = idx.to(self.text_embeddings_vd.device)
            text_embeddings = self.text_embeddings_vd[idx]
            uncond_text_embeddings = self.uncond_text_embeddings_vd[idx]
        else:
            text_embeddings = self.text_embeddings.expand(batch_size, -1, -1)
            uncond_text_embeddings = self.uncond_text_embeddings.expand(batch_size, -1, -1)
        return torch.cat([text_embeddings, uncond_text_embeddings], dim=0)

    def get_text_embeddings_perp_neg(self, *args, **kwargs):
        raise NotImplementedError("Perp-Neg (use_perp_neg) is not supported by the built-in runtime")


def freeze_text_encoder(text_encoder: Any, device: Any) -> Any:
    """``text_encoder`` on ``device`` in eval mode with every parameter's ``requires_grad`` off.

    Args:
        text_encoder: a transformers text encoder.
        device: where it runs.

    Returns:
        the frozen encoder.
    """
    text_encoder = text_encoder.to(device).eval()
    for p in text_encoder.parameters():
        p.requires_grad_(False)
    return text_encoder


def save_text_embeddings(
    pretrained_model_name_or_path: str, prompts: List[str], text_embeddings: Float[Tensor, "B N D"], cache_dir: str
) -> None:
    """Save one ``<hash_prompt(model, prompt)>.pt`` (``[N, D]``, on the CPU) per prompt under ``cache_dir``.

    Args:
        pretrained_model_name_or_path: the model the embeddings come from (part of the hash).
        prompts: the encoded prompts, in order.
        text_embeddings: their embeddings.
        cache_dir: an existing folder.
    """
    for prompt, embedding in zip(prompts, text_embeddings):
        torch.save(
            embedding.detach().cpu(),
            os.path.join(cache_dir, f"{hash_prompt(pretrained_model_name_or_path, prompt)}.pt"),
        )


class PromptProcessor(BaseObject):
    """Base prompt processor with threestudio's config keys.

    Keys: ``prompt`` (``lib:<keywords>`` looks it up in ``load/prompt_library.json``),
    ``prompt_front/side/back/overhead`` (manual view prompts), ``negative_prompt``,
    ``pretrained_model_name_or_path``, ``overhead_threshold`` (elevation, degrees),
    ``front_threshold`` / ``back_threshold`` (azimuth half-widths, degrees),
    ``view_dependent_prompt_front`` ("front view of X" instead of "X, front view"),
    ``use_cache``, ``spawn`` (true: threestudio encodes in a subprocess; here in-process, with
    a notice), ``use_perp_neg`` (must be false here), ``perp_neg_f_*``,
    ``use_prompt_debiasing`` (must be false here), ``pretrained_model_name_or_path_prompt_debiasing``,
    ``prompt_debiasing_mask_ids``.
    """

    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "a hamburger"
        prompt_front: Optional[str] = None
        prompt_side: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None
        negative_prompt: str = ""
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
        overhead_threshold: float = 60.0
        front_threshold: float = 45.0
        back_threshold: float = 45.0
        view_dependent_prompt_front: bool = False
        use_cache: bool = True
        spawn: bool = True
        use_perp_neg: bool = False
        perp_neg_f_sb: Tuple[float, float, float] = (1, 0.5, -0.606)
        perp_neg_f_fsb: Tuple[float, float, float] = (1, 0.5, +0.967)
        perp_neg_f_fs: Tuple[float, float, float] = (4, 0.5, -2.426)
        perp_neg_f_sf: Tuple[float, float, float] = (4, 0.5, -2.426)
        use_prompt_debiasing: bool = False
        pretrained_model_name_or_path_prompt_debiasing: str = "bert-base-uncased"
        prompt_debiasing_mask_ids: Optional[List[int]] = None

    cfg: Config
    unsupported_keys = ("use_perp_neg", "use_prompt_debiasing")

    def configure_text_encoder(self) -> None:
        raise NotImplementedError

    def destroy_text_encoder(self) -> None:
        raise NotImplementedError

    def configure(self) -> None:
        self._cache_dir = os.environ.get("DDPO3D_TEXT_EMBEDDING_CACHE") or DEFAULT_CACHE_DIR
        c = self.cfg

        def front(ele, azi, dis):
            return (shift_azimuth_deg(azi) > -c.front_threshold) & (shift_azimuth_deg(azi) < c.front_threshold)

        def back(ele, azi, dis):
            return (shift_azimuth_deg(azi) > 180 - c.back_threshold) | (
                shift_azimuth_deg(azi) < -180 + c.back_threshold
            )

        def overhead(ele, azi, dis):
            return ele > c.overhead_threshold

        def side(ele, azi, dis):
            return torch.ones_like(ele, dtype=torch.bool)

        if c.view_dependent_prompt_front:
            fmt = {
                "side": "side view of {}",
                "front": "front view of {}",
                "back": "backside view of {}",
                "overhead": "overhead view of {}",
            }
        else:
            fmt = {
                "side": "{}, side view",
                "front": "{}, front view",
                "back": "{}, back view",
                "overhead": "{}, overhead view",
            }
        conds = {"side": side, "front": front, "back": back, "overhead": overhead}
        # order matters: side is the fallback, later entries override earlier ones
        self.directions: List[DirectionConfig] = [
            DirectionConfig(name, (lambda f: lambda s: f.format(s))(fmt[name]), lambda s: s, conds[name])
            for name in ("side", "front", "back", "overhead")
        ]
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}

        self.prompt_library = {}
        if os.path.exists("load/prompt_library.json"):
            with open("load/prompt_library.json") as f:
                self.prompt_library = json.load(f)
        self.prompt = self.fit_to_encoder(self.preprocess_prompt(check_prompt(c.prompt)))
        self.negative_prompt = c.negative_prompt
        threestudio.info(f"Using prompt [{self.prompt}] and negative prompt [{self.negative_prompt}]")
        self.prompts_vd = [getattr(c, f"prompt_{d.name}", None) or d.prompt(self.prompt) for d in self.directions]
        threestudio.info(
            "Using view-dependent prompts "
            + " ".join(f"[{d.name}]:[{p}]" for p, d in zip(self.prompts_vd, self.directions))
        )
        self.negative_prompts_vd = [d.negative_prompt(self.negative_prompt) for d in self.directions]
        self.prepare_text_embeddings()
        self.load_text_embeddings()

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str) -> None:
        """Encode ``prompts`` and save one ``<hash>.pt`` per prompt under ``cache_dir``."""
        raise NotImplementedError

    def token_counter(self) -> Optional[Tuple[Callable[[str], int], int]]:
        """``(count_tokens, max_length)`` of the text encoder's tokenizer; ``None``: no limit known."""
        return None

    def fit_to_encoder(self, prompt: str) -> str:
        """Cut a prompt longer than the text encoder reads (with a warning saying what was cut),
        at word boundaries and so that every view-dependent prompt still ends with its view phrase."""
        counter = self.token_counter()
        if counter is None:
            return prompt
        count, limit = counter
        fitted, cut = fit_prompt(prompt, [d.prompt for d in self.directions], count, limit)
        if cut is not None:
            threestudio.warn(
                f"The prompt is {count(prompt)} tokens but the text encoder reads {limit}: using "
                f"[{fitted}]; cut [{cut}] so that the view phrases (e.g. [{self.directions[0].prompt('X')}]) "
                "are kept. Shorten the prompt to choose what is dropped."
            )
        return fitted

    def cache_path(self, prompt: str) -> str:
        return os.path.join(self._cache_dir, f"{hash_prompt(self.cfg.pretrained_model_name_or_path, prompt)}.pt")

    def prepare_text_embeddings(self) -> None:
        """Encode every prompt not in the cache (all of them when ``use_cache`` is false)."""
        os.makedirs(self._cache_dir, exist_ok=True)
        all_prompts = [self.prompt, self.negative_prompt] + self.prompts_vd + self.negative_prompts_vd
        to_process = []
        for prompt in all_prompts:
            if self.cfg.use_cache and os.path.exists(self.cache_path(prompt)):
                threestudio.debug(f"Text embeddings for [{prompt}] are already in cache, skip processing.")
                continue
            if prompt not in to_process:
                to_process.append(prompt)
        self.n_prompts_encoded = len(to_process)
        if to_process:
            if self.cfg.spawn:
                threestudio.info(
                    "prompt_processor.spawn=true: the built-in runtime encodes prompts in-process "
                    "(threestudio uses a subprocess to free GPU memory)"
                )
            self.spawn_func(self.cfg.pretrained_model_name_or_path, to_process, self._cache_dir)
            cleanup()

    def load_text_embeddings(self) -> None:
        self.text_embeddings = self.load_from_cache(self.prompt)[None, ...]
        self.uncond_text_embeddings = self.load_from_cache(self.negative_prompt)[None, ...]
        self.text_embeddings_vd = torch.stack([self.load_from_cache(p) for p in self.prompts_vd], dim=0)
        self.uncond_text_embeddings_vd = torch.stack([self.load_from_cache(p) for p in self.negative_prompts_vd], dim=0)
        threestudio.debug("Loaded text embeddings.")

    def load_from_cache(self, prompt: str) -> Tensor:
        path = self.cache_path(prompt)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Text embedding file {path} for model {self.cfg.pretrained_model_name_or_path} and "
                f"prompt [{prompt}] not found."
            )
        return torch.load(path, map_location=self.device, weights_only=True)

    def preprocess_prompt(self, prompt: str) -> str:
        """Resolve ``lib:kw1_kw2`` against ``load/prompt_library.json``; other prompts pass through."""
        if not prompt.startswith("lib:"):
            return prompt
        if "dreamfusion" not in self.prompt_library:
            raise ValueError(f"Prompt {prompt!r} needs load/prompt_library.json (with a 'dreamfusion' list)")
        keywords = prompt[4:].lower().split("_")
        matches = [p for p in self.prompt_library["dreamfusion"] if all(k in p.lower() for k in keywords)]
        if len(matches) > 1:
            raise ValueError(f"Multiple prompts matched with keywords {keywords} in library")
        if not matches:
            raise ValueError(f"Cannot find prompt with keywords {keywords} in library")
        threestudio.info("Find matched prompt in library: " + matches[0])
        return matches[0]

    def get_text_embeddings(self, prompt, negative_prompt):
        raise NotImplementedError

    def __call__(self) -> PromptProcessorOutput:
        return PromptProcessorOutput(
            text_embeddings=self.text_embeddings,
            uncond_text_embeddings=self.uncond_text_embeddings,
            prompt=self.prompt,
            text_embeddings_vd=self.text_embeddings_vd,
            uncond_text_embeddings_vd=self.uncond_text_embeddings_vd,
            prompts_vd=self.prompts_vd,
            directions=self.directions,
            direction2idx=self.direction2idx,
            use_perp_neg=self.cfg.use_perp_neg,
            perp_neg_f_sb=tuple(self.cfg.perp_neg_f_sb),
            perp_neg_f_fsb=tuple(self.cfg.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(self.cfg.perp_neg_f_fs),
            perp_neg_f_sf=tuple(self.cfg.perp_neg_f_sf),
        )


class EncoderPromptProcessor(PromptProcessor):
    """A prompt processor whose ``configure_text_encoder`` sets ``self.tokenizer`` /
    ``self.text_encoder`` and that encodes a prompt list with :meth:`encode_prompts`
    (not registered; the Stable Diffusion and DeepFloyd processors build on it)."""

    def encode_prompts(self, prompts: List[str]) -> Float[Tensor, "B N D"]:
        """Embeddings of ``prompts`` with the loaded tokenizer and encoder."""
        raise NotImplementedError

    def destroy_text_encoder(self) -> None:
        del self.tokenizer
        del self.text_encoder
        cleanup()

    def get_text_embeddings(
        self, prompt: Union[str, List[str]], negative_prompt: Union[str, List[str]]
    ) -> Tuple[Float[Tensor, "B N D"], Float[Tensor, "B N D"]]:
        """Embeddings of prompts and negative prompts (needs :meth:`configure_text_encoder`).

        Args:
            prompt: one prompt or a list.
            negative_prompt: one negative prompt or a list.

        Returns:
            ``(text_embeddings, uncond_text_embeddings)``, each ``[B, N, D]`` (``N`` = 77 tokens).
        """
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        negative_prompt = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        return self.encode_prompts(prompt), self.encode_prompts(negative_prompt)
