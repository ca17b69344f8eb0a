"""``ddpo3d-toy-prompt-processor``: prompts of the toy world, no text encoder.

The toy prior (``ddpo3d-toy-guidance``) conditions on the object a prompt names ("a red
sphere"), so there are no embeddings to compute; the output carries the prompt strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ddpo3d.host import BaseObject, register
from ddpo3d.toy import parse_toy_prompt
from ddpo3d.utils.typing import Any, Dict, List


@dataclass
class ToyPromptOutput:
    """The toy prompt processor's output: the fields of threestudio 0.2.3's
    ``PromptProcessorOutput`` that name prompts (one prompt for every view, no directions)."""

    prompt: str
    use_perp_neg: bool = False
    directions: List[Any] = field(default_factory=list)
    direction2idx: Dict[str, int] = field(default_factory=dict)
    prompts_vd: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prompts_vd = self.prompts_vd or [self.prompt]  # index 0 for every view

    def get_text_embeddings(self, *args, **kwargs):
        raise NotImplementedError(
            "ddpo3d-toy-prompt-processor has no text embeddings; pair it with ddpo3d-toy-guidance"
        )


@register("ddpo3d-toy-prompt-processor")
class ToyPromptProcessor(BaseObject):
    """Validates the prompt names a toy object and hands it to the toy guidance."""

    @dataclass
    class Config:
        prompt: str = "a red sphere"  # must name a colour and a shape (see ddpo3d.toy)
        negative_prompt: str = ""  # accepted for config compatibility; unused by the toy prior

    cfg: Config

    def configure(self) -> None:
        parse_toy_prompt(self.cfg.prompt)  # fail early with the list of known words
        self.prompt = self.cfg.prompt

    def __call__(self) -> ToyPromptOutput:
        return ToyPromptOutput(prompt=self.prompt)
