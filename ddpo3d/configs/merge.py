"""Merge config files into one, for launchers that take a single ``--config`` (threestudio's).

threestudio's ``launch.py`` reads one YAML file; the reward blocks in
``custom/threestudio-ddpo3d/configs/rewards/`` are meant to be merged over a stock config. This
writes that merge to a file::

    python -m ddpo3d.configs.merge configs/dreamfusion-sd.yaml \\
        custom/threestudio-ddpo3d/configs/rewards/ddpo3d-sd.yaml \\
        custom/threestudio-ddpo3d/configs/rewards/aesthetic.yaml \\
        -o configs/dreamfusion-sd-ddpo-aesthetic.yaml [key=value ...]

The files are merged in order with ``OmegaConf.merge`` (later files win; mappings merge key by key,
lists are replaced), then the ``key=value`` overrides, exactly as this project's ``launch.py``
merges repeated ``--config`` options. Interpolations (``${trainer.max_steps}``, ``${rmspace:...}``)
are kept for the launcher to resolve; the result is checked to resolve here first, so a broken
merge fails now with the key, not later on the GPU. Comments of the inputs are not carried over;
the output starts with a header naming its sources.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class MergeError(ValueError):
    """A file is missing or unreadable, an override is malformed, or the merge does not resolve."""


def merge_files(paths: Sequence[str], overrides: Sequence[str] = ()) -> DictConfig:
    """The merge of ``paths`` in order, then the dotted ``key=value`` overrides (unresolved).

    Args:
        paths: YAML files, base first.
        overrides: ``key=value`` strings (OmegaConf dotlist syntax).

    Returns:
        The merged config with its interpolations kept.

    Raises:
        MergeError: a file does not exist or is not a YAML mapping, or an override has no ``=``.
    """
    if not paths:
        raise MergeError("give at least one config file")
    confs = []
    for path in paths:
        if not os.path.isfile(path):
            raise MergeError(f"config file not found: {path}")
        try:
            conf = OmegaConf.load(path)
        except Exception as exc:
            raise MergeError(f"cannot parse {path}: {str(exc).strip().splitlines()[0]}") from None
        if not isinstance(conf, DictConfig):
            raise MergeError(f"{path} must hold a mapping at the top level")
        confs.append(conf)
    for item in overrides:
        if "=" not in item:
            raise MergeError(f"override {item!r} is not key=value")
    return OmegaConf.merge(*confs, OmegaConf.from_dotlist(list(overrides)))


def _fill_missing(node: Any) -> None:
    """Replace every ``???`` value below ``node`` by a placeholder string (in place)."""
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        if OmegaConf.is_missing(node, key):
            node[key] = "<set on the command line>"
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_interpolation():
            _fill_missing(child)


def check_resolves(cfg: DictConfig) -> None:
    """Resolve a copy of ``cfg`` with threestudio's resolvers (this project's copies of them);
    ``???`` values count as set.

    Raises:
        MergeError: an interpolation does not resolve; the message names it.
    """
    from ddpo3d.lite.experiment import register_resolvers

    register_resolvers()
    probe = cfg.copy()
    _fill_missing(probe)  # ``???`` values are set on the launcher's command line
    try:
        OmegaConf.resolve(probe)
    except OmegaConfBaseException as exc:
        raise MergeError(f"the merged config does not resolve: {str(exc).strip().splitlines()[0]}") from None


def write_merged(paths: Sequence[str], out: str, overrides: Sequence[str] = (), force: bool = False) -> str:
    """Merge ``paths`` (+ ``overrides``) and write the YAML to ``out``.

    Args:
        paths: YAML files, base first.
        out: output file; an existing file is kept unless ``force``.
        overrides: ``key=value`` strings merged last.
        force: overwrite ``out``.

    Returns:
        The path written.

    Raises:
        MergeError: see :func:`merge_files` and :func:`check_resolves`; also when ``out`` exists
            without ``force`` or is one of the inputs.
    """
    if os.path.abspath(out) in {os.path.abspath(p) for p in paths}:
        raise MergeError(f"the output {out} is one of the inputs")
    if os.path.exists(out) and not force:
        raise MergeError(f"{out} exists; pass --force to overwrite it")
    cfg = merge_files(paths, overrides)
    check_resolves(cfg)
    header = ["# Written by `python -m ddpo3d.configs.merge`: the merge, in this order, of"]
    header += [f"#   {p}" for p in paths]
    if overrides:
        header.append("# with the overrides " + " ".join(overrides))
    header.append("# Edit the sources and merge again rather than editing this file.")
    text = "\n".join(header) + "\n" + OmegaConf.to_yaml(cfg)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, out)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddpo3d.configs.merge",
        description="Merge config files (base first) into one file for threestudio's launch.py --config.",
    )
    parser.add_argument("configs", nargs="+", help="YAML files, base first, and optional key=value overrides last")
    parser.add_argument("-o", "--out", required=True, help="merged YAML file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    paths = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    try:
        out = write_merged(paths, args.out, overrides, force=args.force)
    except MergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
