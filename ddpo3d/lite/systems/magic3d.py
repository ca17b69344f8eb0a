"""``magic3d-system``: Magic3D's coarse stage (Lin et al. 2023, "Magic3D: High-Resolution
Text-to-3D Content Creation", arXiv 2211.10440, Sec. 4.1), threestudio 0.2.3's
``systems/magic3d.py``.

The coarse stage is DreamFusion-style score distillation into a NeRF (threestudio's stock
config: hash-grid ``implicit-volume`` with Magic3D's density blob, SD guidance at 64 px);
the loss is every guidance ``loss_<x>`` times ``lambda_<x>`` plus the orientation (only
when ``lambda_orient`` > 0), sparsity and opacity regularisers, which is
:class:`~ddpo3d.lite.systems.dreamfusion.DreamFusion`'s training step: this class reuses it
and its validation / test outputs.

The refinement stage (``refinement: true``: a textured DMTet mesh rendered with
nvdiffrast, Sec. 4.2) is not part of the built-in runtime and is rejected with an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpo3d.lite import register
from ddpo3d.lite.systems.dreamfusion import DreamFusion
from ddpo3d.utils.config import ConfigError

#: loss weights threestudio's coarse Magic3D reads unconditionally
COARSE_LAMBDAS = ("lambda_orient", "lambda_sparsity", "lambda_opaque")


@register("magic3d-system")
class Magic3D(DreamFusion):
    """Magic3D, coarse stage, with threestudio's config keys.

    Config: every :class:`~ddpo3d.lite.systems.base.BaseLift3DSystem` key plus
    ``refinement`` (bool, default false; true is not supported here).

    Losses (weights in ``system.loss``; ``lambda_orient``, ``lambda_sparsity`` and
    ``lambda_opaque`` are required, as threestudio reads them every step):

    * each guidance ``loss_<x>`` times ``lambda_<x>``;
    * ``orient`` when ``lambda_orient`` > 0 (needs normals), ``sparsity`` and ``opaque``, as
      in :class:`DreamFusion`. DreamFusion's optional ``z_variance`` term is not part of
      Magic3D and is never added.
    """

    @dataclass
    class Config(DreamFusion.Config):
        refinement: bool = False  # true: Magic3D's mesh refinement stage (not in the built-in runtime)

    cfg: Config

    def configure(self) -> None:
        if self.cfg.refinement:
            raise NotImplementedError(
                "system.refinement=true (Magic3D's refinement stage: DMTet mesh geometry "
                "'tetrahedra-sdf-grid' rendered with 'nvdiff-rasterizer') is not supported by the "
                "built-in runtime. Run the coarse stage here (refinement: false) and the refinement "
                "stage with threestudio installed on a CUDA machine."
            )
        missing = [k for k in COARSE_LAMBDAS if k not in self.cfg.loss]
        if missing:
            raise ConfigError(
                f"magic3d-system needs system.loss.{', system.loss.'.join(missing)} (threestudio's Magic3D "
                f"reads {', '.join(COARSE_LAMBDAS)} every step; 0 disables a term)"
            )
        super().configure()

    def _regulariser_weight(self, name: str) -> float:
        if name == "z_variance":
            return 0.0  # not a Magic3D loss
        return super()._regulariser_weight(name)
