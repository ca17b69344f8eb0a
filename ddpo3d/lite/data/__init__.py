from ddpo3d.lite.data import (
    uncond,  # noqa: F401
    uncond_multiview,  # noqa: F401
)
