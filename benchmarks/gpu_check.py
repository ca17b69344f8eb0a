"""One script for a CUDA machine (< 8 minutes): the checks that need a GPU.

1. gsplat vs the pure-torch rasteriser: forward and gradient parity
   (``tests/test_gaussians_core.py::test_torch_rasteriser_matches_gsplat_on_cuda``).
2. ``benchmarks/objectives.py --arch sd21 --half --device cuda``: SDS vs the shipped
   dreamfusion-ddpo objective block on the SD 2.1-base architecture in fp16 (wall time, peak
   memory); its last line ``sd21 ddpo3d/sds step-time ratio: X``.
3. ``benchmarks/toy_pareto.py --quick`` on CUDA (``CUDA_VISIBLE_DEVICES`` as given; the toy runs
   pick the device through launch.py's ``--gpu``-free default).

Each part runs as a subprocess with its own time limit; the script prints each part's output
tail and a summary table, and exits non-zero if a part failed. Nothing is downloaded.

Usage::

    python benchmarks/gpu_check.py                  # all three
    python benchmarks/gpu_check.py --skip pareto    # parts can be skipped by name
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PARTS = {
    "parity": (
        [PY, "-m", "pytest", "-q", "-x", "tests/test_gaussians_core.py", "-k", "gsplat"],
        120,
    ),
    "sd21": (
        [PY, "benchmarks/objectives.py", "--arch", "sd21", "--half", "--device", "cuda", "--rounds", "5"],
        180,
    ),
    "pareto": (
        [PY, "benchmarks/toy_pareto.py", "--quick", "--workers", "4", "--out", "outputs/toy-pareto-cuda"],
        240,
    ),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip", nargs="*", default=[], choices=sorted(PARTS))
    args = ap.parse_args(argv)
    try:
        import torch

        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if cuda else "none"
    except Exception as exc:  # noqa: BLE001
        cuda, device = False, f"torch failed: {exc}"
    print(f"# gpu_check: CUDA device {device}\n")
    if not cuda:
        print("gpu_check: no CUDA device; nothing to check here (run it on a machine with a GPU)")
        return 2
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    rows, failed = [], False
    t_all = time.time()
    for name, (cmd, limit) in PARTS.items():
        if name in args.skip:
            rows.append((name, "skipped", 0.0, ""))
            continue
        t0 = time.time()
        try:
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            rc, out = res.returncode, res.stdout + res.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = 124, f"timed out after {limit} s\n{(exc.stdout or b'')[-2000:]!r}"
        wall = time.time() - t0
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        print(f"## {name} (exit {rc}, {wall:.0f} s)\n")
        print("\n".join(lines[-40:]))
        print()
        rows.append((name, "ok" if rc == 0 else f"FAILED ({rc})", wall, last))
        failed |= rc != 0
    print("| part | status | wall (s) | last line |")
    print("|---|---|---:|---|")
    for name, status, wall, last in rows:
        print(f"| {name} | {status} | {wall:.0f} | {last} |")
    print(f"\ngpu_check total wall time: {time.time() - t_all:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
