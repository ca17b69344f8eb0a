"""Time per call of each reward (forward, forward+backward) and print a Markdown table.

CLIP-based rewards use the tiny random CLIP (:mod:`ddpo3d.testing.tiny_clip`), so this
measures the library overhead and preprocessing, not ViT-L/14. Usage::

    python benchmarks/rewards.py [--batch 4] [--size 64] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (text-embedding cache, allocator)
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ddpo3d.rewards import build_reward
    from ddpo3d.testing.tiny_clip import tiny_clip_options, write_aesthetic_head

    folder = tempfile.TemporaryDirectory(prefix="ddpo3d-bench-")
    head = write_aesthetic_head(os.path.join(folder.name, "head.pth"))
    tiny = tiny_clip_options()
    configs = {
        "jpeg-compressibility": {"type": "jpeg-compressibility"},
        "jpeg-incompressibility": {"type": "jpeg-incompressibility"},
        "clip-score (tiny CLIP)": {"type": "clip-score", **tiny},
        "aesthetic (tiny CLIP)": {"type": "aesthetic", "head_path": head, **tiny},
        "clip-score + aesthetic": [
            {"type": "clip-score", **tiny},
            {"type": "aesthetic", "head_path": head, **tiny},
        ],
    }
    images = torch.rand(args.batch, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    prompts = [f"prompt {i}" for i in range(args.batch)]
    rows = []
    for label, cfg in configs.items():
        reward = build_reward(cfg)

        def fwd(reward=reward):
            with torch.no_grad():
                reward(images, prompts)

        fwd_ms = _time(fwd, args.repeats)
        bwd_ms = None
        if reward.differentiable:

            def fwd_bwd(reward=reward):
                x = images.clone().requires_grad_(True)
                reward(x, prompts).sum().backward()

            bwd_ms = _time(fwd_bwd, args.repeats)
        rows.append((label, fwd_ms, bwd_ms))

    print(f"| reward (B={args.batch}, {args.size}², {args.threads} thread) | forward ms | forward+backward ms |")
    print("|---|---:|---:|")
    for label, f, b in rows:
        print(f"| {label} | {f:.1f} | {'n/a (not differentiable)' if b is None else f'{b:.1f}'} |")
    folder.cleanup()
    print(f"\nMedian of {args.repeats} calls after one warm-up; torch {torch.__version__}, CPU.")


if __name__ == "__main__":
    main()
