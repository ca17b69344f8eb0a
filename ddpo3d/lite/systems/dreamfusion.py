"""``dreamfusion-system``: score distillation of a 2D prior into a NeRF (Poole et al. 2022,
"DreamFusion: Text-to-3D using 2D Diffusion"), threestudio 0.2.3's ``systems/dreamfusion.py``.

One training step: render the batch's cameras, call the guidance on ``comp_rgb``, sum every
returned ``loss_<x>`` times ``C(system.loss.lambda_<x>)`` plus the geometry regularisers
below, and log every scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpo3d.lite import find, register
from ddpo3d.lite.systems.base import BaseLift3DSystem
from ddpo3d.lite.utils.ops import binary_cross_entropy, dot
from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Any, Dict

#: loss weights threestudio's DreamFusion reads on every training step
REQUIRED_LOSS_KEYS = ("lambda_orient", "lambda_sparsity", "lambda_opaque")


@register("dreamfusion-system")
class DreamFusion(BaseLift3DSystem):
    """DreamFusion with threestudio's regularisers.

    Losses (weights in ``system.loss``):

    * every ``loss_<x>`` the guidance returns, times ``lambda_<x>`` (missing weight: error);
    * ``orient`` (DreamFusion Eq. 5 / Ref-NeRF): ``Σ w_i · max(0, n_i · d_i)²`` over samples,
      normalised by the number of rays with opacity > 0: penalises normals facing away
      from the camera. Needs ``normal`` in the renderer output when its weight is > 0;
    * ``sparsity``: ``mean(sqrt(opacity² + 0.01))``, a smooth L1 on accumulated opacity;
    * ``opaque``: binary entropy of the (clamped) opacity, pushing it to 0 or 1;
    * ``z_variance`` (HiFA, Zhu et al. 2023): mean depth variance along rays with
      opacity > 0.5, when the renderer returns ``z_variance``.

    ``lambda_orient``, ``lambda_sparsity`` and ``lambda_opaque`` are required (0 disables a
    term): threestudio reads them on every training step, so a config without them fails there;
    here training stops before the first step with an error naming the missing keys.
    ``lambda_z_variance`` is optional, as in threestudio.
    """

    @dataclass
    class Config(BaseLift3DSystem.Config):
        pass

    cfg: Config

    def configure(self) -> None:
        super().configure()

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {**self.renderer(**batch)}

    def on_fit_start(self) -> None:
        missing = [k for k in REQUIRED_LOSS_KEYS if k not in self.cfg.loss]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs system.loss.{', system.loss.'.join(missing)}: threestudio reads "
                f"{', '.join(REQUIRED_LOSS_KEYS)} on every training step (0 disables a term)"
            )
        super().on_fit_start()
        # only needed for training, as in threestudio
        self.prompt_processor = find(self._require_type("prompt_processor_type"))(self.cfg.prompt_processor)
        self.guidance = find(self._require_type("guidance_type"))(self.cfg.guidance)

    def _regulariser_weight(self, name: str) -> float:
        key = f"lambda_{name}"
        if key in REQUIRED_LOSS_KEYS:
            return self.loss_weight(name)  # required: a missing key is an error naming it
        return self.C(self.cfg.loss[key]) if key in self.cfg.loss else 0.0

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, Any]:
        out = self(batch)
        prompt_utils = self.prompt_processor()
        guidance_out = self.guidance(out["comp_rgb"], prompt_utils, **batch, rgb_as_latents=False)

        loss = 0.0
        for name, value in guidance_out.items():
            if not (isinstance(value, torch.Tensor) and value.numel() > 1):
                self.log(f"train/{name}", value)
            if name.startswith("loss_"):
                loss = loss + value * self.loss_weight(name)

        if self._regulariser_weight("orient") > 0:
            if "normal" not in out:
                raise ConfigError(
                    "system.loss.lambda_orient > 0 needs normals, but the renderer output has no 'normal' "
                    "(set system.geometry.normal_type, or lambda_orient: 0)"
                )
            loss_orient = (out["weights"].detach() * dot(out["normal"], out["t_dirs"]).clamp_min(0.0) ** 2).sum() / (
                out["opacity"] > 0
            ).sum().clamp_min(1)
            self.log("train/loss_orient", loss_orient)
            loss = loss + loss_orient * self._regulariser_weight("orient")

        loss_sparsity = (out["opacity"] ** 2 + 0.01).sqrt().mean()
        self.log("train/loss_sparsity", loss_sparsity)
        loss = loss + loss_sparsity * self._regulariser_weight("sparsity")

        opacity_clamped = out["opacity"].clamp(1.0e-3, 1.0 - 1.0e-3)
        loss_opaque = binary_cross_entropy(opacity_clamped, opacity_clamped)
        self.log("train/loss_opaque", loss_opaque)
        loss = loss + loss_opaque * self._regulariser_weight("opaque")

        if "z_variance" in out and "lambda_z_variance" in self.cfg.loss:
            mask = out["opacity"] > 0.5
            if mask.any():
                loss_z_variance = out["z_variance"][mask].mean()
                self.log("train/loss_z_variance", loss_z_variance)
                loss = loss + loss_z_variance * self._regulariser_weight("z_variance")

        for name, value in self.cfg.loss.items():
            self.log(f"train_params/{name}", self.C(value))

        if not isinstance(loss, torch.Tensor):
            raise ConfigError(
                "The training step produced no loss: the guidance returned no loss_* term and no "
                "regulariser weight is set in system.loss"
            )
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    def _eval_grid(self, out: Dict[str, Any]) -> list:
        cols = [{"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}}]
        if "comp_normal" in out:
            cols.append(
                {"type": "rgb", "img": out["comp_normal"][0], "kwargs": {"data_format": "HWC", "data_range": (0, 1)}}
            )
        cols.append(
            {"type": "grayscale", "img": out["opacity"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": (0, 1)}}
        )
        return cols

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        index = int(batch["index"][0])
        self.save_image_grid(
            f"it{self.true_global_step}-{index}.png",
            self._eval_grid(out),
            name="validation_step",
            step=self.true_global_step,
        )

    def on_validation_epoch_end(self) -> None:
        pass

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        index = int(batch["index"][0])
        self.save_image_grid(
            f"it{self.true_global_step}-test/{index}.png",
            self._eval_grid(out),
            name="test_step",
            step=self.true_global_step,
        )

    def on_test_epoch_end(self) -> None:
        self.save_img_sequence(
            f"it{self.true_global_step}-test",
            f"it{self.true_global_step}-test",
            r"(\d+)\.png",
            save_format="mp4",
            fps=30,
            name="test",
            step=self.true_global_step,
        )
