"""``ddpo3d-toy-prompt-processor``: prompts of the toy world, no text encoder.

The toy prior (``ddpo3d-toy-guidance``) conditions on the object a prompt names ("a red
sphere"), so there are no embeddings to compute; the output carries the prompt strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpo3d.host import BaseObject, register
from ddpo3d.toy import parse_toy_prompt
from ddpo3d.utils.typing import Float, List, Tensor


@dataclass
class ToyPromptOutput:
    """The toy prompt processor's output (duck-types the parts of ``PromptProcessorOutput`` we use)."""

    prompt: str
    use_perp_neg: bool = False

    def get_prompts(
        self, elevation: Float[Tensor, " B"], azimuth, camera_distances, view_dependent_prompting=True
    ) -> List[str]:
        """The prompt per view (the toy world has no view-dependent phrasing)."""
        return [self.prompt] * int(elevation.shape[0])

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
