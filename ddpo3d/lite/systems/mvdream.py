"""``mvdream-system``: threestudio-mvdream's system on the built-in runtime.

threestudio-mvdream's ``MVDreamSystem`` is DreamFusion's training step with the guidance called
on ``comp_rgb`` and the whole batch (``c2w``, ``fovy`` ...), every ``loss_<x>`` times
``lambda_<x>`` plus the orientation / sparsity / opacity / z-variance regularisers; this mirror
reuses the built-in ``dreamfusion-system`` for that and adds its one key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpo3d.lite import register
from ddpo3d.lite.systems.dreamfusion import DreamFusion


@register("mvdream-system")
class MVDreamSystem(DreamFusion):
    """threestudio-mvdream's ``mvdream-system``."""

    @dataclass
    class Config(DreamFusion.Config):
        visualize_samples: bool = False  # threestudio-mvdream key (sample visualisation; unused here)

    cfg: "MVDreamSystem.Config"
