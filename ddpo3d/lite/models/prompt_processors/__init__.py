from ddpo3d.lite.models.prompt_processors import (  # noqa: F401
    base,
    deepfloyd_prompt_processor,  # noqa: F401
    stable_diffusion_prompt_processor,
)
