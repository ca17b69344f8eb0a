"""Install distributions into a venv by hard-linking them from another venv of the same Python.

CI's second environment needs the same torch / torchvision build as the first (about 6 GB with
their CUDA libraries). Reinstalling them from the wheels costs minutes and another 6 GB; the files
pip already unpacked into the first venv are identical, so this links them (and their RECORD,
so pip sees them as installed) into the second one. Console scripts (``bin/``) are not linked.

    python .ci/link_dists.py SRC_VENV DST_VENV torch torchvision

The named distributions and everything they require (markers evaluated for this interpreter,
extras followed) are linked, except those the destination venv already has (its own pip and
setuptools); files fall back to a copy across file systems.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path


def _site_packages(venv: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_paths()["data"])
    path = venv / rel
    if not path.is_dir():
        raise SystemExit(f"link_dists: {path} does not exist (is {venv} a venv of this Python?)")
    return path


def _closure(src: Path, names: list) -> dict:
    """{normalised name: Distribution} for ``names`` and their requirements (with the extras the
    requirements ask for, e.g. ``cuda-toolkit[cufile]``), found in ``src``."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dists = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(src)])}
    todo = [(canonicalize_name(n), "") for n in names]
    found, seen = {}, set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        if name not in dists:
            raise SystemExit(f"link_dists: {name} is not installed in {src}")
        found[name] = dists[name]
        for line in dists[name].requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ["", *sorted(req.extras)]]
    return found


def main(argv: list) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    src, dst = _site_packages(Path(argv[0])), _site_packages(Path(argv[1]))
    from packaging.utils import canonicalize_name

    present = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions(path=[str(dst)])}
    # what the new venv already has (pip, setuptools) stays its own: two versions' files must not mix
    dists = {name: dist for name, dist in _closure(src, argv[2:]).items() if name not in present}
    n_files = 0
    for dist in dists.values():
        for rel in dist.files or []:
            source = (src / rel).resolve()
            if src.resolve() not in source.parents or not source.is_file():
                continue  # console scripts and other files outside site-packages
            target = dst / source.relative_to(src.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            n_files += 1
    versions = ", ".join(f"{d.metadata['Name']}=={d.version}" for d in dists.values())
    print(f"link_dists: {len(dists)} distributions ({n_files} files) into {dst}: {versions}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
