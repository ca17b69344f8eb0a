from ddpo3d.lite.systems import base, dreamfusion  # noqa: F401
