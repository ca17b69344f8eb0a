"""The main job: SDS-only and the aligned run at the same seed on the toy world, one figure.

Runs ``configs/toy/ddpo-brightness.yaml`` twice through ``launch.py`` in two processes side by
side: once as configured (SDS + DDPO3D on the brightness reward) and once with
``system.loss.lambda_ddpo=0`` (SDS only). The policy draws its noise from its own RNG stream, so
both runs see the same SDS timesteps and noise; they differ only by the alignment term. Writes
``outputs/toy-compare/<timestamp>/comparison.png``: the validation reward and fidelity (PSNR
against the true object) of both runs against steps, and a strip of final test renders of both
with the true object. Its last line is

    alignment summary: reward sds-only R0 -> aligned R1; fidelity sds-only F0 dB -> aligned F1 dB

(R: mean reward of the test views; F: their mean PSNR against the toy object).

Usage::

    python benchmarks/toy_compare.py                                  # the README's main job
    python benchmarks/toy_compare.py --config configs/toy/ddpo-jpeg.yaml -- system.seed=1
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRIP_VIEWS = 5


def read_metrics(trial: Path) -> dict:
    """``{(split, name): [(step, value), ...]}`` from a run's ``save/metrics.csv``."""
    rows: dict = {}
    with open(trial / "save" / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["split"], r["name"]), []).append((int(r["step"]), float(r["value"])))
    return rows


def test_views(trial: Path) -> list:
    """Paths of the final test renders (plain RGB), in view order."""
    dirs = sorted(trial.glob("save/it*-test-rgb"), key=lambda p: int(p.name[2:].split("-")[0]))
    if not dirs:
        return []
    return sorted(dirs[-1].glob("*.png"), key=lambda p: int(p.stem))


def reference_views(trial: Path) -> list:
    """The true object's render beside each test view (second panel of the test grids)."""
    dirs = sorted(trial.glob("save/it*-test"), key=lambda p: int(p.name[2:].split("-")[0]))
    return sorted(dirs[-1].glob("*.png"), key=lambda p: int(p.stem)) if dirs else []


def figure(runs: dict, out: Path, title: str) -> None:
    """Reward and fidelity curves of both runs plus a strip of final renders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    colours = {"sds-only": "tab:gray", "aligned": "tab:red"}
    fig = plt.figure(figsize=(15, 11), dpi=100)
    grid = fig.add_gridspec(4, STRIP_VIEWS, height_ratios=[2.2, 1, 1, 1])
    for col, (key, label) in enumerate(
        ((("val", "reward"), "reward (validation views)"), (("val", "psnr"), "fidelity PSNR (dB)"))
    ):
        ax = fig.add_subplot(grid[0, col * 2 + (1 if col else 0) : col * 2 + (3 if col else 2)])
        for name, run in runs.items():
            pts = run["metrics"].get(key, [])
            if pts:
                ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", color=colours[name], label=name, lw=2)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    rows = [("sds-only", runs["sds-only"]["views"]), ("aligned", runs["aligned"]["views"])]
    refs = runs["aligned"]["refs"]
    picks = np.linspace(0, max(len(rows[0][1]) - 1, 0), STRIP_VIEWS).round().astype(int) if rows[0][1] else []
    for r, (name, views) in enumerate(rows):
        for c, i in enumerate(picks):
            ax = fig.add_subplot(grid[1 + r, c])
            if i < len(views):
                ax.imshow(np.asarray(Image.open(views[i]).convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=13)
    for c, i in enumerate(picks):
        ax = fig.add_subplot(grid[3, c])
        if i < len(refs):
            img = np.asarray(Image.open(refs[i]).convert("RGB"))
            w = img.shape[0]  # square panels: the second one is the true object
            ax.imshow(img[:, w : 2 * w], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel("true object", fontsize=13)
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "toy" / "ddpo-brightness.yaml"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "toy-compare"))
    ap.add_argument("--align-lambda", default="lambda_ddpo", help="the loss weight set to 0 for the SDS-only run")
    ap.add_argument("--sequential", action="store_true", help="run the two trainings one after the other")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for both runs (after --)")
    args = ap.parse_args(argv)

    t0 = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / stamp
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {}
    for name, extra in (("sds-only", [f"system.loss.{args.align_lambda}=0"]), ("aligned", [])):
        cmd = [sys.executable, str(ROOT / "launch.py"), "--config", args.config, "--train"]
        cmd += [f"exp_root_dir={out}", f"name={name}", "tag=run", "use_timestamp=false", *args.overrides, *extra]
        log = open(out / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        if args.sequential:
            procs[name][0].wait()
    runs = {}
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        if rc != 0:
            print((out / f"{name}.log").read_text()[-3000:])
            print(f"toy_compare: the {name} run failed (exit {rc}); its log: {out / f'{name}.log'}")
            return rc
        trial = out / name / "run"
        runs[name] = {"metrics": read_metrics(trial), "views": test_views(trial), "refs": reference_views(trial)}
        print(f"{name}: {trial}")

    def final(name, metric):
        pts = runs[name]["metrics"].get(("test", metric))
        return pts[-1][1] if pts else float("nan")

    r0, r1 = final("sds-only", "reward"), final("aligned", "reward")
    f0, f1 = final("sds-only", "psnr"), final("aligned", "psnr")
    fig_path = out / "comparison.png"
    figure(runs, fig_path, f"SDS-only vs aligned at the same seed ({Path(args.config).name})")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"figure: {fig_path}")
    print(f"wall time: {time.time() - t0:.0f} s (1-min load average {load:.1f} on {os.cpu_count()} cores)")
    print(
        f"alignment summary: reward sds-only {r0:.4f} -> aligned {r1:.4f}; fidelity sds-only {f0:.2f} dB -> aligned {f1:.2f} dB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
