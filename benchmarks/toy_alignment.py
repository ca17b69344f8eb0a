"""Every alignment objective on the toy world, side by side (the papers' comparison table, on CPU).

For each reward (JPEG compressibility, not differentiable; brightness, differentiable), each
toy prompt and each method, train the shipped toy config for a fixed number of steps with the
same seed and report the final test reward, fidelity PSNR against the true object, and wall
time. Methods: ``sds`` (objective none; the reward is only measured), ``reward-backprop``
(differentiable rewards only), and ``ddpo3d`` with each target (``x0_pred``, ``rollout``,
``render``) and ``unet_jacobian`` false / true.

Prints a Markdown table and writes ``outputs/benchmarks/toy_alignment.png``: the validation
reward against wall time, one curve per method (per reward, first prompt).

    python benchmarks/toy_alignment.py                 # ~10 min on 2 CPU cores
    python benchmarks/toy_alignment.py --steps 60 --prompts "a red sphere"   # quicker
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "benchmarks" / "toy_alignment"

REWARDS = {"jpeg-compressibility": "ddpo-jpeg.yaml", "brightness": "ddpo-brightness.yaml"}
DDPO_METHODS = [(target, jac) for target in ("x0_pred", "rollout", "render") for jac in (False, True)]


def methods_for(reward: str) -> list:
    """(label, config file, overrides) per method for one reward."""
    cfg = REWARDS[reward]
    out = [("sds", "sds.yaml", [f"system.guidance.reward.type={reward}"])]
    if reward == "brightness":
        out.append(
            (
                "reward-backprop",
                "sds.yaml",
                [
                    f"system.guidance.reward.type={reward}",
                    "system.guidance.objective.type=reward-backprop",
                    "system.loss.lambda_reward=1000",
                ],
            )
        )
        out.append(("dreamfl", "dreamfl-brightness.yaml", []))  # DreamReward's reward feedback (differentiable)
    for target, jac in DDPO_METHODS:
        label = f"ddpo3d {target}{' +jacobian' if jac else ''}"
        over = [
            f"system.guidance.objective.target={target}",
            f"system.guidance.objective.unet_jacobian={str(jac).lower()}",
        ]
        if target == "rollout":
            over.append("system.guidance.objective.rollout_steps=4")
        out.append((label, cfg, over))
    return out


def run_one(reward: str, label: str, config: str, overrides: list, prompt: str, steps: int) -> dict:
    tag = f"{reward}-{label.replace(' ', '_').replace('+', '')}-{prompt.replace(' ', '_')}"
    cmd = [
        sys.executable,
        str(ROOT / "launch.py"),
        "--config",
        str(ROOT / "configs" / "toy" / config),
        "--train",
        f"exp_root_dir={OUT}",
        "use_timestamp=false",
        f"tag={tag}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={max(steps // 5, 1)}",
        "trainer.enable_progress_bar=false",
        "data.n_val_views=2",
        "data.n_test_views=8",
        f"system.prompt_processor.prompt={prompt}",
        *overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"reward": reward, "method": label, "prompt": prompt, "error": proc.stderr.strip().splitlines()[-1]}
    metrics = next(OUT.glob(f"*/{tag}/save/metrics.csv"))
    series: dict = {}
    with open(metrics) as f:
        for r in csv.DictReader(f):
            series.setdefault((r["split"], r["name"]), []).append((int(r["step"]), float(r["value"])))
    elapsed = dict(series.get(("train", "elapsed_s"), []))
    curve = [(elapsed.get(step, 0.0), v) for step, v in series.get(("val", "reward"), [])]
    return {
        "reward": reward,
        "method": label,
        "prompt": prompt,
        "test_reward": series[("test", "reward")][-1][1],
        "test_psnr": series[("test", "psnr")][-1][1],
        "wall_s": wall,
        "curve": curve,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompts", nargs="+", default=["a red sphere", "a blue cube"])
    p.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=list(REWARDS))
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (one thread each)")
    args = p.parse_args(argv)
    jobs = [
        (r, label, cfg, over, prompt)
        for r in args.rewards
        for prompt in args.prompts
        for label, cfg, over in methods_for(r)
    ]
    print(f"{len(jobs)} runs of {args.steps} steps, {args.workers} at a time ...", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(lambda j: run_one(*j, args.steps), jobs))

    print("\n| reward | method | prompt | test reward | fidelity PSNR (dB) | wall (s) |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['reward']} | {r['method']} | {r['prompt']} | error: {r['error']} | | |")
        else:
            print(
                f"| {r['reward']} | {r['method']} | {r['prompt']} | {r['test_reward']:.4f} | {r['test_psnr']:.1f} | {r['wall_s']:.0f} |"
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.rewards), figsize=(6 * len(args.rewards), 4), squeeze=False)
    for ax, reward in zip(axes[0], args.rewards):
        for r in rows:
            if r["reward"] == reward and r["prompt"] == args.prompts[0] and "curve" in r and r["curve"]:
                xs, ys = zip(*r["curve"])
                ax.plot(xs, ys, "o-", label=r["method"], markersize=3)
        ax.set_title(f"{reward} ({args.prompts[0]})")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("validation reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT.parent / "toy_alignment.png"
    fig.savefig(png, dpi=100)
    print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
