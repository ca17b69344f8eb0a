"""``ddpo3d.lite`` is exactly as strict as threestudio 0.2.3: same Config fields, types, defaults.

The facts come from threestudio's source at a named commit, extracted without importing it by
``tools/extract_threestudio_config_facts.py`` into ``tests/data/threestudio-0.2.3-config-facts.json``
(regenerate with that script when the targeted threestudio changes). Every class the built-in
runtime registers under a name threestudio also registers is compared field by field: a field
threestudio has and lite lacks makes lite reject valid configs, a field lite has and threestudio
lacks makes lite accept configs threestudio rejects, and a wider type (``Any`` where threestudio
says ``float``) hides the same kind of error (a schedule list where threestudio wants a number).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

import pytest

from ddpo3d import lite
from ddpo3d.utils.config import ConfigError, parse_structured

FACTS_PATH = Path(__file__).parent / "data" / "threestudio-0.2.3-config-facts.json"
FACTS = json.loads(FACTS_PATH.read_text())
CLASSES = FACTS["classes"]

# names threestudio's annotations use (threestudio.utils.typing re-exports typing's)
_TYPE_NS = {name: getattr(typing, name) for name in ("Any", "Dict", "List", "Optional", "Tuple", "Union", "Callable")}
_TYPE_NS.update({"dict": dict, "list": list, "tuple": tuple, "str": str, "int": int, "float": float, "bool": bool})


def _lite_config(name: str):
    cls = lite.find(name)
    config = getattr(cls, "Config", None)
    if config is None:  # the datamodule parses a module-level dataclass (its ``cfg`` annotation), as threestudio's
        annotation = cls.__annotations__["cfg"]
        config = vars(sys.modules[cls.__module__])[annotation] if isinstance(annotation, str) else annotation
    return cls, config


def _norm(value):
    if isinstance(value, (tuple, list)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in value.items()}
    return value


def _same(a, b) -> bool:
    """Equal values, with int/float and bool kept apart (``1`` is not ``True``; ``1`` equals ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_facts_file_names_its_source():
    assert FACTS["threestudio_version"] == "0.2.3"
    assert len(FACTS["threestudio_commit"] or "") == 40
    assert len(CLASSES) >= 15


def test_every_lite_class_threestudio_also_has_is_in_the_facts():
    lite._import_builtin_modules()
    # the runtime's own classes (not the extension's, nor test doubles other tests register)
    # mvdream-*: mirrors of threestudio-mvdream (not threestudio), whose keys tests/test_mvdream.py
    # compares with that extension's source
    ours = {
        n
        for n, cls in lite.__modules__.items()
        if cls.__module__.startswith("ddpo3d.lite.") and not n.startswith("mvdream-")
    }
    missing = sorted(ours - set(CLASSES))
    assert not missing, f"lite registers {missing} but the facts file has no entry: regenerate it"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_lite_config_matches_threestudio(name):
    facts = CLASSES[name]
    _, config = _lite_config(name)
    ours = {f.name: f for f in dataclasses.fields(config)}
    theirs = facts["fields"]
    problems = []
    for key in sorted(set(theirs) - set(ours)):
        problems.append(f"missing field {key} ({theirs[key]['type']})")
    for key in sorted(set(ours) - set(theirs)):
        problems.append(f"extra field {key} (threestudio rejects it)")
    hints = typing.get_type_hints(config)
    for key in sorted(set(ours) & set(theirs)):
        expected_type = eval(theirs[key]["type"], dict(_TYPE_NS))  # noqa: S307 - a typing expression from the facts
        if hints[key] != expected_type:
            problems.append(f"{key}: type {hints[key]} != threestudio's {theirs[key]['type']}")
        f = ours[key]
        if "required" in theirs[key]:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                problems.append(f"{key}: has a default, threestudio requires it")
            continue
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            problems.append(f"{key}: required here, threestudio has a default")
            continue
        expected = theirs[key].get("default", theirs[key].get("factory"))
        if not _same(_norm(value), expected):
            problems.append(f"{key}: default {value!r} != threestudio's {expected!r}")
    assert not problems, f"{name} ({facts['class']}) drifts from threestudio 0.2.3:\n  " + "\n  ".join(problems)


LOSS_KEY_SYSTEMS = sorted(n for n, f in CLASSES.items() if f.get("loss_keys_read"))


def test_the_facts_name_the_loss_keys_dreamfusion_reads_every_step():
    assert CLASSES["dreamfusion-system"]["loss_keys_read"] == ["lambda_orient", "lambda_sparsity", "lambda_opaque"]


@pytest.mark.parametrize("name", LOSS_KEY_SYSTEMS)
def test_lite_system_requires_the_loss_keys_threestudio_reads(name):
    """threestudio reads these ``system.loss`` keys on every training step; lite must too.

    The doubles' config holds all of them; without any one, training stops before the first step
    with an error naming it. With all present (0 disables a term) it starts."""
    import lite_doubles

    cls = lite.find(name)
    for key in CLASSES[name]["loss_keys_read"]:
        cfg = lite_doubles.system_config()
        assert key in cfg["loss"]
        del cfg["loss"][key]
        system = cls(cfg)
        with pytest.raises(ConfigError, match=f"system.loss.{key}"):
            system.on_fit_start()
    system = cls(lite_doubles.system_config())
    system.on_fit_start()
    assert system.guidance is not None


@pytest.mark.parametrize(
    "ours,base",
    [
        ("ddpo3d-stable-diffusion-guidance", "stable-diffusion-guidance"),
        ("ddpo3d-deep-floyd-guidance", "deep-floyd-guidance"),
    ],
)
def test_our_guidances_widen_the_step_percents_in_their_own_config(ours, base):
    """threestudio types min/max_step_percent as float; our subclasses accept schedules on both hosts."""
    from launch import default_custom_dirs, load_custom_modules

    if ours not in lite.__modules__:
        load_custom_modules(default_custom_dirs())
    schedule = [0, 0.98, 0.02, 500]
    cfg = parse_structured(lite.find(ours).Config, {"min_step_percent": schedule, "max_step_percent": schedule})
    assert list(cfg.max_step_percent) == schedule
    with pytest.raises(Exception, match="max_step_percent"):
        parse_structured(lite.find(base).Config, {"max_step_percent": schedule})
