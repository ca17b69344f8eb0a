from ddpo3d.lite.data import uncond  # noqa: F401
