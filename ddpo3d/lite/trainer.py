"""Run an experiment on the built-in runtime: data module + system + Lightning trainer.

The body of threestudio 0.2.3's ``launch.py`` ``main`` for this runtime: builds
``find(data_type)(data)`` and ``find(system_type)(system)``, a Lightning ``Trainer`` from the
``trainer`` block (any ``pytorch_lightning.Trainer`` argument), a ``ModelCheckpoint`` from the
``checkpoint`` block into ``<trial_dir>/ckpts``, CSV logs (and TensorBoard logs when
``tensorboard`` is installed) under ``<trial_dir>``, and runs one of ``train`` (fit, then
test), ``validate``, ``test``, ``export`` (predict).

CPU specifics: ``precision: 16-mixed`` (fp16 autocast) does not exist on CPU in Lightning,
so it runs as ``32-true`` with a notice; ``bf16-mixed`` is kept. Model summaries are off to
keep start-up cheap.
"""

from __future__ import annotations

import inspect
import os
import sys

import pytorch_lightning as pl
import torch

from ddpo3d.lite import find, info, warn
from ddpo3d.lite.utils.callbacks import ConfigSnapshotCallback, CustomProgressBar
from ddpo3d.lite.utils.misc import set_device
from ddpo3d.utils.config import ConfigError, parse_structured, to_primitive, unknown_key_message
from ddpo3d.utils.prompts import check_prompt
from ddpo3d.utils.typing import Any, Dict, List, Optional, Sequence

MODES = ("train", "validate", "test", "export")
_FP16 = {"16", "16-mixed", "16-true"}


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """Lightning precision for the device: fp16 on CPU becomes ``32-true`` (with a notice)."""
    if precision is None:
        return None
    if accelerator == "cpu" and str(precision) in _FP16:
        info(f"precision {precision!r} needs CUDA; running in 32-true on CPU")
        return "32-true"
    return precision


def choose_accelerator(gpu: Optional[str]) -> str:
    """``"gpu"`` when CUDA is available, else ``"cpu"`` (with a notice if ``--gpu`` was given)."""
    if torch.cuda.is_available():
        return "gpu"
    if gpu is not None:
        info(f"--gpu {gpu} ignored: no CUDA device available; running on CPU")
    return "cpu"


def _tensorboard_logger(trial_dir: str) -> List[Any]:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return []
    from pytorch_lightning.loggers import TensorBoardLogger

    os.makedirs(os.path.join(trial_dir, "tb_logs"), exist_ok=True)
    return [TensorBoardLogger(trial_dir, name="tb_logs")]


def check_kwargs(target: Any, kwargs: Dict[str, Any], block: str) -> None:
    """Raise a :class:`ConfigError` naming any key of ``block`` that ``target`` does not accept."""
    import inspect

    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [k for k in params if k != "self"]
    for key in kwargs:
        if key not in known:
            raise ConfigError(unknown_key_message(key, f"{block} ({target.__module__}.{target.__qualname__})", known))


def build_trainer(
    cfg: Any,
    mode: str,
    accelerator: str,
    config_path: Optional[str] = None,
    extra_callbacks: Sequence[Any] = (),
    loggers: Sequence[Any] = (),
) -> pl.Trainer:
    """A Lightning ``Trainer`` for ``cfg`` (an ``ExperimentConfig``) and ``mode``.

    Args:
        cfg: parsed experiment config.
        mode: one of ``train``, ``validate``, ``test``, ``export``.
        accelerator: ``"cpu"`` or ``"gpu"``.
        config_path: the launched YAML (copied to ``configs/raw.yaml``).
        extra_callbacks: more callbacks.
        loggers: extra loggers (the system's).

    Returns:
        The trainer.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    trainer_kwargs: Dict[str, Any] = dict(to_primitive(cfg.trainer) or {})
    for key in ("accelerator", "devices", "strategy", "num_nodes"):
        if key in trainer_kwargs:
            warn(
                f"trainer.{key} is chosen by the launcher (one {accelerator.upper()} device); ignoring {trainer_kwargs.pop(key)!r}"
            )
    if "precision" in trainer_kwargs:
        trainer_kwargs["precision"] = resolve_precision(trainer_kwargs["precision"], accelerator)
    trainer_kwargs.setdefault("enable_model_summary", False)
    check_kwargs(pl.Trainer.__init__, trainer_kwargs, "trainer")
    callbacks: List[Any] = list(extra_callbacks)
    run_loggers: List[Any] = []
    if mode == "train":
        from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
        from pytorch_lightning.loggers import CSVLogger

        ckpt_dir = os.path.join(cfg.trial_dir, "ckpts")
        ckpt_kwargs = dict(to_primitive(cfg.checkpoint) or {})
        check_kwargs(ModelCheckpoint.__init__, ckpt_kwargs, "checkpoint")
        callbacks += [
            ModelCheckpoint(dirpath=ckpt_dir, **ckpt_kwargs),
            LearningRateMonitor(logging_interval="step"),
            ConfigSnapshotCallback(config_path, cfg, os.path.join(cfg.trial_dir, "configs")),
        ]  # the system's TrainingGuard (configure_callbacks) writes last.ckpt on Ctrl-C and errors
        run_loggers += _tensorboard_logger(cfg.trial_dir) + [CSVLogger(cfg.trial_dir, name="csv_logs")]
        run_loggers += list(loggers)
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(CustomProgressBar(refresh_rate=1))
    return pl.Trainer(
        callbacks=callbacks,
        logger=run_loggers if run_loggers else False,
        inference_mode=False,
        accelerator=accelerator,
        devices=1,
        **trainer_kwargs,
    )


def _set_system_status(system: Any, ckpt_path: Optional[str]) -> None:
    if ckpt_path is None:
        return
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"Checkpoint not found: {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    system.set_resume_status(ckpt["epoch"], ckpt["global_step"])


def validate_system_config(cfg: Any) -> None:
    """Check the parts of ``system`` that are only built when fitting starts (guidance and
    prompt processor, their reward and objective blocks) without loading any model, so that
    a typo fails before anything is written.

    Raises:
        ConfigError: naming the bad key, block or value.
    """
    system = to_primitive(cfg.system) or {}
    pp = system.get("prompt_processor") or {}
    if "prompt" in pp:
        check_prompt(pp["prompt"])
    for key in ("prompt_processor", "guidance"):
        type_name = system.get(f"{key}_type")
        if not type_name:
            continue
        cls = find(type_name)
        config_cls = getattr(cls, "Config", None)
        if config_cls is None:
            continue
        block = system.get(key) or {}
        parse_structured(config_cls, block, where=f"system.{key} ({type_name})")
        if key == "guidance" and isinstance(block, dict):
            from ddpo3d.rewards.registry import validate_reward_config

            if block.get("reward") is not None:
                validate_reward_config(block["reward"])
            if isinstance(block.get("objective"), dict):
                from ddpo3d.objectives.combined import build_objective, check_reward_for_objective
                from ddpo3d.rewards.registry import render_out_block_names

                build_objective(block["objective"])
                if block.get("reward") is not None:  # geometry rewards cannot score x̂0 predictions
                    check_reward_for_objective(
                        str(block["objective"].get("type", "none")), render_out_block_names(block["reward"])
                    )


def run_experiment(
    cfg: Any,
    mode: str,
    gpu: Optional[str] = None,
    config_path: Optional[str] = None,
    argv: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Build data, system and trainer for ``cfg`` and run ``mode``.

    Nothing is written before the whole config has been validated; the trial folder is then
    chosen by :func:`ddpo3d.lite.experiment.prepare_trial_dir` (a training run never writes
    into another run's folder; ``resume=<trial>/ckpts/...`` continues in ``<trial>``).

    Args:
        cfg: parsed experiment config (``ddpo3d.lite.experiment.load_config``).
        mode: ``train`` (fit then test), ``validate``, ``test`` or ``export``.
        gpu: the ``--gpu`` value (``None``: not given).
        config_path: the YAML launched (copied into the trial dir).
        argv: the command line, recorded in ``cmd.txt`` for training runs.

    Returns:
        ``{"trainer", "system", "datamodule"}`` after the run.

    Raises:
        TrainingInterrupted: Ctrl-C during fitting (``ckpts/last.ckpt`` written first).
    """
    from ddpo3d.lite.experiment import prepare_trial_dir

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    accelerator = choose_accelerator(gpu)
    set_device("cuda" if accelerator == "gpu" else "cpu")
    quiet = {"verbose": False} if "verbose" in inspect.signature(pl.seed_everything).parameters else {}  # pl >= 2.2
    pl.seed_everything(cfg.seed, workers=True, **quiet)
    if cfg.resume is not None and not os.path.isfile(cfg.resume):
        raise FileNotFoundError(f"resume checkpoint not found: {cfg.resume}")
    if not cfg.data_type:
        raise ValueError("data_type is required (e.g. random-camera-datamodule)")
    if not cfg.system_type:
        raise ValueError("system_type is required (e.g. dreamfusion-system)")
    validate_system_config(cfg)
    dm = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system, resumed=cfg.resume is not None)
    trainer_kwargs = dict(to_primitive(cfg.trainer) or {})
    check_kwargs(pl.Trainer.__init__, trainer_kwargs, "trainer")
    if mode == "train":
        from pytorch_lightning.callbacks import ModelCheckpoint

        check_kwargs(ModelCheckpoint.__init__, dict(to_primitive(cfg.checkpoint) or {}), "checkpoint")
    prepare_trial_dir(cfg, mode)  # the config is valid: now the trial folder may be written
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))
    trainer = build_trainer(cfg, mode, accelerator, config_path=config_path, loggers=system.get_loggers())
    if mode == "train":
        with open(os.path.join(cfg.trial_dir, "cmd.txt"), "a" if cfg.resume is not None else "w") as f:
            f.write("python " + " ".join(argv if argv is not None else sys.argv) + "\n")
        trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
        trainer.test(system, datamodule=dm)
    elif mode == "validate":
        _set_system_status(system, cfg.resume)
        trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
    elif mode == "test":
        _set_system_status(system, cfg.resume)
        trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
    else:
        _set_system_status(system, cfg.resume)
        trainer.predict(system, datamodule=dm, ckpt_path=cfg.resume)
    return {"trainer": trainer, "system": system, "datamodule": dm}
