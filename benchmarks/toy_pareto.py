"""Toy-world Pareto benchmark: reward gain over SDS-only against fidelity, per objective and strength.

Every objective in ``ddpo3d.objectives.combined.OBJECTIVES`` is swept (``none`` is the SDS-only
baseline; an objective added to the registry later appears automatically, its loss weight
``lambda_<loss_name>`` for SDS-family terms, else from ``LAMBDAS`` or ``lambda_<type with - as _>``),
plus a zero-mean control for the policy gradient. Strength is the scale-free ``grad_ratio`` in
ratio mode (the per-view norm of the alignment gradient relative to SDS's at the same point; see
``ddpo3d/objectives/combined.py``) for additive objectives, and the lambda mix
``lambda_x = s/(1+s)``, ``lambda_sds = 1/(1+s)`` for terms that replace SDS (reward-sds, dreamdpo),
swept over ``--strengths``; seeds x the two toy prompts; rewards brightness (differentiable) and
JPEG compressibility (not: objectives that need the reward's gradient are skipped on it). Each run
trains the toy NeRF of ``configs/toy/ddpo-brightness.yaml`` (reduced with ``--quick``) and records
the final test-view reward and fidelity PSNR against the true object. The policy gradient
(``ddpo3d``) uses the DDPO3D block of each reward's shipped toy config (``PG_CONFIGS``: K=128 for
both); only its ``grad_ratio`` is swept.

The control (``ddpo3d-render-control``) scores the render itself with the raw reward as advantage:
every draw of a view gets the same reward, so the estimate is sign(R) x the sum of the view's
score vectors, an isotropic random direction (zero mean), sent at the same ``grad_ratio`` as the
policy gradient. It answers "does a random direction of that norm move the reward as much?". Its
law does not depend on the reward, and SDS-only does not use the reward at all, so both are
trained once per seed, prompt (and strength) and their final renders are scored with every reward
(``system.eval_reward``).

Writes ``<out>/pareto.md`` (the tables, also printed), ``<out>/pareto-<reward>.png`` (reward
gain over SDS-only, paired by seed and prompt, against fidelity; error bars are standard errors
over the seed x prompt runs) and ``<out>/runs.jsonl`` (one line per scored run, with its wall and
CPU time; reused when present, so an interrupted sweep resumes and a finished one re-summarises
for free). The last two printed lines are exactly

    pareto brightness: pg gain / backprop gain at fidelity >= 0.9 x sds: X
    pareto jpeg: pg gain over render control: Z standard errors

X: the best mean gain of the policy gradient among strengths whose mean fidelity is >= 0.9 x
SDS-only's, over the same for reward backprop. Z: at the policy gradient's best such strength on
JPEG, the mean paired difference (pg - control, same seed and prompt) over its standard error.

``--quick``: 120 steps, 24 px training and 32 px test images, 4 test views, strengths 0.3 / 1 / 3,
3 seeds for the objectives the two lines need (sds, ddpo3d, the control, reward-backprop) and 1
seed (x 2 prompts) for the others: 114 training runs. Measured from scratch with 2 workers on the
project's otherwise idle 2-core machine: 14 min 43 s of wall time (1694 s of CPU time in all); on
cores shared with other jobs it took 21 min (load 3.3) to 40 min (load 8). The full sweep:
300 steps, 32 px, strengths 0.3 / 1 / 3 / 10, 3 seeds for every objective (246 runs).

Usage::

    python benchmarks/toy_pareto.py --quick            # 14.7 min on 2 idle cores (114 runs)
    python benchmarks/toy_pareto.py                    # the full sweep
    python benchmarks/toy_pareto.py --rewards jpeg --only ddpo3d ddpo3d-render-control --strengths 3
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE = ROOT / "configs" / "toy" / "ddpo-brightness.yaml"
PROMPTS = ("a red sphere", "a blue cube")
REWARDS = {"brightness": "brightness", "jpeg": "jpeg-compressibility"}
#: the shipped toy config whose DDPO3D block (K, advantage, ...) the policy gradient uses, per reward
PG_CONFIGS = {"brightness": BASE, "jpeg": ROOT / "configs" / "toy" / "ddpo-jpeg.yaml"}
LAMBDAS = {"ddpo3d": "lambda_ddpo", "reward-backprop": "lambda_reward", "dreamfl": "lambda_dreamfl"}


def loss_weight_key(kind: str) -> str:
    """The ``system.loss`` key weighting an objective's loss term (SDS-family terms name theirs)."""
    from ddpo3d.objectives.combined import OBJECTIVES

    name = getattr(OBJECTIVES.get(kind), "loss_name", None)
    return f"lambda_{name}" if name else LAMBDAS.get(kind, "lambda_" + kind.replace("-", "_"))


def replaces_sds(kind: str) -> bool:
    """Terms that replace SDS (reward-sds, dreamdpo): their strength is the lambda mix with SDS."""
    from ddpo3d.objectives.combined import OBJECTIVES

    return bool(getattr(OBJECTIVES.get(kind), "replaces_sds", False))


PG = "ddpo3d"
CONTROL = "ddpo3d-render-control"
#: the zero-mean control: the render scored (the same reward for all K draws of a view), raw reward as
#: advantage, so each view gets sign(R) x the sum of its K score vectors: an isotropic random direction,
#: sent at the same grad_ratio as the policy gradient. Its law does not depend on the reward.
#: K = 2: the law of that direction does not depend on K, so the control need not pay for the pg's K.
CONTROL_BLOCK = {"type": "ddpo3d", "target": "render", "advantage": "none", "num_samples": 2}
#: runs whose training does not depend on the reward (SDS-only; the control, up to the sign of a random
#: direction): trained once, their final renders scored with every reward
SHARED = ("sds", CONTROL)
#: objectives the two summary lines need: ``--quick`` runs every seed only for these
CORE = ("sds", PG, CONTROL, "reward-backprop")
#: objectives that backpropagate the reward: skipped for JPEG (no gradient)
NEEDS_GRADIENT = ("reward-backprop", "dreamfl", "reward-tilted")
QUICK_STEPS = 120
QUICK_STRENGTHS = [0.3, 1.0, 3.0]
FULL_STRENGTHS = [0.3, 1.0, 3.0, 10.0]
QUICK = [
    f"trainer.max_steps={QUICK_STEPS}",
    "data.width=24",
    "data.height=24",
    "data.eval_width=32",
    "data.eval_height=32",
    "data.n_test_views=4",
    "data.n_val_views=1",
    "trainer.val_check_interval=1000",
    "trainer.num_sanity_val_steps=0",
    "system.renderer.num_samples_per_ray=32",
]
FULL = ["data.n_test_views=12", "data.n_val_views=1", "trainer.val_check_interval=1000"]


def objective_variants() -> dict:
    """``{label: objective block}`` from the registry, plus the zero-mean control."""
    from ddpo3d.objectives.combined import OBJECTIVES

    out = {}
    for kind in OBJECTIVES:
        out["sds" if kind == "none" else kind] = {"type": kind}
        if kind == "ddpo3d":
            out[CONTROL] = dict(CONTROL_BLOCK)
    return out


def jobs(args) -> list:
    """One job per training run. A shared run (SDS-only, the control) carries every reward in
    ``rewards`` and is trained once; the others carry the one reward they are trained on."""
    from ddpo3d.rewards import build_reward

    out = []
    other_seeds = args.seeds if args.other_seeds is None else args.other_seeds
    for label, block in objective_variants().items():
        strengths = [None] if block["type"] == "none" else args.strengths
        seeds = args.seeds if label in CORE else min(args.seeds, other_seeds)
        if label in SHARED:
            groups = [tuple(REWARDS)]
        else:
            groups = []
            for reward_name, reward_type in REWARDS.items():
                differentiable = bool(getattr(build_reward({"type": reward_type}), "differentiable", False))
                if not (block["type"] in NEEDS_GRADIENT and not differentiable):
                    groups.append((reward_name,))
        for rewards in groups:
            for s in strengths:
                for seed in range(seeds):
                    for prompt in PROMPTS:
                        out.append(
                            dict(
                                reward=rewards[0],
                                rewards=rewards,
                                label=label,
                                block=block,
                                strength=s,
                                seed=seed,
                                prompt=prompt,
                            )
                        )
    return out


def job_key(job: dict, reward: str = None) -> str:
    """The cache key of one (reward, run) row."""
    return f"{reward or job['reward']}|{job['label']}|{job['strength']}|{job['seed']}|{job['prompt']}"


def job_keys(job: dict) -> list:
    """The keys of every row a job writes (one per reward it is scored with)."""
    return [job_key(job, r) for r in job.get("rewards", (job["reward"],))]


def run_job(job: dict, quick: bool, extra: tuple = ()) -> list:
    """Train one toy run in this process; one row (final test reward and PSNR) per reward of the job."""
    import csv
    import shutil

    from omegaconf import OmegaConf

    from launch import main as launch_main

    cfg = OmegaConf.load(BASE)
    guidance = cfg.system.guidance
    guidance.reward = {"type": REWARDS[job["reward"]]}
    rewards = tuple(job.get("rewards", (job["reward"],)))
    cfg.system.eval_reward = [{"type": REWARDS[r]} for r in rewards] if len(rewards) > 1 else None
    block = dict(job["block"])
    mix = None
    if block["type"] != "none" and replaces_sds(block["type"]):
        mix = float(job["strength"]) / (1.0 + float(job["strength"]))  # lambda_x = s/(1+s), lambda_sds = 1/(1+s)
    elif block["type"] != "none":
        block["strength_mode"] = "ratio"  # every additive objective swept on the same scale-free axis
        block["grad_ratio"] = float(job["strength"])
        if block["type"] == "dreamfl":  # the toy schedule: reward from step 0, no reward-only tail
            block.update(start_step=0, tail_step=None)
        if block["type"] == "ddpo3d":  # the shipped toy config of this reward: its own DDPO3D keys (K, ...)
            base = OmegaConf.to_container(OmegaConf.load(PG_CONFIGS[job["reward"]]).system.guidance.objective)
            block = {**{k: v for k, v in base.items() if k not in ("grad_ratio",)}, **block}
    guidance.objective = block
    loss = {k: v for k, v in OmegaConf.to_container(cfg.system.loss).items() if k not in LAMBDAS.values()}
    if block["type"] != "none":
        loss[loss_weight_key(block["type"])] = 1.0 if mix is None else mix
        if mix is not None:
            loss["lambda_sds"] = 1.0 - mix
    cfg.system.loss = loss
    tmp = Path(tempfile.mkdtemp(prefix="pareto-"))
    try:
        path = tmp / "cfg.yaml"
        OmegaConf.save(cfg, path)
        over = [
            f"exp_root_dir={tmp}",
            "tag=run",
            "use_timestamp=false",
            f"seed={job['seed']}",
            f"system.guidance.seed={job['seed']}",
            f"system.prompt_processor.prompt={job['prompt']}",
            "system.save_rgb_views=false",
            *(QUICK if quick else FULL),
            *extra,
        ]
        import torch

        gpu = ["--gpu", "0"] if torch.cuda.is_available() else []
        t0, c0 = time.time(), time.process_time()
        rc = launch_main(["--config", str(path), "--train", *gpu, *over])
        if rc != 0:
            raise RuntimeError(f"run {job_key(job)} failed with exit code {rc}")
        rows = {}
        metrics = next(tmp.glob("*/run/save/metrics.csv"))
        with open(metrics, newline="") as f:
            for r in csv.DictReader(f):
                rows.setdefault((r["split"], r["name"]), []).append(float(r["value"]))
        ratios = rows.get(("train", "align_to_sds_grad_ratio"), [float("nan")])
        wall, cpu = time.time() - t0, time.process_time() - c0
        out = []
        for i, reward in enumerate(rewards):
            name = "reward" if len(rewards) == 1 else f"reward/{REWARDS[reward]}"
            out.append(
                {
                    **{k: v for k, v in job.items() if k not in ("block", "rewards")},
                    "reward": reward,
                    "key": job_key(job, reward),
                    "reward_value": rows[("test", name)][-1],
                    "psnr": rows[("test", "psnr")][-1],
                    "grad_ratio_logged": statistics.median(ratios),
                    "shared": len(rewards) > 1,
                    # the run's cost is booked on its first row only (sums over rows stay honest)
                    "wall_s": wall if i == 0 else 0.0,
                    "cpu_s": cpu if i == 0 else 0.0,
                }
            )
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _worker(queue_in, queue_out, quick, extra):
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    while True:
        job = queue_in.get()
        if job is None:
            return
        try:
            queue_out.put(run_job(job, quick, extra))
        except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
            queue_out.put([{"key": job_key(job), "error": f"{type(exc).__name__}: {exc}"}])


def mean_se(values: list) -> tuple:
    if not values:
        return float("nan"), float("nan")
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def best_point(points: list, sds_fid: float):
    """The strength with the largest mean gain among those with mean fidelity >= 0.9 x SDS-only's."""
    ok = [p for p in points if p[3] >= 0.9 * sds_fid]
    return max(ok, key=lambda p: p[1]) if ok else None


def summarise(results: list, out: Path) -> list:
    """Tables, figures and the two summary lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines, summary = [], {}
    for reward in REWARDS:
        rs = [r for r in results if r["reward"] == reward]
        sds = {(r["seed"], r["prompt"]): r for r in rs if r["label"] == "sds"}
        if not sds:
            continue
        sds_fid = statistics.fmean(r["psnr"] for r in sds.values())
        sds_rew = statistics.fmean(r["reward_value"] for r in sds.values())
        lines += [
            f"\n## {reward}: SDS-only reward {sds_rew:.4f}, fidelity {sds_fid:.2f} dB "
            f"(mean over {len(sds)} seed x prompt runs); gain = objective - SDS-only at the same seed and prompt; "
            "± is the standard error over the seed x prompt pairs (of the paired difference to SDS-only for the "
            "fidelity too: the two prompts' own PSNRs differ by several dB)\n",
            "| objective | strength | reward gain | fidelity PSNR (dB) | logged align/SDS ratio | runs |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        points = {}
        for label in dict.fromkeys(r["label"] for r in rs if r["label"] != "sds"):
            for s in sorted({r["strength"] for r in rs if r["label"] == label}):
                cell = [r for r in rs if r["label"] == label and r["strength"] == s and (r["seed"], r["prompt"]) in sds]
                gains = [r["reward_value"] - sds[(r["seed"], r["prompt"])]["reward_value"] for r in cell]
                g, g_se = mean_se(gains)
                f = statistics.fmean(r["psnr"] for r in cell)
                _, f_se = mean_se([r["psnr"] - sds[(r["seed"], r["prompt"])]["psnr"] for r in cell])
                ratio = statistics.median(r["grad_ratio_logged"] for r in cell)
                points.setdefault(label, []).append((s, g, g_se, f, f_se, cell))
                lines.append(
                    f"| {label} | {s} | {g:+.4f} ± {g_se:.4f} | {f:.2f} ± {f_se:.2f} | {ratio:.3g} | {len(cell)} |"
                )
        fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), dpi=100)
        near = 0.85 * sds_fid  # the zoomed panel: the points that keep most of the fidelity
        for ax, zoom in zip(axes, (False, True)):
            ys = [0.0]
            for label, pts in points.items():
                shown = [p for p in pts if not zoom or p[3] >= near]
                if not shown:
                    ax.plot([], [], marker="o", label=label)  # keep the colours and the legend aligned
                    continue
                ys += [p[1] + p[2] for p in shown] + [p[1] - p[2] for p in shown]
                ax.errorbar(
                    [p[3] for p in shown],
                    [p[1] for p in shown],
                    xerr=[p[4] for p in shown],
                    yerr=[p[2] for p in shown],
                    marker="o",
                    capsize=3,
                    label=label,
                )
                for p in shown:
                    ax.annotate(f"{p[0]:g}", (p[3], p[1]), textcoords="offset points", xytext=(4, 4), fontsize=9)
            ax.axhline(0.0, color="gray", lw=1)
            ax.axvline(0.9 * sds_fid, color="gray", ls="--", lw=1, label="0.9 x SDS-only fidelity")
            ax.axvline(sds_fid, color="black", ls=":", lw=1, label="SDS-only fidelity")
            ax.set_xlabel("fidelity PSNR against the true object (dB)", fontsize=11)
            ax.set_ylabel(f"{reward} gain over SDS-only", fontsize=11)
            ax.grid(alpha=0.3)
            if zoom:
                pad = 0.1 * (max(ys) - min(ys) or 1e-3)
                ax.set_ylim(min(ys) - pad, max(ys) + pad)
                ax.set_xlim(left=near)
                ax.set_title(f"zoom: fidelity >= 0.85 x SDS-only ({near:.1f} dB)", fontsize=12)
            else:
                ax.set_title("every strength", fontsize=12)
                ax.legend(fontsize=9, loc="best")
        fig.suptitle(
            f"toy Pareto, {reward}: mean ± SE over seed x prompt pairs; point labels: strength "
            "(grad_ratio, or s of the lambda mix)",
            fontsize=12,
        )
        fig.tight_layout()
        fig.savefig(out / f"pareto-{reward}.png")
        plt.close(fig)
        lines.append(f"\nfigure: {out / f'pareto-{reward}.png'}")

        summary[reward] = {label: best_point(pts, sds_fid) for label, pts in points.items()}
        summary[reward]["_points"] = points
        lines += [
            f"\n### {reward}: best gain per objective at fidelity >= 0.9 x SDS-only ({0.9 * sds_fid:.2f} dB)\n",
            "| objective | strength | reward gain (mean ± SE) | gain / SE | fidelity PSNR (dB) | runs |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, best in summary[reward].items():
            if label.startswith("_"):
                continue
            if best is None:
                lines.append(f"| {label} | - | no strength keeps the fidelity | - | - | - |")
                continue
            s, g, g_se, f, f_se, cell = best
            t = g / g_se if g_se and g_se > 0 else float("nan")
            lines.append(f"| {label} | {s:g} | {g:+.4f} ± {g_se:.4f} | {t:.1f} | {f:.2f} ± {f_se:.2f} | {len(cell)} |")

    x = z = float("nan")
    b = summary.get("brightness", {})
    backprop = b.get("reward-backprop")
    if backprop is not None and backprop[1] > 0 and PG in b:
        # no pg strength keeping the fidelity counts as no gain
        x = (b[PG][1] if b[PG] is not None else 0.0) / backprop[1]
    j = summary.get("jpeg", {})
    if j.get(PG):
        s = j[PG][0]
        pg = {(r["seed"], r["prompt"]): r["reward_value"] for r in j[PG][5]}
        ctrl = [p for p in j["_points"].get(CONTROL, []) if p[0] == s]
        if ctrl:
            diffs = [
                pg[(r["seed"], r["prompt"])] - r["reward_value"] for r in ctrl[0][5] if (r["seed"], r["prompt"]) in pg
            ]
            m, se = mean_se(diffs)
            z = m / se if se and se > 0 else float("nan")
    lines.append("")
    lines.append(f"pareto brightness: pg gain / backprop gain at fidelity >= 0.9 x sds: {x:.3f}")
    lines.append(f"pareto jpeg: pg gain over render control: {z:.2f} standard errors")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help=f"reduced runs ({QUICK_STEPS} steps, 24 px; see the docstring)"
    )
    ap.add_argument(
        "--strengths",
        type=float,
        nargs="+",
        default=None,
        help=f"default {FULL_STRENGTHS}; {QUICK_STRENGTHS} with --quick",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--other-seeds",
        type=int,
        default=None,
        help=f"seeds for objectives outside {CORE} (default: --seeds; 1 with --quick)",
    )
    ap.add_argument("--only", nargs="+", default=None, help="run only these labels (plus sds)")
    ap.add_argument("--rewards", nargs="+", default=None, choices=list(REWARDS), help="run only these rewards")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "toy-pareto"))
    ap.add_argument("--steps", type=int, default=None, help="override trainer.max_steps (smoke runs)")
    args = ap.parse_args(argv)
    if args.quick and args.other_seeds is None:
        args.other_seeds = 1
    if args.strengths is None:
        args.strengths = QUICK_STRENGTHS if args.quick else FULL_STRENGTHS
    out = Path(args.out) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "runs.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[r["key"]] = r
    every = [
        j
        for j in jobs(args)
        if (args.only is None or j["label"] in ("sds", *args.only))
        and (args.rewards is None or set(j["rewards"]) & set(args.rewards))
    ]
    every.sort(key=lambda j: j["label"] not in CORE)  # the summary lines' runs first
    todo = [j for j in every if not all(k in done for k in job_keys(j))]
    t0 = time.time()
    loads = []
    print(f"toy_pareto: {len(todo)} runs to do, {len(every) - len(todo)} cached, {args.workers} worker(s)", flush=True)
    if todo:
        ctx = mp.get_context("spawn")
        q_in, q_out = ctx.Queue(), ctx.Queue()
        extra = [] if args.steps is None else [f"trainer.max_steps={args.steps}"]
        procs = [ctx.Process(target=_worker, args=(q_in, q_out, args.quick, extra)) for _ in range(args.workers)]
        for p in procs:
            p.start()
        for j in todo:
            q_in.put(j)
        for _ in procs:
            q_in.put(None)
        with open(cache, "a") as f:
            for i in range(len(todo)):
                rows = q_out.get()
                if hasattr(os, "getloadavg"):
                    loads.append(os.getloadavg()[0])
                for r in rows:
                    if "error" in r:
                        print(f"  run {r['key']} failed: {r['error']}", flush=True)
                        continue
                    f.write(json.dumps(r) + "\n")
                    f.flush()
                    done[r["key"]] = r
                    print(
                        f"  [{i + 1}/{len(todo)}] {r['key']}: reward {r['reward_value']:.4f}, psnr {r['psnr']:.2f}",
                        flush=True,
                    )
        for p in procs:
            p.join()
    wanted = {k for j in every for k in job_keys(j)}
    results = [r for k, r in done.items() if k in wanted]
    wall = time.time() - t0
    cpu = sum(r.get("cpu_s", 0.0) for r in results)
    cores = max(1, min(args.workers, os.cpu_count() or 1))
    load = statistics.fmean(loads) if loads else (os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    lines = [
        f"# Toy Pareto ({'quick' if args.quick else 'full'}; strengths {args.strengths}; {args.seeds} seeds "
        f"({args.other_seeds or args.seeds} for objectives outside {', '.join(CORE)}); prompts {list(PROMPTS)}; "
        f"{len(every)} training runs, {len(results)} scored rows)",
        "",
        f"Sweep wall time {wall:.0f} s this invocation ({len(todo)} runs; mean 1-min load average {load:.1f} on "
        f"{os.cpu_count()} cores); CPU time of all {len(every)} runs {cpu:.0f} s, i.e. about "
        f"{cpu / cores:.0f} s of wall time with {cores} single-thread workers on an idle machine.",
    ]
    lines += summarise(results, out)
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
