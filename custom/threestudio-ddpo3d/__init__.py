"""threestudio-ddpo3d extension: reward-aligned guidance, systems and Gaussian splats.

Loaded by threestudio's ``launch.py`` (``load_custom_modules``) or by ours; every class
registers itself through :mod:`ddpo3d.host`, which is threestudio when it is installed and
the built-in runtime otherwise. Targets threestudio 0.2.3.
"""

from . import geometry, guidance, prompt_processors, renderers, systems  # noqa: F401
