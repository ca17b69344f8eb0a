from ddpo3d.lite.models.geometry import base, implicit_volume  # noqa: F401
