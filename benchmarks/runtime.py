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

    OMP_NUM_THREADS=1 python benchmarks/runtime.py [--res 64] [--samples 64] [--steps 5] [--threads 1]

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
    def __init__(self) -> None:
        self.times: dict = {}

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)


def _timed_forward(clock: _Clock, key: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        clock.add(key, time.perf_counter() - start)
        return out

    return wrapper


def _time_guidance_calls(clock: _Clock, obj) -> None:
    """Make ``obj(...)`` (looked up on its class) record its duration under "guidance"."""
    cls = type(obj)
    call = cls.__call__

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = call(self, *args, **kwargs)
        clock.add("guidance", time.perf_counter() - start)
        return out

    obj.__class__ = type(f"Timed{cls.__name__}", (cls,), {"__call__": __call__})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, default=64, help="training resolution (pixels)")
    parser.add_argument("--samples", type=int, default=64, help="system.renderer.num_samples_per_ray")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
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
        system.do_update_step(0, i)
        dm.train_dataset.update_step(0, i)
        batch = dm.train_dataset.collate({})
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        n_render, n_guid = len(clock.times.get("render", [])), len(clock.times.get("guidance", []))
        loss = system.training_step(batch, i)["loss"]
        total_fwd = time.perf_counter() - start
        t0 = time.perf_counter()
        loss.backward()
        t1 = time.perf_counter()
        optimizer.step()
        t2 = time.perf_counter()
        render = sum(clock.times["render"][n_render:])
        guid = sum(clock.times["guidance"][n_guid:])
        if record:
            clock.add("losses", total_fwd - render - guid)
            clock.add("backward", t1 - t0)
            clock.add("optimizer", t2 - t1)
            clock.add("total", total_fwd + (t2 - t0))
        else:  # drop the warm-up's forward timings
            clock.times["render"] = clock.times["render"][:n_render]
            clock.times["guidance"] = clock.times["guidance"][:n_guid]
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {i}: {loss.item()}")

    step(0, record=False)
    for i in range(1, args.steps + 1):
        step(i, record=True)

    total = statistics.median(clock.times["total"])
    print(f"One dreamfusion-sd training step on the built-in runtime (CPU, {args.threads} thread(s), "
          f"{args.res}x{args.res}, batch 1, {args.samples} samples/ray, tiny offline SD pipeline; "
          f"median of {args.steps} steps)\n")
    print("| stage | median ms | share of step |")
    print("|---|---:|---:|")
    for key in ("render", "guidance", "losses", "backward", "optimizer"):
        t = statistics.median(clock.times[key])
        print(f"| {key} | {t * 1000:.1f} | {t / total * 100:.0f}% |")
    print(f"| **total** | **{total * 1000:.1f}** | 100% |")


if __name__ == "__main__":
    main()
