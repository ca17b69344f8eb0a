"""The import contracts of docs/ARCHITECTURE.md, read from the source (no imports executed)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["rewards", "diffusion", "objectives", "gaussians", "toy", "utils", "eval", "weights.py"]


def imported_modules(path: Path):
    """Every absolute module name ``path`` imports (top level or inside functions)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def files(*parts):
    base = ROOT.joinpath(*parts)
    return [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))


@pytest.mark.parametrize("package", CORE)
def test_core_never_imports_a_host_or_test_doubles(package):
    for path in files("ddpo3d", package):
        for mod in imported_modules(path):
            assert not mod.startswith(("threestudio", "ddpo3d.host", "ddpo3d.lite", "ddpo3d.testing")), (path, mod)


#: lite mirrors whose oracle is another project's source rather than lite itself: the MVDream
#: guidance wraps the core's MVDream adapter and x0-reconstruction SDS, and tests/test_mvdream.py
#: checks both against threestudio-mvdream's own guidance
ORACLE_ELSEWHERE = {ROOT / "ddpo3d" / "lite" / "models" / "guidance" / "mvdream_guidance.py"}


#: the trainer validates reward / objective blocks before anything is written (no training code used)
VALIDATION_ONLY = {ROOT / "ddpo3d" / "lite" / "trainer.py": ("ddpo3d.rewards.registry", "ddpo3d.objectives.combined")}


def test_lite_uses_only_utils_and_weights_from_the_core():
    """The runtime's SDS is its own: it is an oracle for the extension's objective, not a copy."""
    for path in files("ddpo3d", "lite"):
        if path in ORACLE_ELSEWHERE:
            continue
        for mod in imported_modules(path):
            if mod in VALIDATION_ONLY.get(path, ()):
                continue
            if mod.startswith("ddpo3d.") and not mod.startswith("ddpo3d.lite"):
                # ddpo3d.training_guard: the reliability callback every system uses, on both hosts
                assert mod.startswith(("ddpo3d.utils", "ddpo3d.weights", "ddpo3d.training_guard")), (path, mod)


def test_product_never_imports_test_doubles():
    product = files("ddpo3d", "lite") + files("custom") + files("launch.py") + [ROOT / "ddpo3d" / "host.py"]
    for path in product:
        for mod in imported_modules(path):
            assert not mod.startswith("ddpo3d.testing"), (path, mod)
