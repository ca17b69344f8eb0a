from ddpo3d.lite.models.renderers import base, nerf_volume_renderer, volume_rendering  # noqa: F401
