from ddpo3d.lite.models.guidance import (
    deep_floyd_guidance,  # noqa: F401
    mvdream_guidance,  # noqa: F401
    stable_diffusion_guidance,  # noqa: F401
)
