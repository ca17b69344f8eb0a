"""Train, validate, test or export a text-to-3D run: threestudio's command line, on threestudio
when it is importable, else on the built-in runtime (``ddpo3d.lite``).

    python launch.py --config configs/dreamfusion-sd.yaml --train --gpu 0 \
        system.prompt_processor.prompt="a hamburger"

Overrides are dotted ``key=value`` pairs merged over the YAML (OmegaConf syntax);
``resume=<ckpt>`` resumes training or picks the checkpoint to evaluate. Every folder under
``custom/`` with an ``__init__.py`` is imported first (extensions register their classes);
unlike threestudio, an extension that fails to import stops the run with its name.

Errors (missing file, bad override, unknown key or type, ...) print one ``error: ...``
line and exit with status 1; ``--verbose`` adds the traceback. An error during training
names the component that raised (reward block, guidance, ...) and the exception type, after
``ckpts/last.ckpt`` was written. Ctrl-C finishes the current step, writes
``ckpts/last.ckpt`` and exits with status 130. ``DDPO3D_HOST=lite`` forces the built-in
runtime.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


class ExtensionImportError(ImportError):
    """An extension folder under ``custom/`` failed to import."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--config",
        required=True,
        action="append",
        help="path to the YAML config; repeat to merge more files in order (e.g. a reward block "
        "from custom/threestudio-ddpo3d/configs/rewards/ over a stock config)",
    )
    parser.add_argument(
        "--gpu",
        default=None,
        help="GPU(s) to use, e.g. 0 or 1,2 (sets CUDA_VISIBLE_DEVICES unless it is set already); "
        "ignored with a notice when there is no CUDA device",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--train", action="store_true", help="fit, then render the test views")
    group.add_argument("--validate", action="store_true", help="render the validation views")
    group.add_argument("--test", action="store_true", help="render the test views and the turntable video")
    group.add_argument("--export", action="store_true", help="export assets (mesh) with the system's exporter")
    parser.add_argument("--gradio", action="store_true", help="threestudio's gradio mode (threestudio host only)")
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--typecheck", action="store_true", help="check jaxtyping annotations at run time (typeguard)")
    return parser


def default_custom_dirs() -> list:
    """``custom/`` under the working directory, and under this file's folder if different."""
    dirs = [os.path.abspath("custom"), os.path.join(HERE, "custom")]
    seen, out = set(), []
    for d in dirs:
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def load_custom_module(module_path: str) -> None:
    """Import an extension folder (its ``__init__.py``) or a single ``.py`` file under the
    folder's base name, as threestudio does.

    Raises:
        ExtensionImportError: naming the extension, chained to the original error.
    """
    name = os.path.basename(module_path.rstrip(os.sep))
    init = module_path
    if os.path.isdir(module_path):
        init = os.path.join(module_path, "__init__.py")
    else:
        name = os.path.splitext(name)[0]
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == init:
        return  # already loaded (main() called twice in one process)
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[module_path] if init != module_path else None
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ExtensionImportError(
            f"extension {name!r} ({module_path}) failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def load_custom_modules(custom_dirs: list) -> list:
    """Import every extension under the given ``custom`` folders; returns their names.

    Folders ending in ``_disabled``, ``__pycache__``, non-Python files and folders without an
    ``__init__.py`` are skipped.
    """
    loaded = []
    for root in custom_dirs:
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if entry == "__pycache__" or entry.startswith(".") or entry.endswith("_disabled"):
                continue
            if os.path.isfile(path) and not entry.endswith(".py"):
                continue
            if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "__init__.py")):
                logging.getLogger("ddpo3d").debug(f"custom/{entry}: no __init__.py, not an extension")
                continue
            start = time.perf_counter()
            load_custom_module(path)
            logging.getLogger("ddpo3d").info(f"Loaded extension {entry} in {time.perf_counter() - start:.1f} s")
            loaded.append(entry)
    return loaded


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (stays valid when it is swapped)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """Runtime messages as ``[LEVEL] message`` on stderr; ``--verbose`` turns on DEBUG for the
    runtime and Lightning (threestudio's behaviour)."""
    ddpo_logger = logging.getLogger("ddpo3d")
    ddpo_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in ddpo_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        ddpo_logger.addHandler(handler)
        ddpo_logger.propagate = False
    if verbose:
        logging.getLogger("pytorch_lightning").setLevel(logging.DEBUG)


def _select_gpus(gpu: "str | None") -> int:
    """Set ``CUDA_VISIBLE_DEVICES`` from ``--gpu`` unless already set (threestudio); returns the GPU count."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return len(env.split(","))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        return len(gpu.split(","))
    return 1


def _mode(args: argparse.Namespace) -> str:
    for mode in ("train", "validate", "test", "export"):
        if getattr(args, mode):
            return mode
    raise ValueError("one of --train, --validate, --test, --export is required")


def run_lite(args: argparse.Namespace, extras: list, custom_dirs: list, n_gpus: int) -> int:
    """The built-in runtime's launcher body."""
    from ddpo3d.lite.experiment import load_config, register_resolvers
    from ddpo3d.lite.trainer import run_experiment

    register_resolvers()
    load_custom_modules(custom_dirs)
    if n_gpus > 1:
        logging.getLogger("ddpo3d").warning("the built-in runtime trains on one device; using the first of --gpu")
    cfg = load_config(*args.config, cli_args=extras, makedirs=False)  # the folder comes once all is valid
    if args.gradio:
        logging.getLogger("ddpo3d").warning("--gradio is only supported on the threestudio host; ignoring it")
    run_experiment(cfg, _mode(args), gpu=args.gpu, config_path=args.config[0], argv=sys.argv)
    return 0


def run_threestudio(args: argparse.Namespace, extras: list, custom_dirs: list, n_gpus: int) -> int:
    """Run the config with threestudio's own classes and Lightning trainer.

    What threestudio 0.2.3's ``launch.py`` does for the same command line (its callbacks,
    loggers, ``cmd.txt``, GPU trainer and mode dispatch), plus: an extension that fails to
    import stops the run, and Ctrl-C saves ``ckpts/last.ckpt``.
    """
    import pytorch_lightning as pl
    import threestudio
    from pytorch_lightning import Trainer
    from threestudio.utils.config import load_config  # registers threestudio's resolvers first
    from threestudio.utils.misc import get_rank

    from ddpo3d.lite.experiment import register_resolvers

    register_resolvers()  # only names threestudio does not register
    if args.gpu is None:  # threestudio's default device is the first GPU
        args.gpu = "0"
        n_gpus = _select_gpus(args.gpu)
    load_custom_modules(custom_dirs)
    cfg = load_config(*args.config, cli_args=extras, n_gpus=n_gpus)
    pl.seed_everything(cfg.seed + get_rank(), workers=True)
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system, resumed=cfg.resume is not None)
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))
    training = _mode(args) == "train"
    trainer = Trainer(
        callbacks=_threestudio_callbacks(args, cfg) if training else [],
        logger=_threestudio_loggers(args, cfg, system) if training else [],
        inference_mode=False,
        accelerator="gpu",
        devices=-1,
        **cfg.trainer,
    )
    if training:
        trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.resume)
        trainer.test(system, datamodule=datamodule)
        if args.gradio:
            trainer.predict(system, datamodule=datamodule)
        return 0
    if cfg.resume is not None:  # evaluation runs report the checkpoint's epoch / step
        import torch

        # a trusted Lightning checkpoint of this run (threestudio's torch 2.0 loaded it in full too)
        state = torch.load(cfg.resume, map_location="cpu", weights_only=False)
        system.set_resume_status(state["epoch"], state["global_step"])
    evaluate = {"validate": trainer.validate, "test": trainer.test, "export": trainer.predict}[_mode(args)]
    evaluate(system, datamodule=datamodule, ckpt_path=cfg.resume)
    return 0


def _threestudio_callbacks(args: argparse.Namespace, cfg: "object") -> list:
    """Training callbacks: checkpoints, learning-rate log, code / config snapshots, progress, and
    a checkpoint on Ctrl-C."""
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from threestudio.utils import callbacks as ts_callbacks

    from ddpo3d.lite.utils.callbacks import InterruptCheckpoint

    def trial(*parts: str) -> str:
        return os.path.join(cfg.trial_dir, *parts)

    progress = (
        ts_callbacks.ProgressCallback(save_path=trial("progress"))
        if args.gradio
        else ts_callbacks.CustomProgressBar(refresh_rate=1)
    )
    return [
        ModelCheckpoint(dirpath=trial("ckpts"), **cfg.checkpoint),
        LearningRateMonitor(logging_interval="step"),
        ts_callbacks.CodeSnapshotCallback(trial("code"), use_version=False),
        ts_callbacks.ConfigSnapshotCallback(args.config[0], cfg, trial("configs"), use_version=False),
        InterruptCheckpoint(trial("ckpts", "last.ckpt")),
        progress,
    ]


def _threestudio_loggers(args: argparse.Namespace, cfg: "object", system: "object") -> list:
    """Training loggers (TensorBoard, CSV, the system's own) and the run's ``cmd.txt``, on rank 0."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    @rank_zero_only
    def prepare_trial_dir() -> None:
        os.makedirs(os.path.join(cfg.trial_dir, "tb_logs"), exist_ok=True)
        with open(os.path.join(cfg.trial_dir, "cmd.txt"), "w") as fh:
            fh.write(f"python {' '.join(sys.argv)}\n{args}\n")

    prepare_trial_dir()
    return [
        TensorBoardLogger(cfg.trial_dir, name="tb_logs"),
        CSVLogger(cfg.trial_dir, name="csv_logs"),
        *system.get_loggers(),
    ]


def _one_line(exc: BaseException) -> str:
    if hasattr(exc, "ddpo3d_component") or hasattr(exc, "ddpo3d_checkpoint"):
        from ddpo3d.training_guard import format_training_error

        return format_training_error(exc)
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, ExtensionImportError):
        return text
    return text.strip().replace("\n", " ")


def main(argv: "list | None" = None, custom_dirs: "list | None" = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; returns the exit status.

    Args:
        argv: command-line arguments.
        custom_dirs: extension roots (default: ``custom/`` in the working directory and
            next to this file).
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unknown_flags = [e for e in extras if e.startswith("--")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    _setup_logging(args.verbose)
    n_gpus = _select_gpus(args.gpu)
    if args.typecheck:
        from jaxtyping import install_import_hook

        install_import_hook("ddpo3d", "typeguard.typechecked")
    custom_dirs = default_custom_dirs() if custom_dirs is None else custom_dirs
    try:
        for path in args.config:  # before importing extensions: fail fast
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Config file not found: {path}")
        from ddpo3d import host

        if host.HOST == "threestudio":
            if args.typecheck:
                from jaxtyping import install_import_hook

                install_import_hook("threestudio", "typeguard.typechecked")
            return run_threestudio(args, extras, custom_dirs, n_gpus)
        return run_lite(args, extras, custom_dirs, n_gpus)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line unless --verbose
        from ddpo3d.utils.finite import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            path = getattr(exc, "ddpo3d_checkpoint", None)
            print(f"{exc}" + (f"; continue with resume={path}" if path else ""), file=sys.stderr)
            return 130
        if args.verbose:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
