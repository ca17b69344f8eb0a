"""``SUITE.yaml``: the grid of (config, prompt, seed) jobs and the evaluation protocol.

A suite file::

    name: toy                       # optional, shown in tables
    configs:                        # paths relative to this file, or blocks with overrides
      - ../toy/sds.yaml
      - path: ../toy/ddpo-brightness.yaml
        label: ddpo                 # optional; default: the file's stem
        overrides: ["system.loss.lambda_ddpo=1000."]
    prompts: ["a red sphere", "a blue cube"]   # or prompts_file: prompts.txt (one a line) / .json (a list)
    seeds: [0, 1]
    overrides: ["trainer.max_steps=100"]       # applied to every job (threestudio's dotted syntax)
    eval:                           # the evaluation protocol (ddpo3d.suite.protocol)
      views: 120
      resolution: 512
      normals: true
      metrics: [clip, aesthetic]

Every key is checked: an unknown or mistyped key is an error naming it and the place.
Each job is keyed by a hash of its resolved config (after all overrides, the prompt and the
seed), so editing a config or an override makes new jobs and never reuses stale results.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field

from ddpo3d.utils.config import ConfigError
from ddpo3d.utils.typing import Any, Dict, List, Optional

PROMPT_KEY = "system.prompt_processor.prompt"

#: top-level keys of a resolved experiment config that locate the run, not define it
LOCATION_KEYS = ("exp_root_dir", "exp_dir", "trial_name", "trial_dir", "timestamp", "use_timestamp", "resume", "tag")
#: and keys that only pick the device count
DEVICE_KEYS = ("n_gpus",)

_SUITE_KEYS = ("name", "description", "configs", "prompts", "prompts_file", "seeds", "overrides", "eval")
_CONFIG_KEYS = ("path", "label", "overrides")
_EVAL_KEYS = ("views", "resolution", "normals", "metrics", "overrides", "batch_size")


def _unknown(key: str, where: str, known: tuple) -> ConfigError:
    hint = difflib.get_close_matches(str(key), known, n=1)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"{where}: unknown key {key!r}.{extra} Known keys: {', '.join(known)}")


def _check_overrides(value: Any, where: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of 'key=value' strings, got {value!r}")
    from ddpo3d.lite.experiment import parse_overrides

    for item in value:
        try:
            parse_overrides([item])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return list(value)


def quote_value(text: str) -> str:
    """A string as an override value that OmegaConf's ``from_cli`` reads back unchanged.

    A JSON string is a YAML double-quoted scalar, so commas, colons, quotes and brackets in a
    prompt stay text.
    """
    return json.dumps(text, ensure_ascii=False)


def slugify(text: str, max_len: int = 40) -> str:
    """File-name-safe, lower-case short form of ``text``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return (slug[:max_len].rstrip("_") or "x") if slug else "x"


@dataclass
class MetricSpec:
    """One metric of the protocol: a reward block (``ddpo3d.rewards``) under a short name."""

    name: str  # column name
    block: Dict[str, Any]  # the reward block built with ddpo3d.rewards.build_reward


@dataclass
class EvalProtocol:
    """How every finished job is scored (once; the result is stored beside the job).

    ``views`` evenly spaced test views (``data.n_test_views``) at ``resolution`` pixels
    (``data.eval_width``/``eval_height``; ``None`` keeps the config's), rendered from the final
    checkpoint; each metric scores every view against the job's prompt. ``normals`` also saves
    the normal map of every view (GPTEval3D's judge compares RGB and normals).
    """

    views: int = 120  # GPTEval3D renders 120 views around the object
    resolution: Optional[int] = None  # square render size in pixels (None: the config's eval size)
    normals: bool = True  # save per-view normal maps when the system renders normals
    metrics: List[MetricSpec] = field(default_factory=list)
    overrides: List[str] = field(default_factory=list)  # extra launch.py overrides of the render
    batch_size: int = 8  # views per reward call

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """Short hash of the protocol (metrics are recomputed when it changes)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def parse_metrics(value: Any, where: str) -> List[MetricSpec]:
    """``[clip, aesthetic, {name: clip-b32, type: clip-score, clip_model: ViT-B-32}]`` -> specs."""
    from ddpo3d.eval.score import METRIC_BLOCKS

    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list of metric names or reward blocks, got {value!r}")
    out: List[MetricSpec] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            if item not in METRIC_BLOCKS:
                raise ConfigError(
                    f"{where}[{i}]: unknown metric {item!r}; known short names: {', '.join(METRIC_BLOCKS)} "
                    "(or give a reward block {name: ..., type: ..., <options>})"
                )
            out.append(MetricSpec(item, dict(METRIC_BLOCKS[item])))
        elif isinstance(item, dict):
            block = dict(item)
            if "type" not in block:
                raise ConfigError(f"{where}[{i}]: a metric block needs a 'type' (a reward type of ddpo3d.rewards)")
            name = str(block.pop("name", block["type"]))
            out.append(MetricSpec(name, block))
        else:
            raise ConfigError(f"{where}[{i}]: expected a metric name or a reward block, got {item!r}")
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: metric name(s) {', '.join(dup)} repeat; give each block a distinct 'name'")
    return out


def parse_protocol(value: Any, where: str = "eval") -> EvalProtocol:
    """Strictly parse the ``eval`` block of a suite."""
    if value is None:
        return EvalProtocol()
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    for key in value:
        if key not in _EVAL_KEYS:
            raise _unknown(key, where, _EVAL_KEYS)
    proto = EvalProtocol()
    if "views" in value:
        if not isinstance(value["views"], int) or isinstance(value["views"], bool) or value["views"] < 1:
            raise ConfigError(f"{where}.views must be a positive integer, got {value['views']!r}")
        proto.views = value["views"]
    if value.get("resolution") is not None:
        res = value["resolution"]
        if not isinstance(res, int) or isinstance(res, bool) or res < 8:
            raise ConfigError(f"{where}.resolution must be an integer >= 8 (pixels) or null, got {res!r}")
        proto.resolution = res
    if "normals" in value:
        if not isinstance(value["normals"], bool):
            raise ConfigError(f"{where}.normals must be true or false, got {value['normals']!r}")
        proto.normals = value["normals"]
    if "batch_size" in value:
        if not isinstance(value["batch_size"], int) or value["batch_size"] < 1:
            raise ConfigError(f"{where}.batch_size must be a positive integer, got {value['batch_size']!r}")
        proto.batch_size = value["batch_size"]
    proto.metrics = parse_metrics(value.get("metrics"), f"{where}.metrics")
    proto.overrides = _check_overrides(value.get("overrides"), f"{where}.overrides")
    return proto


@dataclass
class ConfigEntry:
    """One method of the comparison: a config file and its own overrides."""

    path: str  # absolute path of the YAML
    label: str  # column/row name in tables and folder names
    overrides: List[str] = field(default_factory=list)


@dataclass
class Job:
    """One (config, prompt, seed) training run of a suite."""

    config: ConfigEntry
    prompt: str
    seed: int
    overrides: List[str]  # suite overrides + config overrides + prompt + seed, in merge order
    key: str  # hash of the resolved config
    job_id: str  # folder name under <out>/jobs

    def to_dict(self) -> Dict[str, Any]:
        return {
            "job_id": self.job_id,
            "key": self.key,
            "config": self.config.path,
            "label": self.config.label,
            "prompt": self.prompt,
            "seed": self.seed,
            "overrides": list(self.overrides),
        }


@dataclass
class Suite:
    """A parsed suite: its jobs in order (prompt-major, then seed, then config) and protocol."""

    path: str
    name: str
    configs: List[ConfigEntry]
    prompts: List[str]
    seeds: List[int]
    overrides: List[str]
    protocol: EvalProtocol
    description: str = ""

    def jobs(self) -> List[Job]:
        """Every job of the grid; each config is resolved once per job to compute its key."""
        out = []
        for prompt in self.prompts:
            for seed in self.seeds:
                for cfg in self.configs:
                    overrides = (
                        list(self.overrides)
                        + list(cfg.overrides)
                        + [f"{PROMPT_KEY}={quote_value(prompt)}", f"seed={int(seed)}"]
                    )
                    key = job_key(cfg.path, overrides)
                    job_id = f"{cfg.label}__{slugify(prompt)}__s{seed}__{key[:10]}"
                    out.append(Job(cfg, prompt, int(seed), overrides, key, job_id))
        return out


def resolve_config(path: str, overrides: List[str]) -> Dict[str, Any]:
    """The resolved experiment config of ``path`` under ``overrides`` (no folder is made).

    Raises:
        ConfigError / FileNotFoundError: naming the config file and the problem.
    """
    from omegaconf import OmegaConf

    from ddpo3d.lite.experiment import load_config

    try:
        cfg = load_config(path, cli_args=overrides, makedirs=False)
    except (ConfigError, FileNotFoundError) as exc:
        raise type(exc)(f"config {path}: {exc}") from None
    return OmegaConf.to_container(cfg, resolve=True)


def job_key(path: str, overrides: List[str]) -> str:
    """sha256 of the resolved config (location and device keys dropped), as hex."""
    resolved = resolve_config(path, overrides)
    for key in LOCATION_KEYS + DEVICE_KEYS:
        resolved.pop(key, None)
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_prompts_file(path: str) -> List[str]:
    """Prompts from a ``.json`` list or a text file (one a line; blank lines and ``#`` comments skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts_file not found: {path}")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ConfigError(f"prompts_file {path}: expected a JSON list of strings")
        return [p.strip() for p in data if p.strip()]
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _parse_configs(value: Any, base: str) -> List[ConfigEntry]:
    if not isinstance(value, list) or not value:
        raise ConfigError("configs must be a non-empty list of config paths or {path, overrides, label} blocks")
    entries = []
    for i, item in enumerate(value):
        where = f"configs[{i}]"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a path or a {{path, overrides, label}} block, got {item!r}")
        for key in item:
            if key not in _CONFIG_KEYS:
                raise _unknown(key, where, _CONFIG_KEYS)
        if not isinstance(item.get("path"), str):
            raise ConfigError(f"{where}: 'path' (the config YAML) is required")
        path = item["path"] if os.path.isabs(item["path"]) else os.path.normpath(os.path.join(base, item["path"]))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: config file not found: {path} (relative paths are read from {base})")
        label = item.get("label") or os.path.splitext(os.path.basename(path))[0]
        if not isinstance(label, str) or not re.match(r"^[A-Za-z0-9][\w.\-]*$", label):
            raise ConfigError(f"{where}.label must be a simple name (letters, digits, _ . -), got {label!r}")
        entries.append(ConfigEntry(path, label, _check_overrides(item.get("overrides"), f"{where}.overrides")))
    labels = [e.label for e in entries]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ConfigError(
                f"configs[{i}]: label {label!r} repeats configs[{labels.index(label)}]'s; give each a distinct 'label'"
            )
    return entries


def parse_suite(data: Any, base: str, path: str = "<suite>") -> Suite:
    """Strictly parse a suite mapping; relative paths are read from ``base``.

    Raises:
        ConfigError: naming the bad key or value.
        FileNotFoundError: a config or prompts file is missing.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite file must hold a mapping, got {type(data).__name__}")
    for key in data:
        if key not in _SUITE_KEYS:
            raise _unknown(key, path, _SUITE_KEYS)
    for key in ("configs", "seeds"):
        if key not in data:
            raise ConfigError(f"{path}: '{key}' is required")
    configs = _parse_configs(data["configs"], base)
    if ("prompts" in data) == ("prompts_file" in data):
        raise ConfigError(f"{path}: give exactly one of 'prompts' (a list) and 'prompts_file'")
    if "prompts" in data:
        prompts = data["prompts"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ConfigError(f"{path}: 'prompts' must be a non-empty list of non-empty strings")
        prompts = [p.strip() for p in prompts]
    else:
        pf = data["prompts_file"]
        if not isinstance(pf, str):
            raise ConfigError(f"{path}: 'prompts_file' must be a path, got {pf!r}")
        prompts = read_prompts_file(pf if os.path.isabs(pf) else os.path.join(base, pf))
        if not prompts:
            raise ConfigError(f"{path}: prompts_file {pf} holds no prompts")
    dup = sorted({p for p in prompts if prompts.count(p) > 1})
    if dup:
        raise ConfigError(f"{path}: prompts repeat: {dup[:3]}")
    seeds = data["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
    name = data.get("name") or os.path.splitext(os.path.basename(path))[0]
    return Suite(
        path=path,
        name=str(name),
        configs=configs,
        prompts=prompts,
        seeds=list(seeds),
        overrides=_check_overrides(data.get("overrides"), "overrides"),
        protocol=parse_protocol(data.get("eval")),
        description=str(data.get("description") or ""),
    )


def load_suite(path: str, extra_overrides: Optional[List[str]] = None) -> Suite:
    """Read and parse a ``SUITE.yaml``; ``extra_overrides`` (from the command line) apply to every job."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"suite file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse suite file {path}: {str(exc).splitlines()[0]}") from None
    suite = parse_suite(data, os.path.dirname(os.path.abspath(path)), path)
    if extra_overrides:
        suite.overrides += _check_overrides(list(extra_overrides), "--override")
    return suite


__all__ = [
    "ConfigEntry",
    "EvalProtocol",
    "Job",
    "MetricSpec",
    "Suite",
    "job_key",
    "load_suite",
    "parse_protocol",
    "parse_suite",
    "quote_value",
    "read_prompts_file",
    "resolve_config",
    "slugify",
]
