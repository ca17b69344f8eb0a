from ddpo3d.lite.systems import (  # noqa: F401
    base,
    dreamfusion,
    magic3d,  # noqa: F401
    mvdream,  # noqa: F401
)
