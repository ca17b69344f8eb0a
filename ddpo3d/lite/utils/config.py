"""Config helpers with threestudio's names (``parse_structured``, ``C``, ``config_to_primitive``)."""

from ddpo3d.utils.config import ConfigError, parse_structured  # noqa: F401
from ddpo3d.utils.schedule import C, C_max  # noqa: F401
