"""Extract the Config facts of threestudio's registered classes from its source (no import).

Dev-time tool. It parses every ``*.py`` under ``<threestudio>/threestudio`` with :mod:`ast`, finds the
classes decorated with ``@threestudio.register("<name>")`` and writes, for each registered name the
built-in runtime (``ddpo3d.lite``) also registers:

* ``fields``: the full Config of the class, inherited fields first (dataclass order), each as
  ``{"type": <annotation source>, "default": <JSON value> | "factory": <JSON value> | "required": true}``;
* ``loss_keys_read``: for systems, the ``system.loss`` keys the class reads as attributes
  (``self.cfg.loss.lambda_x``) at the top level of ``training_step`` (outside any ``if`` body), that
  is, keys threestudio needs on every step and rejects when missing.

The output is the data file ``tests/test_lite_config_parity.py`` compares ``ddpo3d.lite`` against.

Usage::

    python tools/extract_threestudio_config_facts.py /path/to/threestudio \\
        -o tests/data/threestudio-0.2.3-config-facts.json

The commit is read with ``git -C <threestudio> rev-parse HEAD`` and stored in the file.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional


@dataclass
class _ClassInfo:
    """One class definition found in the source tree."""

    name: str
    module: str
    node: ast.ClassDef
    registered: List[str] = field(default_factory=list)


def _register_names(node: ast.ClassDef) -> List[str]:
    """The names of ``@threestudio.register("x")`` / ``@register("x")`` decorators on a class."""
    names = []
    for deco in node.decorator_list:
        if not (isinstance(deco, ast.Call) and deco.args and isinstance(deco.args[0], ast.Constant)):
            continue
        func = deco.func
        attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if attr == "register":
            names.append(deco.args[0].value)
    return names


def _literal(node: ast.AST):
    """A JSON-able value for a default expression; ``{"expr": source}`` when it is not a literal."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return {"expr": ast.unparse(node)}
    return _jsonable(value)


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _field_default(node: Optional[ast.AST]) -> Dict[str, object]:
    """``{"default": v}``, ``{"factory": v}`` (the value the factory builds) or ``{"required": True}``."""
    if node is None:
        return {"required": True}
    is_field_call = (
        isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) == "field" or getattr(node.func, "attr", None) == "field")
        and not node.args
    )
    if not is_field_call:
        return {"default": _literal(node)}
    kwargs = {kw.arg: kw.value for kw in node.keywords}
    if "default" in kwargs:
        return {"default": _literal(kwargs["default"])}
    factory = kwargs.get("default_factory")
    if isinstance(factory, ast.Name) and factory.id in ("dict", "list", "tuple"):
        return {"factory": {"dict": {}, "list": [], "tuple": []}[factory.id]}
    if isinstance(factory, ast.Lambda):
        return {"factory": _literal(factory.body)}
    return {"factory": {"expr": ast.unparse(factory) if factory is not None else "?"}}


class SourceTree:
    """All classes of a threestudio checkout, by name, with their registry names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.classes: Dict[str, List[_ClassInfo]] = {}
        self.top_dataclasses: Dict[str, ast.ClassDef] = {}
        for path in sorted((root / "threestudio").rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    info = _ClassInfo(node.name, module, node, _register_names(node))
                    self.classes.setdefault(node.name, []).append(info)
                    self.top_dataclasses.setdefault(node.name, node)

    def lookup(self, name: str, near: str) -> _ClassInfo:
        """The class called ``name``; with several, the one in module ``near`` or the first."""
        found = self.classes.get(name)
        if not found:
            raise KeyError(f"class {name} not found in {self.root}")
        for info in found:
            if info.module == near:
                return info
        return found[0]

    def registered(self) -> Dict[str, _ClassInfo]:
        out = {}
        for infos in self.classes.values():
            for info in infos:
                for name in info.registered:
                    out[name] = info
        return out

    # ---- Config resolution -----------------------------------------------------------------
    def config_node(self, info: _ClassInfo) -> Optional[ast.ClassDef]:
        """The nested ``Config`` of a class, or the dataclass its ``__init__`` passes to parse_structured."""
        for node in info.node.body:
            if isinstance(node, ast.ClassDef) and node.name == "Config":
                return node
        for node in ast.walk(info.node):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "parse_structured"
                and node.args
                and isinstance(node.args[0], ast.Name)
            ):
                return self.top_dataclasses.get(node.args[0].id)
        return None

    def config_fields(self, info: _ClassInfo) -> Dict[str, Dict[str, object]]:
        """Config fields of ``info`` in dataclass order, following ``Config(Base.Config)`` bases and,
        without a nested Config, the class's own bases."""
        node = self.config_node(info)
        if node is None:
            for base in info.node.bases:
                if isinstance(base, ast.Name) and base.id in self.classes:
                    return self.config_fields(self.lookup(base.id, info.module))
            return {}
        fields: Dict[str, Dict[str, object]] = {}
        for base in node.bases:
            # Config(Base.Config) -> the fields of Base's Config
            if isinstance(base, ast.Attribute) and base.attr == "Config" and isinstance(base.value, ast.Name):
                if base.value.id in self.classes:
                    fields.update(self.config_fields(self.lookup(base.value.id, info.module)))
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                fields.pop(stmt.target.id, None)  # a redefinition keeps the base's position in dataclasses
                fields[stmt.target.id] = {"type": ast.unparse(stmt.annotation), **_field_default(stmt.value)}
        return fields

    def loss_keys_read(self, info: _ClassInfo) -> List[str]:
        """``self.cfg.loss.<key>`` attribute reads at the top level of ``training_step``.

        A read in an ``if`` *test* counts (it runs every step); reads inside an ``if`` / ``for`` body
        do not."""
        method = next((n for n in info.node.body if isinstance(n, ast.FunctionDef) and n.name == "training_step"), None)
        if method is None:
            return []
        keys: List[str] = []

        def collect(node: ast.AST) -> None:
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Attribute)
                    and sub.value.attr == "loss"
                    and ast.unparse(sub.value) == "self.cfg.loss"
                    and sub.attr not in ("items", "keys", "values", "get")
                    and sub.attr not in keys
                ):
                    keys.append(sub.attr)

        for stmt in method.body:
            if isinstance(stmt, ast.If):
                collect(stmt.test)
            elif isinstance(stmt, (ast.For, ast.While, ast.With, ast.Try)):
                continue
            else:
                collect(stmt)
        return keys


def extract(root: Path, names: Optional[List[str]] = None) -> Dict[str, object]:
    """The facts of the registered classes ``names`` (all registered classes when None)."""
    tree = SourceTree(root)
    registered = tree.registered()
    wanted = sorted(registered) if names is None else names
    classes = {}
    for name in wanted:
        if name not in registered:
            raise KeyError(f"{name!r} is not registered in {root}")
        info = registered[name]
        entry: Dict[str, object] = {
            "class": info.name,
            "module": info.module,
            "fields": tree.config_fields(info),
        }
        keys = tree.loss_keys_read(info)
        if keys:
            entry["loss_keys_read"] = keys
        classes[name] = entry
    return {"classes": classes}


def _lite_registered_names() -> List[str]:
    """Registry names of ``ddpo3d.lite`` (imports it; run from the repository root)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ddpo3d.lite as lite

    lite._import_builtin_modules()
    return sorted(lite.__modules__)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("threestudio", type=Path, help="a threestudio checkout (the folder holding threestudio/)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--names",
        nargs="*",
        default=None,
        help="registry names to extract (default: every name ddpo3d.lite registers that threestudio has too)",
    )
    args = parser.parse_args(argv)
    if not (args.threestudio / "threestudio" / "__init__.py").is_file():
        parser.error(f"{args.threestudio} has no threestudio/__init__.py")
    commit = subprocess.run(
        ["git", "-C", str(args.threestudio), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    version = None
    init = (args.threestudio / "threestudio" / "__init__.py").read_text()
    for line in init.splitlines():
        if line.startswith("__version__"):
            version = ast.literal_eval(line.split("=", 1)[1].strip())
    names = args.names
    if names is None:
        available = set(SourceTree(args.threestudio).registered())
        names = [n for n in _lite_registered_names() if n in available]
    facts = {
        "threestudio_version": version,
        "threestudio_commit": commit or None,
        "generated_by": "tools/extract_threestudio_config_facts.py",
        **extract(args.threestudio, names),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(facts, indent=1) + "\n")
    print(f"wrote {len(facts['classes'])} classes to {args.out} (threestudio {version} @ {commit or '?'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
