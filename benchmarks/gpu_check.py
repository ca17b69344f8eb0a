"""One script for a CUDA machine (under 8 minutes): the checks that need a GPU.

1. ``parity``: gsplat vs the pure-torch rasteriser, forward and gradient
   (``tests/test_gaussians_core.py::test_torch_rasteriser_matches_gsplat_on_cuda``). gsplat 1.5.3
   from PyPI compiles its CUDA extension on first use (needs nvcc; a few minutes, cached in
   ``~/.cache/torch_extensions``); a prebuilt wheel (docs.gsplat.studio/whl) skips that.
2. ``sd21``: ``benchmarks/objectives.py --arch sd21 --half --device cuda``: SDS vs the shipped
   dreamfusion-ddpo objective block on the SD 2.1-base architecture in fp16 (wall time and CUDA
   peak memory per method, the stage breakdown); its last line ``sd21 ddpo3d/sds step-time ratio: X``.
3. ``pareto``: ``benchmarks/toy_pareto.py --quick`` on CUDA (its runs pass ``--gpu 0`` when CUDA
   is available), ``--pareto-seeds`` seeds (default 1, a third of the full --quick sweep, to fit
   the budget), as many workers as the CPU allows (up to 12).

Each part runs as a subprocess with its own time limit, taken from what is left of ``--budget``
(default 470 s, so the whole check ends within 8 minutes); the script prints each part's output
tail and a summary table (status, wall time, last line), and exits non-zero if a part failed.
Nothing is downloaded.

``--dry-run`` proves the plumbing on a CPU-only machine: the same three parts on the CPU with tiny
sizes (the parity test skips itself without CUDA and is reported NOT CHECKED; ``--arch sd21
--smoke`` runs the SD 2.1 code path with tiny models; a 2-step, one-strength, one-seed Pareto
sweep), each part capped at 15 minutes instead of the budget. gsplat must be installed for the
parity part (``pip install -e ".[gsplat]"``); without it the part is NOT CHECKED and, on CUDA,
counts as a failure.

Usage::

    python benchmarks/gpu_check.py                  # all three, on CUDA
    python benchmarks/gpu_check.py --skip pareto    # parts can be skipped by name
    python benchmarks/gpu_check.py --dry-run        # CPU: the plumbing only (numbers meaningless)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
#: each part's own cap in seconds (the budget left can lower it)
LIMITS = {"parity": 150, "sd21": 150, "pareto": 400}
DRY_RUN_LIMIT = 900  # --dry-run: per part, no overall budget (CPU machines are often shared)


def parts(args) -> dict:
    """``{name: command}`` for a CUDA run or, with ``--dry-run``, the CPU plumbing check."""
    workers = max(2, min(12, (os.cpu_count() or 2) - 2))
    out = Path(args.out)
    parity = [PY, "-m", "pytest", "-q", "-x", "tests/test_gaussians_core.py", "-k", "gsplat"]
    if args.dry_run:
        return {
            "parity": parity,
            "sd21": [PY, "benchmarks/objectives.py", "--arch", "sd21", "--smoke", "--rounds", "1"],
            "pareto": [
                PY,
                "benchmarks/toy_pareto.py",
                "--quick",
                "--seeds",
                "1",
                "--strengths",
                "1",
                "--steps",
                "2",
                "--workers",
                "2",
                "--out",
                str(out / "toy-pareto-dry-run"),
            ],
        }
    return {
        "parity": parity,
        "sd21": [PY, "benchmarks/objectives.py", "--arch", "sd21", "--half", "--device", "cuda", "--rounds", "5"],
        "pareto": [
            PY,
            "benchmarks/toy_pareto.py",
            "--quick",
            "--seeds",
            str(args.pareto_seeds),
            "--workers",
            str(workers),
            "--out",
            str(out / "toy-pareto-cuda"),
        ],
    }


def run_part(cmd: list, limit: float, env: dict) -> tuple:
    """Run one part; returns ``(exit code, stdout, stderr)`` (124 on timeout, with what it had printed)."""

    def text(x) -> str:
        return (x.decode(errors="replace") if isinstance(x, bytes) else x) or ""

    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        return res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as exc:
        return 124, text(exc.stdout), f"{text(exc.stderr)}\ntimed out after {limit:.0f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip", nargs="*", default=[], choices=sorted(LIMITS))
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for all parts together")
    ap.add_argument("--pareto-seeds", type=int, default=1, help="seeds of the toy Pareto sweep (3 = the full --quick)")
    ap.add_argument("--dry-run", action="store_true", help="CPU only: the plumbing with tiny sizes")
    ap.add_argument("--out", default=None, help="where the Pareto sweep writes (default: outputs/ or a temp folder)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="gpu-check-") if args.dry_run else str(ROOT / "outputs")
    try:
        import torch

        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if cuda else "none"
    except Exception as exc:  # noqa: BLE001
        cuda, device = False, f"torch failed: {exc}"
    print(f"# gpu_check: CUDA device {device}{' (dry run on the CPU)' if args.dry_run else ''}\n")
    if not cuda and not args.dry_run:
        print("gpu_check: no CUDA device; nothing to check here (run it on a machine with a GPU, or --dry-run)")
        return 2
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU paths, even on a machine with a GPU
    rows, failed = [], False
    t_all = time.time()
    for name, cmd in parts(args).items():
        if name in args.skip:
            rows.append((name, "skipped", 0.0, ""))
            continue
        left = args.budget - (time.time() - t_all)
        limit = min(LIMITS[name], left) if not args.dry_run else DRY_RUN_LIMIT  # a shared CPU is slow
        if limit < 10:
            rows.append((name, "not run (budget spent)", 0.0, ""))
            failed = True
            continue
        t0 = time.time()
        rc, out, err = run_part(cmd, limit, env)
        wall = time.time() - t0
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        errs = [ln for ln in err.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else (errs[-1] if errs else "")
        print(f"## {name} (exit {rc}, {wall:.0f} s of {limit:.0f} s)\n\n$ {' '.join(cmd[1:])}\n")
        print("\n".join(lines[-40:]))
        if errs and rc != 0:
            print("\nstderr (tail):\n" + "\n".join(errs[-15:]))
        print()
        status = "ok" if rc == 0 else f"FAILED ({rc})"
        if name == "parity" and rc == 0 and " passed" not in out:  # pytest skipped it: nothing was compared
            status = "NOT CHECKED (test skipped: gsplat missing or no CUDA)"
            failed |= not args.dry_run
        rows.append((name, status, wall, last))
        failed |= rc != 0
    print("| part | status | wall (s) | last line |")
    print("|---|---|---:|---|")
    for name, status, wall, last in rows:
        print(f"| {name} | {status} | {wall:.0f} | {last.replace('|', '/')} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ngpu_check total wall time: {time.time() - t_all:.0f} s (1-min load average {load:.1f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
