from . import ddpo3d_system  # noqa: F401
