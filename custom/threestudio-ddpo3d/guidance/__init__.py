from . import (  # noqa: F401
    ddpo3d_deep_floyd_guidance,
    ddpo3d_mvdream_guidance,
    ddpo3d_stable_diffusion_guidance,
    ddpo3d_toy_guidance,
)
