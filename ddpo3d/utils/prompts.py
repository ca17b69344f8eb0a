"""Prompt checks shared by the launcher, the systems and the prompt processors: empty
prompts, trial folder names derived from long prompts, and fitting a prompt to a text
encoder's token limit without cutting its view-dependent suffix."""

from __future__ import annotations

import hashlib

from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Any, Callable, List, Optional, Tuple

__all__ = ["MAX_TRIAL_NAME", "check_prompt", "fit_prompt", "short_trial_name"]

#: longest trial folder name (bytes); file systems allow 255, timestamps and suffixes need room
MAX_TRIAL_NAME = 120


def check_prompt(prompt: Any, key: str = "system.prompt_processor.prompt") -> str:
    """The prompt as a string.

    Raises:
        ConfigError: the prompt is missing, not a string, or blank.
    """
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise ConfigError(f'{key} is empty: give the text to generate, e.g. {key}="a delicious hamburger"')
    if not isinstance(prompt, str):
        raise ConfigError(f"{key} must be a string, got {type(prompt).__name__}: {prompt!r}")
    return prompt


def short_trial_name(name: str, limit: int = MAX_TRIAL_NAME) -> Tuple[str, bool]:
    """A folder name of at most ``limit`` bytes: long names are cut and end with ``-`` and
    8 hex digits of their SHA-1 (so two long prompts that share a beginning stay apart).

    Returns:
        ``(name, shortened)``.
    """
    name = name.replace("/", "_").replace("\\", "_")
    if len(name.encode()) <= limit:
        return name, False
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    head = name.encode()[: limit - 9].decode(errors="ignore").rstrip("_ .")
    return f"{head}-{digest}", True


def fit_prompt(
    prompt: str, views: List[Callable[[str], str]], n_tokens: Callable[[str], int], limit: int
) -> Tuple[str, Optional[str]]:
    """Cut ``prompt`` (at word boundaries) until every view-dependent form ``view(prompt)``
    fits ``limit`` tokens, so the encoder never truncates the view phrase.

    Args:
        prompt: the base prompt.
        views: functions building each view-dependent prompt from the base one.
        n_tokens: token count of a text, special tokens included.
        limit: the encoder's maximum length.

    Returns:
        ``(prompt, cut)``: the prompt that fits and the text removed (``None``: nothing cut).
    """

    def fits(p: str) -> bool:
        return all(n_tokens(v(p)) <= limit for v in views) and n_tokens(p) <= limit

    if fits(prompt):
        return prompt, None
    words = prompt.split(" ")
    lo, hi = 0, len(words)  # the longest prefix of words that fits: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(" ".join(words[:mid])):
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise ConfigError(f"the prompt's view phrases alone exceed the text encoder's {limit} tokens")
    kept = " ".join(words[:lo]).rstrip(" ,;")
    return kept, " ".join(words[lo:])
