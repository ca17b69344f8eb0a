from ddpo3d.lite.models.guidance import stable_diffusion_guidance  # noqa: F401
