from ddpo3d.lite.models import (  # noqa: F401
    background,
    geometry,
    guidance,
    materials,
    prompt_processors,
    renderers,
)
