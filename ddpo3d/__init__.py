"""threestudio-ddpo3d core: rewards, diffusion adapters, alignment objectives.

Nothing here imports threestudio; the built-in runtime lives in :mod:`ddpo3d.lite`
and the threestudio extension in ``custom/threestudio-ddpo3d``.
"""

__version__ = "0.1.0"

#: threestudio release the extension is written against.
THREESTUDIO_TARGET_VERSION = "0.2.3"
