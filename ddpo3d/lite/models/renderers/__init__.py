from ddpo3d.lite.models.renderers import base, nerf_volume_renderer, occupancy_grid, volume_rendering  # noqa: F401
