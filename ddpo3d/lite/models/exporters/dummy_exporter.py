"""``dummy-exporter``: exports nothing (used with ``save_video`` to only render the turntable)."""

from __future__ import annotations

from ddpo3d.lite import register
from ddpo3d.lite.models.exporters.base import Exporter, ExporterOutput
from ddpo3d.utils.typing import List


@register("dummy-exporter")
class DummyExporter(Exporter):
    """Writes no file; ``--export`` with ``save_video: true`` still renders the test views."""

    def __call__(self, *args, **kwargs) -> List[ExporterOutput]:
        return []
