"""Experiment configuration: threestudio's ``ExperimentConfig``, ``load_config`` and OmegaConf
resolvers, with strict top-level keys and clear errors for bad overrides and missing values.

A config is one YAML file merged with dotted command-line overrides (``key.sub=value``,
OmegaConf's ``from_cli`` syntax) and resolved (``${rmspace:...}`` and friends).
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from datetime import datetime

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpo3d.lite import info
from ddpo3d.utils.config import ConfigError, parse_structured
from ddpo3d.utils.prompts import short_trial_name
from ddpo3d.utils.schedule import C_max
from ddpo3d.utils.typing import Any, List, Optional, Sequence


def _calc_exp_lr_decay_rate(factor: float, n: float) -> float:
    # per-step decay γ with γ^n = factor
    return factor ** (1.0 / n)


#: threestudio 0.2.3's resolvers (``threestudio/utils/config.py``), same names and meaning
RESOLVERS = {
    "calc_exp_lr_decay_rate": _calc_exp_lr_decay_rate,
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "idiv": lambda a, b: a // b,
    "basename": lambda p: os.path.basename(p),
    "rmspace": lambda s, sub: str(s).replace(" ", sub),
    "tuple2": lambda s: [float(s), float(s)],
    "gt0": lambda s: s > 0,
    "cmaxgt0": lambda s: C_max(s) > 0,
    "not": lambda s: not s,
    "cmaxgt0orcmaxgt0": lambda a, b: C_max(a) > 0 or C_max(b) > 0,
}


def register_resolvers() -> None:
    """Register the resolvers once; names already registered (e.g. by threestudio's own
    ``utils.config`` when it is imported first) are left alone."""
    for name, fn in RESOLVERS.items():
        if OmegaConf.has_resolver(name):
            continue
        # omegaconf >= 2.4: register_resolver(annotation_validation=...), register_new_resolver deprecated;
        # omegaconf 2.3 (threestudio's pin) has only the legacy register_resolver (string arguments)
        if "annotation_validation" in inspect.signature(getattr(OmegaConf, "register_resolver", len)).parameters:
            OmegaConf.register_resolver(name, fn, annotation_validation="off")
        else:
            OmegaConf.register_new_resolver(name, fn)


@dataclass
class ExperimentConfig:
    """Top-level keys of a config file (threestudio's ``ExperimentConfig``).

    ``exp_dir``, ``trial_name``, ``trial_dir`` and ``n_gpus`` are derived, not set by hand:
    outputs go to ``<exp_root_dir>/<name>/<tag>[@<timestamp>]``.
    """

    name: str = "default"  # experiment name (folder under exp_root_dir)
    description: str = ""
    tag: str = ""  # trial name, usually derived from the prompt
    seed: int = 0  # global seed (pl.seed_everything)
    use_timestamp: bool = True  # append @YYYYmmdd-HHMMSS to the trial name
    timestamp: Optional[str] = None  # set when resuming from a parsed config
    exp_root_dir: str = "outputs"
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1
    resume: Optional[str] = None  # checkpoint to resume from (training) or to evaluate
    data_type: str = ""  # registry name of the data module
    data: dict = field(default_factory=dict)
    system_type: str = ""  # registry name of the system
    system: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)  # pytorch_lightning.Trainer arguments
    checkpoint: dict = field(default_factory=dict)  # ModelCheckpoint arguments


_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*$")


def parse_overrides(cli_args: Sequence[str]) -> DictConfig:
    """Parse ``key.sub=value`` overrides.

    Raises:
        ConfigError: naming the malformed override (no ``=``, bad key, unparsable value).
    """
    merged = OmegaConf.create({})
    for arg in cli_args:
        if "=" not in arg:
            raise ConfigError(
                f'Bad override {arg!r}: expected key=value (e.g. system.prompt_processor.prompt="a hamburger")'
            )
        key = arg.split("=", 1)[0]
        if not _KEY.match(key):
            raise ConfigError(f"Bad override {arg!r}: {key!r} is not a dotted key like system.loss.lambda_sds")
        try:
            one = OmegaConf.from_cli([arg])
        except OmegaConfBaseException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"Bad override {arg!r}: cannot parse the value ({first})") from None
        except Exception as exc:  # yaml parser errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"Bad override {arg!r}: cannot parse the value ({first})") from None
        merged = OmegaConf.merge(merged, one)
    return merged


def _missing_values(cfg: DictConfig) -> List[str]:
    missing = []
    for key in sorted(OmegaConf.missing_keys(cfg)):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        try:
            if OmegaConf.is_missing(node, leaf):
                missing.append(key)
        except Exception:
            missing.append(key)
    return missing


def load_config(
    *yamls: str, cli_args: Sequence[str] = (), from_string: bool = False, makedirs: bool = True, **kwargs: Any
) -> Any:
    """Load, merge, resolve and strictly parse an experiment config.

    Args:
        *yamls: YAML file paths (or YAML strings with ``from_string``), merged in order.
        cli_args: dotted overrides ``key=value`` merged on top.
        from_string: treat ``yamls`` as YAML text.
        makedirs: create ``trial_dir`` (the launcher passes ``False`` and creates it once the
            whole config has been validated: see :func:`prepare_trial_dir`).
        **kwargs: extra top-level values merged last (e.g. ``n_gpus``).

    Returns:
        A structured ``ExperimentConfig``.

    Raises:
        FileNotFoundError: a YAML file does not exist.
        ConfigError: bad override, value left as ``???``, unknown top-level key, failed
            interpolation.
    """
    register_resolvers()
    confs = []
    for y in yamls:
        if from_string:
            confs.append(OmegaConf.create(y))
            continue
        if not os.path.isfile(y):
            raise FileNotFoundError(f"Config file not found: {y}")
        try:
            confs.append(OmegaConf.load(y))
        except Exception as exc:  # the YAML parser's message, with its line and column, on one line
            detail = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
            raise ConfigError(f"Cannot parse config file {y}: {detail or type(exc).__name__}") from None
    cfg = OmegaConf.merge(*confs, parse_overrides(cli_args), kwargs)
    if not isinstance(cfg, DictConfig):
        raise ConfigError("The config file must contain a mapping at the top level")
    missing = _missing_values(cfg)
    if missing:
        raise ConfigError(
            "Required config values are missing (??? in the config): "
            + ", ".join(missing)
            + f". Set them on the command line, e.g. {missing[0]}=..."
        )
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Cannot resolve the config: {str(exc).strip().splitlines()[0]}") from None
    scfg = parse_structured(ExperimentConfig, cfg, where="the experiment config (top level)")
    _derive_paths(scfg, makedirs=makedirs)
    return scfg


def _derive_paths(cfg: Any, makedirs: bool) -> None:
    """threestudio's ``ExperimentConfig.__post_init__``: trial name and folders."""
    if not cfg.tag and not cfg.use_timestamp:
        raise ConfigError("Either tag is specified or use_timestamp is True")
    tag, shortened = short_trial_name(str(cfg.tag))
    if shortened:
        info(
            f"tag is {len(str(cfg.tag))} characters long (a long prompt?): the trial folder is named "
            f"{tag!r} (cut, with a hash of the full tag); set tag=<name> to choose it"
        )
    cfg.trial_name = tag
    if cfg.timestamp is None:
        cfg.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S") if cfg.use_timestamp else ""
    cfg.trial_name += cfg.timestamp
    cfg.exp_dir = os.path.join(cfg.exp_root_dir, cfg.name)
    cfg.trial_dir = os.path.join(cfg.exp_dir, cfg.trial_name)
    if makedirs:
        os.makedirs(cfg.trial_dir, exist_ok=True)


def prepare_trial_dir(cfg: Any, mode: str) -> str:
    """Create the trial folder once the config is valid; a training run never writes into
    another run's folder.

    ``--train`` into a folder that already holds files is allowed only to continue that
    run (``resume=<that folder>/ckpts/<x>.ckpt``). Otherwise, with ``use_timestamp`` the run
    goes to a new folder ``<trial>-1``, ``-2``, ... (notice); without it, it is an error that
    names the folder. Evaluation modes (``--validate`` / ``--test`` / ``--export``) add their
    outputs to the derived folder, as threestudio does.

    Returns:
        the trial folder (also set in ``cfg.trial_dir`` / ``trial_name``).

    Raises:
        ConfigError: a training run would write into another run's folder.
    """
    trial = cfg.trial_dir
    own = None
    if cfg.resume is not None:
        ckpt_dir = os.path.dirname(os.path.abspath(cfg.resume))
        if os.path.basename(ckpt_dir) == "ckpts":
            own = os.path.dirname(ckpt_dir)
    busy = os.path.isdir(trial) and bool(os.listdir(trial))
    if mode == "train" and busy and os.path.abspath(trial) != own:
        held = ", ".join(sorted(os.listdir(trial))[:4])
        if not cfg.use_timestamp:
            hint = f"continue it with resume={os.path.join(trial, 'ckpts', 'last.ckpt')}, or " if own is None else ""
            raise ConfigError(
                f"The trial folder {trial} already holds a run ({held}); nothing was written. To keep it, "
                f"{hint}choose another folder with tag=<name> or use_timestamp=true"
            )
        n = 1
        while os.path.exists(f"{trial}-{n}"):
            n += 1
        info(f"{trial} already holds a run ({held}); writing to {trial}-{n}")
        trial = f"{trial}-{n}"
        cfg.trial_dir = trial
        cfg.trial_name = os.path.basename(trial)
    os.makedirs(trial, exist_ok=True)
    return trial


def dump_config(path: str, config: Any) -> None:
    """Write a config as YAML (creating the folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fp:
        OmegaConf.save(config=config, f=fp)


__all__ = [
    "ExperimentConfig",
    "RESOLVERS",
    "dump_config",
    "load_config",
    "parse_overrides",
    "prepare_trial_dir",
    "register_resolvers",
]
