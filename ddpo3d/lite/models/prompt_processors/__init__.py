from ddpo3d.lite.models.prompt_processors import base, stable_diffusion_prompt_processor  # noqa: F401
from ddpo3d.lite.models.prompt_processors import deepfloyd_prompt_processor  # noqa: F401
