"""The toy world: procedural objects named by prompts, an exact prior over their renders."""

from ddpo3d.toy.objects import COLORS, SHAPES, ToyObject, parse_toy_prompt, render_toy_object  # noqa: F401
