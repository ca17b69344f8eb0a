"""One dreamfusion-sd training step on the built-in runtime, split into stages.

Builds the system from ``configs/dreamfusion-sd.yaml`` (implicit-volume hash grid,
diffuse material, neural env-map background, nerf-volume-renderer, stable-diffusion guidance
and prompt processor) with the SD weights replaced by the tiny offline pipeline of
``ddpo3d.testing.tiny_sd``, renders ``--res``² training views and times:

* render: ``system(batch)`` (the renderer forward);
* guidance: prompt processor + guidance forward on ``comp_rgb`` (VAE encode, UNet with CFG, SDS);
* losses: the system's weighting and regularisers (the rest of ``training_step``);
* backward: ``loss.backward()`` through guidance, renderer and geometry;
* optimizer: ``Adam.step()``.

    OMP_NUM_THREADS=1 python benchmarks/runtime.py [--res 64] [--samples 64] [--steps 5] [--threads 1] [--at-step 0]

Prints a Markdown table (median over ``--steps`` steps after one warm-up step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("DDPO3D_HOST", "lite")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class _Clock:
    """Per-stage wall-clock and process-CPU seconds (CPU time is less affected by other
    processes sharing the machine)."""

    def __init__(self) -> None:
        self.times: dict = {}
        self.cpu: dict = {}

    def add(self, key: str, seconds: float, cpu_seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)
        self.cpu.setdefault(key, []).append(cpu_seconds)


def _now():
    return time.perf_counter(), time.process_time()


def _timed_forward(clock: _Clock, key: str, fn):
    def wrapper(*args, **kwargs):
        w, c = _now()
        out = fn(*args, **kwargs)
        clock.add(key, time.perf_counter() - w, time.process_time() - c)
        return out

    return wrapper


def _time_guidance_calls(clock: _Clock, obj) -> None:
    """Make ``obj(...)`` (looked up on its class) record its duration under "guidance"."""
    cls = type(obj)
    call = cls.__call__

    def __call__(self, *args, **kwargs):
        w, c = _now()
        out = call(self, *args, **kwargs)
        clock.add("guidance", time.perf_counter() - w, time.process_time() - c)
        return out

    obj.__class__ = type(f"Timed{cls.__name__}", (cls,), {"__call__": __call__})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, default=64, help="training resolution (pixels)")
    parser.add_argument("--samples", type=int, default=64, help="system.renderer.num_samples_per_ray")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--at-step", type=int, default=0, help="global step the schedules see (e.g. 6000: every hash-grid level active)"
    )
    parser.add_argument("--pipeline", default=None, help="SD pipeline path (default: build the tiny one in a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from ddpo3d.lite import find
    from ddpo3d.lite.experiment import load_config
    from ddpo3d.lite.utils.misc import set_device

    set_device("cpu")
    tmp = tempfile.mkdtemp(prefix="ddpo3d-bench-")
    pipeline = args.pipeline
    if pipeline is None:
        from ddpo3d.testing.tiny_sd import build_tiny_sd_pipeline

        pipeline = build_tiny_sd_pipeline(os.path.join(tmp, "tiny-sd"))
    cfg = load_config(
        os.path.join(ROOT, "configs", "dreamfusion-sd.yaml"),
        cli_args=[
            "system.prompt_processor.prompt=a hamburger",
            f"system.prompt_processor.pretrained_model_name_or_path={pipeline}",
            f"system.guidance.pretrained_model_name_or_path={pipeline}",
            f"data.width={args.res}",
            f"data.height={args.res}",
            f"system.renderer.num_samples_per_ray={args.samples}",
            f"exp_root_dir={tmp}",
        ],
    )
    torch.manual_seed(0)
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = find(cfg.system_type)(cfg.system)
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))
    system.on_fit_start()  # builds prompt processor and guidance, as in training
    optimizer = system.configure_optimizers()["optimizer"]

    clock = _Clock()
    system.renderer.forward = _timed_forward(clock, "render", system.renderer.forward)
    _time_guidance_calls(clock, system.guidance)

    def step(i: int, record: bool) -> None:
        i = i + args.at_step
        system.do_update_step(0, i)
        dm.train_dataset.update_step(0, i)
        batch = dm.train_dataset.collate({})
        optimizer.zero_grad(set_to_none=True)
        n_render, n_guid = len(clock.times.get("render", [])), len(clock.times.get("guidance", []))
        t0 = _now()
        loss = system.training_step(batch, i)["loss"]
        t1 = _now()
        loss.backward()
        t2 = _now()
        optimizer.step()
        t3 = _now()
        if record:
            for j, store in ((0, clock.times), (1, clock.cpu)):
                inner = sum(store["render"][n_render:]) + sum(store["guidance"][n_guid:])
                store.setdefault("losses", []).append(t1[j] - t0[j] - inner)
                store.setdefault("backward", []).append(t2[j] - t1[j])
                store.setdefault("optimizer", []).append(t3[j] - t2[j])
                store.setdefault("total", []).append(t3[j] - t0[j])
        else:  # drop the warm-up's forward timings
            for store in (clock.times, clock.cpu):
                store["render"] = store["render"][:n_render]
                store["guidance"] = store["guidance"][:n_guid]
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {i}: {loss.item()}")

    step(0, record=False)
    for i in range(1, args.steps + 1):
        step(i, record=True)

    total = statistics.median(clock.times["total"])
    total_cpu = statistics.median(clock.cpu["total"])
    print(
        f"One dreamfusion-sd training step on the built-in runtime (CPU, {args.threads} thread(s), "
        f"{args.res}x{args.res}, batch 1, {args.samples} samples/ray, tiny offline SD pipeline; "
        f"schedules at step {args.at_step}; median of {args.steps} steps)\n"
    )
    print("| stage | wall ms (median) | process CPU ms (median) | share of CPU |")
    print("|---|---:|---:|---:|")
    for key in ("render", "guidance", "losses", "backward", "optimizer"):
        t, c = statistics.median(clock.times[key]), statistics.median(clock.cpu[key])
        print(f"| {key} | {t * 1000:.1f} | {c * 1000:.1f} | {c / total_cpu * 100:.0f}% |")
    print(f"| **total** | **{total * 1000:.1f}** | **{total_cpu * 1000:.1f}** | 100% |")


if __name__ == "__main__":
    main()
