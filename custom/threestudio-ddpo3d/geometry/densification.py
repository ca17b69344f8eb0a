"""The Lightning callback that drives a Gaussian geometry's densification (not a registered class).

A system returns it from ``configure_callbacks`` (via ``geometry.training_callbacks()``), so the
reward system knows nothing about Gaussians. Per training step, in 3DGS's order:

* ``on_before_optimizer_step`` (after ``backward``; Lightning has already unscaled the
  parameters' fp16 AMP gradients, not the retained view-space ones): the statistics, with the
  AMP loss scale divided out; a step whose gradient overflowed (skipped by the scaler) adds
  nothing and refines nothing;
* ``on_train_batch_end`` (after ``optimizer.step()``): densify / prune / reset on the
  geometry's schedule; the counts are logged as ``train/densify_<name>`` (and, when the system
  keeps a metric ``history``, recorded there for this step only);

plus the geometry's PLY at the end of testing (``save/it<step>-gaussians.ply``).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from ddpo3d.utils.typing import Any, Optional


def amp_loss_scale(trainer: Any) -> float:
    """The fp16 AMP loss scale of a Lightning trainer's ``GradScaler`` (1.0 without one)."""
    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    scaler = getattr(plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return float(scaler.get_scale())


def global_step(trainer: Any, pl_module: Any) -> int:
    """threestudio's ``true_global_step`` when the module has it, else the trainer's ``global_step``."""
    step = getattr(pl_module, "true_global_step", None)
    return int(step if step is not None else trainer.global_step)


def optimizer_of(trainer: Any, param: torch.nn.Parameter) -> Optional[torch.optim.Optimizer]:
    """The trainer's optimizer whose param groups hold ``param`` (None if none does)."""
    for optimizer in getattr(trainer, "optimizers", None) or []:
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wrapper
        if any(p is param for group in optimizer.param_groups for p in group["params"]):
            return optimizer
    return None


class GaussianDensification(pl.Callback):
    """Densification of one ``ddpo3d-gaussian-splat`` geometry during ``trainer.fit``.

    Args:
        geometry: the geometry (``bind_optimizer``, ``step_post_backward``,
            ``step_post_optimizer``, ``save_ply``).
    """

    def __init__(self, geometry: Any):
        super().__init__()
        self.geometry = geometry
        self._refine = False
        self._step = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # position-lr decay in geometry.update_step and the optimizer surgery need the optimizer
        self.geometry.bind_optimizer(optimizer_of(trainer, self.geometry.means))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        guard = pl_module.__dict__.get("_training_guard")  # ddpo3d.training_guard, when the system has one
        if guard is not None and guard.step_skipped:
            self._refine = False  # a skipped (non-finite) step adds no statistics and refines nothing
            return
        self._refine = self.geometry.step_post_backward(amp_loss_scale(trainer))
        # the step this batch trains (the global step counts it as done only after optimizer.step())
        self._step = global_step(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._refine:
            return
        self._refine = False
        stats = self.geometry.step_post_optimizer(optimizer_of(trainer, self.geometry.means), self._step)
        for k, v in stats.items():
            pl_module.log(f"train/densify_{k}", float(v))
        history = getattr(pl_module, "history", None)
        if stats and history is not None:  # recorded at the step count the system's own rows use
            step = global_step(trainer, pl_module)
            history.add(step, "train", {f"densify_{k}": float(v) for k, v in stats.items()})

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # standard 3DGS PLY, loadable by common splat viewers
        step = global_step(trainer, pl_module)
        self.geometry.save_ply(pl_module.get_save_path(f"it{step}-gaussians.ply"))
