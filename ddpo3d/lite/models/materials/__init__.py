from ddpo3d.lite.models.materials import base, diffuse_with_point_light_material, no_material  # noqa: F401
