"""Lightning callbacks: config snapshot, progress bar without ``v_num``, checkpoint on Ctrl-C.

``ConfigSnapshotCallback`` and ``CustomProgressBar`` follow threestudio 0.2.3's
``utils/callbacks.py``; ``InterruptCheckpoint`` is ours (threestudio loses the steps since
the last checkpoint when a run is interrupted).
"""

from __future__ import annotations

import os
import shutil

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.callbacks.progress import TQDMProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ddpo3d.lite import info
from ddpo3d.utils.typing import Any, Optional


class ConfigSnapshotCallback(Callback):
    """Write the merged config to ``<save_root>/parsed.yaml`` and copy the raw YAML to
    ``raw.yaml`` when fitting starts.

    Args:
        config_path: the YAML the run was launched with (``None``: no raw copy).
        config: the parsed experiment config.
        save_root: folder, usually ``<trial_dir>/configs``.
    """

    def __init__(self, config_path: Optional[str], config: Any, save_root: str) -> None:
        self.config_path = config_path
        self.config = config
        self.save_root = save_root

    @rank_zero_only
    def save_config_snapshot(self) -> None:
        from ddpo3d.lite.experiment import dump_config

        os.makedirs(self.save_root, exist_ok=True)
        dump_config(os.path.join(self.save_root, "parsed.yaml"), self.config)
        if self.config_path is not None and os.path.isfile(self.config_path):
            shutil.copyfile(self.config_path, os.path.join(self.save_root, "raw.yaml"))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_config_snapshot()


class CustomProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar without the logger version number."""

    def get_metrics(self, *args, **kwargs):
        items = super().get_metrics(*args, **kwargs)
        items.pop("v_num", None)
        return items


class InterruptCheckpoint(Callback):
    """On Ctrl-C (``KeyboardInterrupt``) during fitting, save a full checkpoint to ``path``
    before Lightning shuts down, so ``resume=<path>`` continues where the run stopped.

    Args:
        path: checkpoint file, usually ``<trial_dir>/ckpts/last.ckpt``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.saved: bool = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        trainer.save_checkpoint(self.path)
        self.saved = True
        info(f"Interrupted at step {trainer.global_step}: checkpoint saved to {self.path} (resume={self.path})")
