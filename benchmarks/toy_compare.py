"""The main job: SDS-only and the aligned run at the same seed on the toy world, one figure.

Runs ``configs/toy/ddpo-brightness.yaml`` twice through ``launch.py`` in two processes side by
side: once aligned (SDS + DDPO3D on the brightness reward) and once with
``system.loss.lambda_ddpo=0`` (SDS only). The policy draws its noise from its own RNG stream, so
both runs see the same SDS timesteps and noise; they differ only by the alignment term. The
aligned run's strength is the config's ``objective.grad_ratio`` (3 in ddpo-brightness.yaml: per
view, the alignment gradient's norm at the render is three times SDS's); ``--grad-ratio`` overrides
it (5 gave +0.0071 brightness at 36.2 dB against SDS-only's 40.2 dB, seed 0: just 0.90 x the
fidelity). Validation and test views are rendered at 64² (``--eval-size``; training renders keep
the config's 32²) so the strip of renders can be seen.

Writes ``outputs/toy-compare/<timestamp>/comparison.png``: the validation reward and fidelity
(PSNR against the true object) of both runs against steps, and a strip of final test renders of
both runs, their difference (x10) and the true object. Before the last line it prints the paired
difference per test view (aligned minus SDS-only, each view scored again on the saved 8-bit test
renders) with its standard error over the views. With ``--seeds N`` it trains N seed pairs one after the other
(the trainer seed and the guidance's RNG seed both set to s, s+1, ...) and prints each pair's
numbers and the spread over seeds; the summary line is then the mean over seeds. Its last line is

    alignment summary: reward sds-only R0 -> aligned R1; fidelity sds-only F0 dB -> aligned F1 dB

(R: mean reward of the test views; F: their mean PSNR against the toy object). Each training
uses about 85 s of CPU time (printed with the wall time), so a seed pair takes about 1.5 minutes
of wall time on 2 otherwise idle cores (measured: 862 s at a 1-min load average of 8 to 16).

Usage::

    python benchmarks/toy_compare.py                                  # the README's main job
    python benchmarks/toy_compare.py --seeds 3                        # seed noise (three pairs)
    python benchmarks/toy_compare.py --config configs/toy/ddpo-jpeg.yaml --grad-ratio 0 -- trainer.max_steps=200
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRIP_VIEWS = 5
GRAD_RATIO = 0.0  # the aligned run's objective.grad_ratio (0: the config's own, 3)
EVAL_SIZE = 64  # validation / test render size in pixels
DIFF_GAIN = 10.0  # the figure's difference row: 0.5 + gain x (aligned - sds-only)


def read_metrics(trial: Path) -> dict:
    """``{(split, name): [(step, value), ...]}`` from a run's ``save/metrics.csv``."""
    rows: dict = {}
    with open(trial / "save" / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["split"], r["name"]), []).append((int(r["step"]), float(r["value"])))
    return rows


def _last_dir(trial: Path, pattern: str) -> list:
    dirs = sorted(trial.glob(pattern), key=lambda p: int(p.name[2:].split("-")[0]))
    return sorted(dirs[-1].glob("*.png"), key=lambda p: int(p.stem)) if dirs else []


def test_views(trial: Path) -> list:
    """Paths of the final test renders (plain RGB), in view order."""
    return _last_dir(trial, "save/it*-test-rgb")


def reference_views(trial: Path) -> list:
    """The final test grids (render, true object, ...) in view order; the second panel is the true object."""
    return _last_dir(trial, "save/it*-test")


def load_rgb(path: Path):
    """An image file as float32 RGB in [0, 1], ``H x W x 3``."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def reference_panel(path: Path):
    """The true object's panel of a test grid (square panels side by side: the second one)."""
    img = load_rgb(path)
    w = img.shape[0]
    return img[:, w : 2 * w]


def per_view_scores(trial: Path) -> tuple:
    """Reward and PSNR of each final test view, recomputed from the saved 8-bit renders.

    The reward is the run's own (``configs/parsed.yaml``: ``system.eval_reward`` or the guidance's),
    applied to all views in one batch; the PSNR is against the true-object panel of the test grid.

    Returns:
        ``(rewards, psnrs)``: two lists with one float per test view (empty without saved views).
    """
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from ddpo3d.rewards import build_reward

    views, grids = test_views(trial), reference_views(trial)
    if not views or len(views) != len(grids):
        return [], []
    cfg = OmegaConf.load(trial / "configs" / "parsed.yaml")
    block = cfg.system.get("eval_reward") or cfg.system.guidance.reward
    reward = build_reward(OmegaConf.to_container(block, resolve=True))
    images = np.stack([load_rgb(p) for p in views])
    with torch.no_grad():
        scores = reward(torch.from_numpy(images), [str(cfg.system.prompt_processor.prompt)] * len(views))
    psnrs = []
    for img, grid in zip(images, grids):
        mse = float(((img - reference_panel(grid)) ** 2).mean())
        psnrs.append(-10.0 * math.log10(max(mse, 1e-10)))
    return [float(s) for s in scores.flatten()], psnrs


def paired(a: list, b: list) -> tuple:
    """Mean and standard error of ``b - a`` per item (paired), and the item count."""
    d = [y - x for x, y in zip(a, b)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return statistics.fmean(d) if d else float("nan"), se, len(d)


def figure(runs: dict, out: Path, title: str) -> None:
    """Reward and fidelity curves of both runs, a strip of final renders of both (about 300 px a
    panel), their difference amplified, and the true object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = {"sds-only": "tab:gray", "aligned": "tab:red"}
    fig = plt.figure(figsize=(16, 17), dpi=100)
    grid = fig.add_gridspec(5, STRIP_VIEWS, height_ratios=[1.6, 1, 1, 1, 1])
    for col, (key, label) in enumerate(
        ((("val", "reward"), "reward (validation views)"), (("val", "psnr"), "fidelity PSNR (dB, validation views)"))
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
    rows = [("sds-only", runs["sds-only"]), ("aligned", runs["aligned"])]
    refs = runs["aligned"]["refs"]
    n = len(rows[0][1]["views"])
    picks = np.linspace(0, max(n - 1, 0), STRIP_VIEWS).round().astype(int) if n else []
    for r, (name, run) in enumerate(rows):
        for c, i in enumerate(picks):
            ax = fig.add_subplot(grid[1 + r, c])
            if i < len(run["views"]):
                ax.imshow(load_rgb(run["views"][i]), interpolation="nearest")
                if i < len(run["view_rewards"]):
                    ax.set_title(
                        f"view {i}: reward {run['view_rewards'][i]:.4f}, {run['view_psnrs'][i]:.1f} dB", fontsize=10
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=13)
    a_views, b_views = runs["sds-only"]["views"], runs["aligned"]["views"]
    for c, i in enumerate(picks):
        ax = fig.add_subplot(grid[3, c])  # where the alignment changed the render, amplified
        if i < len(a_views) and i < len(b_views):
            diff = load_rgb(b_views[i]) - load_rgb(a_views[i])
            ax.imshow(np.clip(0.5 + DIFF_GAIN * diff, 0.0, 1.0), interpolation="nearest")
            ax.set_title(f"mean difference {diff.mean():+.4f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel(f"aligned - sds-only\n(x{DIFF_GAIN:g}, grey = 0)", fontsize=13)
        ax = fig.add_subplot(grid[4, c])
        if i < len(refs):
            ax.imshow(reference_panel(refs[i]), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel("true object", fontsize=13)
    fig.suptitle(title, fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.975))  # room for the suptitle
    fig.savefig(out)
    plt.close(fig)


def run_pair(args, out: Path, seed_overrides: list) -> dict:
    """Train SDS-only and aligned side by side in ``out``; returns ``{name: run}`` or raises on failure."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    size = [f"data.eval_width={args.eval_size}", f"data.eval_height={args.eval_size}"] if args.eval_size else []
    strength = [f"system.guidance.objective.grad_ratio={args.grad_ratio:g}"] if args.grad_ratio > 0 else []
    procs = {}
    for name, extra in (("sds-only", [f"system.loss.{args.align_lambda}=0"]), ("aligned", strength)):
        cmd = [sys.executable, str(ROOT / "launch.py"), "--config", args.config, "--train"]
        cmd += [f"exp_root_dir={out}", f"name={name}", "tag=run", "use_timestamp=false", *size]
        cmd += [*seed_overrides, *args.overrides, *extra]
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
            raise RuntimeError(f"toy_compare: the {name} run failed (exit {rc}); its log: {out / f'{name}.log'}")
    for name in procs:
        trial = out / name / "run"
        rewards, psnrs = per_view_scores(trial)
        runs[name] = {
            "metrics": read_metrics(trial),
            "views": test_views(trial),
            "refs": reference_views(trial),
            "view_rewards": rewards,
            "view_psnrs": psnrs,
        }
        print(f"{name}: {trial}")
    return runs


def final(run: dict, metric: str) -> float:
    """The run's last logged test value of ``metric`` (mean over the test views)."""
    pts = run["metrics"].get(("test", metric))
    return pts[-1][1] if pts else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "toy" / "ddpo-brightness.yaml"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "toy-compare"))
    ap.add_argument("--align-lambda", default="lambda_ddpo", help="the loss weight set to 0 for the SDS-only run")
    ap.add_argument(
        "--grad-ratio", type=float, default=GRAD_RATIO, help="the aligned run's objective.grad_ratio (0: the config's)"
    )
    ap.add_argument("--eval-size", type=int, default=EVAL_SIZE, help="val/test render size (0: the config's)")
    ap.add_argument("--seed", type=int, default=None, help="trainer and guidance seed (default: the config's)")
    ap.add_argument("--seeds", type=int, default=1, help="run this many seed pairs (seed, seed+1, ...)")
    ap.add_argument("--sequential", action="store_true", help="run the two trainings one after the other")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for both runs (after --)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")

    t0 = time.time()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    first_seed = 0 if args.seed is None else args.seed
    pairs = []  # (seed, runs)
    for i in range(args.seeds):
        seed = first_seed + i
        explicit = args.seed is not None or args.seeds > 1
        seed_overrides = [f"seed={seed}", f"system.guidance.seed={seed}"] if explicit else []
        try:
            runs = run_pair(args, out / f"seed{seed}" if args.seeds > 1 else out, seed_overrides)
        except RuntimeError as exc:
            print(exc)
            return 1
        pairs.append((seed if explicit else None, runs))

    seed0, runs0 = pairs[0]
    fig_path = out / "comparison.png"
    strength = f"grad_ratio {args.grad_ratio:g}" if args.grad_ratio > 0 else "the config's strength"
    at_seed = "" if seed0 is None else f", seed {seed0}"
    figure(runs0, fig_path, f"SDS-only vs aligned at the same seed ({Path(args.config).name}, {strength}{at_seed})")
    stats = []
    for seed, runs in pairs:
        r0, r1 = final(runs["sds-only"], "reward"), final(runs["aligned"], "reward")
        f0, f1 = final(runs["sds-only"], "psnr"), final(runs["aligned"], "psnr")
        d, se, n = paired(runs["sds-only"]["view_rewards"], runs["aligned"]["view_rewards"])
        df, sef, _ = paired(runs["sds-only"]["view_psnrs"], runs["aligned"]["view_psnrs"])
        stats.append((r0, r1, f0, f1))
        if len(pairs) > 1:
            print(
                f"seed {seed}: reward {r0:.4f} -> {r1:.4f} ({r1 - r0:+.4f}, per-view paired {d:+.4f} ± {se:.2g} SE); "
                f"fidelity {f0:.2f} -> {f1:.2f} dB"
            )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"figure: {fig_path}")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # the trainings' own work, whatever the load
    print(
        f"wall time: {time.time() - t0:.0f} s (1-min load average {load:.1f} on {os.cpu_count()} cores); "
        f"CPU time of the runs: {cpu.ru_utime + cpu.ru_stime:.0f} s"
    )
    r0, r1, f0, f1 = (statistics.fmean(s[i] for s in stats) for i in range(4))
    if len(pairs) > 1:
        gains = [s[1] - s[0] for s in stats]
        print(
            f"seed noise over {len(pairs)} seeds: reward gain R1-R0 {statistics.fmean(gains):+.4f} "
            f"± {statistics.stdev(gains):.4f} (sd), min {min(gains):+.4f}; SDS-only R0 sd {statistics.stdev(s[0] for s in stats):.4f}"
        )
    else:
        print(
            f"per-view paired difference (aligned - sds-only, {n} test views, 8-bit renders): reward {d:+.4f} "
            f"± {se:.2g} SE ({d / se if se > 0 else float('nan'):.0f} SE); fidelity {df:+.2f} ± {sef:.2g} dB "
            "(views of one run are correlated: seed noise is measured with --seeds 3)"
        )
    print(
        f"alignment summary: reward sds-only {r0:.4f} -> aligned {r1:.4f}; fidelity sds-only {f0:.2f} dB -> aligned {f1:.2f} dB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
