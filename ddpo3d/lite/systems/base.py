"""System base classes: ``BaseSystem`` (a LightningModule with threestudio's hooks) and
``BaseLift3DSystem`` (builds geometry / material / background / renderer by type name).

Same names, config keys and hook semantics as threestudio 0.2.3's ``systems/base.py``, so
extension systems (``custom/threestudio-ddpo3d``) subclass either host's classes through
``ddpo3d.host``:

* before every train / val / test / predict batch: ``preprocess_data(batch, stage)``, then
  ``update_step(epoch, global_step)`` on the dataset and, recursively, on every
  :class:`~ddpo3d.lite.utils.base.Updateable` attribute of the system (guidance, prompt
  processor, geometry, ...); after it ``update_step_end``;
* ``self.C(value)`` evaluates a schedule at the current step;
* ``configure_optimizers`` from ``optimizer`` / ``scheduler`` blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch

from ddpo3d.lite import find, info, warn
from ddpo3d.lite.models.exporters.base import Exporter, ExporterOutput
from ddpo3d.lite.systems.utils import parse_optimizer, parse_scheduler
from ddpo3d.lite.utils.base import Updateable, update_end_if_possible, update_if_possible
from ddpo3d.lite.utils.misc import cleanup
from ddpo3d.lite.utils.saving import SaverMixin
from ddpo3d.training_guard import ReliableSystemMixin
from ddpo3d.utils.config import ConfigError, parse_structured, to_primitive
from ddpo3d.utils.schedule import C
from ddpo3d.utils.typing import Any, Dict, List, Optional, Tuple


def load_module_weights(
    path: str, module_name: Optional[str] = None, ignore_modules: Optional[List[str]] = None
) -> Tuple[Dict[str, torch.Tensor], int, int]:
    """Read a Lightning checkpoint's ``state_dict`` (optionally one sub-module's, prefix
    stripped, or without some sub-modules) with its epoch and global step.

    Raises:
        FileNotFoundError: naming the path.
    """
    if module_name is not None and ignore_modules is not None:
        raise ValueError("load_module_weights: module_name and ignore_modules cannot both be set")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    if ignore_modules is not None:
        state = {k: v for k, v in state.items() if not any(k.startswith(m + ".") for m in ignore_modules)}
    if module_name is not None:
        prefix = module_name + "."
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state, ckpt["epoch"], ckpt["global_step"]


def _loader_dataset(loaders: Any) -> Any:
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return getattr(loaders, "dataset", None)


class BaseSystem(ReliableSystemMixin, pl.LightningModule, Updateable, SaverMixin):
    """A LightningModule with threestudio's configuration and step hooks.

    Training is guarded by :class:`ddpo3d.training_guard.TrainingGuard` (returned from
    ``configure_callbacks``): a step whose loss, logged loss / advantage terms, reward or
    gradients are non-finite leaves parameters and optimiser state untouched, any exception
    writes ``ckpts/last.ckpt`` first, and resume restores the RNG streams.

    Args:
        cfg: the ``system`` block (parsed strictly into ``Config``).
        resumed: whether training resumes from a checkpoint (``resume=...``).
    """

    @dataclass
    class Config:
        loggers: dict = field(default_factory=dict)  # threestudio's wandb block: ignored here (notice)
        loss: dict = field(default_factory=dict)  # lambda_<name>: weight or schedule per loss term
        optimizer: dict = field(default_factory=dict)  # {name, args, params: {module: {lr}}}
        scheduler: Optional[dict] = None  # {name, args, interval} (torch.optim.lr_scheduler)
        weights: Optional[str] = None  # checkpoint to initialise from
        weights_ignore_modules: Optional[List[str]] = None  # sub-modules not loaded from `weights`
        cleanup_after_validation_step: bool = False  # gc + empty CUDA cache after each val step
        cleanup_after_test_step: bool = False  # same after each test step

    cfg: Config

    def __init__(self, cfg: Any, resumed: bool = False) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, where=f"system ({type(self).__name__})")
        self._save_dir: Optional[str] = None
        self._resumed: bool = resumed
        self._resumed_eval: bool = False
        self._resumed_eval_status: dict = {"global_step": 0, "current_epoch": 0}
        self.create_loggers(self.cfg.loggers)
        self.configure()
        if self.cfg.weights is not None:
            self.load_weights(self.cfg.weights, self.cfg.weights_ignore_modules)
        self.post_configure()

    # ---- configuration ----------------------------------------------------------------------
    def create_loggers(self, cfg_loggers: Any) -> None:
        for name, block in (to_primitive(cfg_loggers) or {}).items():
            if isinstance(block, dict) and block.get("enable", False):
                warn(
                    f"system.loggers.{name} is not supported by the built-in runtime and is ignored "
                    "(CSV and TensorBoard logs are written under the trial dir)"
                )

    def configure(self) -> None:
        """Build sub-modules (override)."""

    def post_configure(self) -> None:
        """Runs after ``weights`` are loaded (override)."""

    def load_weights(self, weights: str, ignore_modules: Optional[List[str]] = None) -> None:
        state, epoch, global_step = load_module_weights(weights, ignore_modules=ignore_modules)
        self.load_state_dict(state, strict=False)
        self.do_update_step(epoch, global_step, on_load_weights=True)

    def set_resume_status(self, current_epoch: int, global_step: int) -> None:
        """Report a checkpoint's step in validate / test / export runs (Lightning does not restore it there)."""
        self._resumed_eval = True
        self._resumed_eval_status["current_epoch"] = current_epoch
        self._resumed_eval_status["global_step"] = global_step

    @property
    def resumed(self) -> bool:
        return self._resumed

    @property
    def true_global_step(self) -> int:
        return self._resumed_eval_status["global_step"] if self._resumed_eval else self.global_step

    @property
    def true_current_epoch(self) -> int:
        return self._resumed_eval_status["current_epoch"] if self._resumed_eval else self.current_epoch

    def C(self, value: Any) -> float:
        """A weight or schedule evaluated at the current step."""
        return C(value, self.true_current_epoch, self.true_global_step)

    def loss_weight(self, loss_name: str) -> float:
        """``C(cfg.loss["lambda_<x>"])`` for a loss called ``loss_<x>`` (or ``<x>``).

        Raises:
            ConfigError: ``system.loss`` has no ``lambda_<x>``; the message names it.
        """
        key = "lambda_" + (loss_name[len("loss_") :] if loss_name.startswith("loss_") else loss_name)
        if key not in self.cfg.loss:
            known = ", ".join(sorted(self.cfg.loss)) or "none"
            raise ConfigError(
                f"The training step returned {loss_name!r} but system.loss has no {key!r}. "
                f"Add system.loss.{key}=<weight> (0 disables it). Known weights: {known}"
            )
        return self.C(self.cfg.loss[key])

    def configure_optimizers(self):
        optim = parse_optimizer(self.cfg.optimizer, self)
        ret: Dict[str, Any] = {"optimizer": optim}
        if self.cfg.scheduler is not None:
            ret["lr_scheduler"] = parse_scheduler(self.cfg.scheduler, optim)
        return ret

    # ---- steps (override) -------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        raise NotImplementedError

    def validation_step(self, batch, batch_idx):
        raise NotImplementedError

    def test_step(self, batch, batch_idx):
        raise NotImplementedError

    def predict_step(self, batch, batch_idx):
        raise NotImplementedError

    def on_validation_epoch_end(self):
        pass

    def on_test_epoch_end(self):
        pass

    def on_predict_epoch_end(self):
        pass

    def preprocess_data(self, batch: Dict[str, Any], stage: str) -> None:
        """Modify a batch in place before the step (override)."""

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        pass

    # ---- threestudio's per-batch update hooks ----------------------------------------------
    def _before_batch(self, batch: Dict[str, Any], stage: str, loaders: Any) -> None:
        self.preprocess_data(batch, stage)
        self.dataset = _loader_dataset(loaders)
        update_if_possible(self.dataset, self.true_current_epoch, self.true_global_step)
        self.do_update_step(self.true_current_epoch, self.true_global_step)

    def _after_batch(self, loaders: Any, clean: bool = False) -> None:
        self.dataset = _loader_dataset(loaders)
        update_end_if_possible(self.dataset, self.true_current_epoch, self.true_global_step)
        self.do_update_step_end(self.true_current_epoch, self.true_global_step)
        if clean:
            cleanup()

    def on_train_batch_start(self, batch, batch_idx, unused=0):
        self._before_batch(batch, "train", self.trainer.train_dataloader)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._after_batch(self.trainer.train_dataloader)

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._before_batch(batch, "validation", self.trainer.val_dataloaders)

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self._after_batch(self.trainer.val_dataloaders, self.cfg.cleanup_after_validation_step)

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._before_batch(batch, "test", self.trainer.test_dataloaders)

    def on_test_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self._after_batch(self.trainer.test_dataloaders, self.cfg.cleanup_after_test_step)

    def on_predict_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._before_batch(batch, "predict", self.trainer.predict_dataloaders)

    def on_predict_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self._after_batch(self.trainer.predict_dataloaders, self.cfg.cleanup_after_test_step)


class BaseLift3DSystem(BaseSystem):
    """A text-to-3D system: ``geometry``, ``material``, ``background`` and ``renderer`` built
    from their ``*_type`` names with ``find(type)(cfg, ...)``; guidance and prompt processor
    are built by subclasses (threestudio builds them in ``on_fit_start``)."""

    @dataclass
    class Config(BaseSystem.Config):
        geometry_type: str = ""  # registry name, e.g. implicit-volume
        geometry: dict = field(default_factory=dict)
        geometry_convert_from: Optional[str] = None  # unsupported here (coarse-to-fine conversion)
        geometry_convert_inherit_texture: bool = False
        geometry_convert_override: dict = field(default_factory=dict)
        material_type: str = ""
        material: dict = field(default_factory=dict)
        background_type: str = ""
        background: dict = field(default_factory=dict)
        renderer_type: str = ""
        renderer: dict = field(default_factory=dict)
        guidance_type: str = ""
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: str = ""
        prompt_processor: dict = field(default_factory=dict)
        exporter_type: str = "mesh-exporter"  # used by --export
        exporter: dict = field(default_factory=dict)

    cfg: Config

    def _require_type(self, key: str) -> str:
        name = getattr(self.cfg, key)
        if not name:
            raise ConfigError(f"system.{key} is required for {type(self).__name__}")
        return name

    def configure(self) -> None:
        if self.cfg.geometry_convert_from:
            raise ConfigError(
                "system.geometry_convert_from (initialising from another stage's geometry) is not "
                "supported by the built-in runtime"
            )
        self.geometry = find(self._require_type("geometry_type"))(self.cfg.geometry)
        self.material = find(self._require_type("material_type"))(self.cfg.material)
        self.background = find(self._require_type("background_type"))(self.cfg.background)
        self.renderer = find(self._require_type("renderer_type"))(
            self.cfg.renderer, geometry=self.geometry, material=self.material, background=self.background
        )

    def on_fit_start(self) -> None:
        if self._save_dir is not None:
            info(f"Validation results will be saved to {self._save_dir}")
        else:
            warn("Saving directory not set for the system, visualization results will not be saved")

    def on_test_end(self) -> None:
        if self._save_dir is not None:
            info(f"Test results saved to {self._save_dir}")

    def on_predict_start(self) -> None:
        self.exporter: Exporter = find(self.cfg.exporter_type)(
            self.cfg.exporter, geometry=self.geometry, material=self.material, background=self.background
        )

    def predict_step(self, batch, batch_idx):
        if self.exporter.cfg.save_video:
            self.test_step(batch, batch_idx)

    def on_predict_epoch_end(self) -> None:
        if self.exporter.cfg.save_video:
            self.on_test_epoch_end()
        outputs: List[ExporterOutput] = self.exporter()
        for out in outputs:
            saver = getattr(self, f"save_{out.save_type}", None)
            if saver is None:
                raise ValueError(f"save_{out.save_type} is not supported by the SaverMixin")
            saver(f"it{self.true_global_step}-export/{out.save_name}", **out.params)

    def on_predict_end(self) -> None:
        if self._save_dir is not None:
            info(f"Export assets saved to {self._save_dir}")
