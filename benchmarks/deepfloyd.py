"""deep-floyd-guidance on the tiny offline IF pipeline: one SDS call (resize, UNet with CFG,
SDS target) and its backward to the render, per batch size.

    OMP_NUM_THREADS=1 python benchmarks/deepfloyd.py [--res 64] [--batch 1 4] [--repeats 5] [--threads 1]

Prints a Markdown table (median over ``--repeats`` calls after one warm-up call), wall and
process-CPU milliseconds (CPU time is less affected by other processes on the machine).
The tiny UNet's native size is 32 px; IF-I-XL's is 64 px (renders are resized to it).
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, default=64, help="render size (pixels)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from ddpo3d.lite.models.guidance.deep_floyd_guidance import DeepFloydGuidance
    from ddpo3d.lite.models.prompt_processors.deepfloyd_prompt_processor import DeepFloydPromptProcessor
    from ddpo3d.testing.tiny_if import build_tiny_if_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DDPO3D_TEXT_EMBEDDING_CACHE"] = os.path.join(tmp, "emb")
        path = build_tiny_if_pipeline(os.path.join(tmp, "tiny_if"))
        t0 = time.perf_counter()
        prompt_utils = DeepFloydPromptProcessor(
            {"prompt": "a hamburger", "pretrained_model_name_or_path": path, "spawn": False}
        )()
        encode_ms = (time.perf_counter() - t0) * 1e3
        guidance = DeepFloydGuidance({"pretrained_model_name_or_path": path})
        rows = []
        for b in args.batch:
            cams = dict(
                elevation=torch.full((b,), 20.0),
                azimuth=torch.linspace(-180, 180, b),
                camera_distances=torch.full((b,), 2.0),
            )
            fwd, bwd, fwd_cpu, bwd_cpu = [], [], [], []
            for i in range(args.repeats + 1):
                rgb = torch.rand(b, args.res, args.res, 3, requires_grad=True)
                w, c = time.perf_counter(), time.process_time()
                out = guidance(rgb, prompt_utils, **cams)
                w1, c1 = time.perf_counter(), time.process_time()
                out["loss_sds"].backward()
                w2, c2 = time.perf_counter(), time.process_time()
                if i > 0:
                    fwd.append(w1 - w), bwd.append(w2 - w1), fwd_cpu.append(c1 - c), bwd_cpu.append(c2 - c1)
            rows.append(
                (
                    b,
                    statistics.median(fwd),
                    statistics.median(bwd),
                    statistics.median(fwd_cpu),
                    statistics.median(bwd_cpu),
                )
            )

    print(
        f"deep-floyd-guidance, tiny IF (UNet {guidance.resolution} px), renders {args.res}², "
        f"{args.threads} thread(s); prompt processor (6 prompts, T5 encode + cache): {encode_ms:.0f} ms\n"
    )
    print("| batch | SDS call (ms) | backward to rgb (ms) | SDS call CPU (ms) | backward CPU (ms) |")
    print("|---:|---:|---:|---:|---:|")
    for b, f, bw, fc, bc in rows:
        print(f"| {b} | {f * 1e3:.1f} | {bw * 1e3:.1f} | {fc * 1e3:.1f} | {bc * 1e3:.1f} |")


if __name__ == "__main__":
    main()
