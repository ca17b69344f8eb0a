from ddpo3d.utils.typing import *  # noqa: F401,F403
