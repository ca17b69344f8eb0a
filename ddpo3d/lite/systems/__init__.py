from ddpo3d.lite.systems import base, dreamfusion  # noqa: F401
from ddpo3d.lite.systems import magic3d  # noqa: F401
