from . import ddpo3d_deep_floyd_guidance, ddpo3d_stable_diffusion_guidance, ddpo3d_toy_guidance  # noqa: F401
