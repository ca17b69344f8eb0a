"""Benchmark: Gaussian rasterisation forward and forward+backward.

CPU: the tiled pure-torch rasteriser (tile sizes 8 and 16) and the dense reference
(every Gaussian against every pixel; skipped where ``H * W * N`` is too large to be
sensible). CUDA (when present): the same plus gsplat. The scene is the initial state of
``ddpo3d-gaussian-splat`` in a DreamGaussian-like setup: N points uniform in a ball of
radius 0.5, 3-NN initial scales, random opacities in [0.05, 0.95], SH degree 0, one
camera at distance 2.5 with fovy 49 degrees.

    python benchmarks/gaussians.py [--reps 5] [--threads 1] [--sizes 1000,5000,20000] [--res 64,128]

Prints a Markdown table: median and minimum wall time over ``--reps`` runs after one
warm-up (on a shared machine the minimum is the less contended figure).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddpo3d.gaussians import (  # noqa: E402
    gsplat_available,
    intrinsics_from_fovy,
    knn_mean_sq_dist,
    opengl_c2w_to_viewmats,
    rasterize,
    rasterize_reference,
    rasterize_torch,
)

DENSE_LIMIT = 21_000_000  # H * W * N above which the dense reference is skipped


def make_scene(n: int, res: int, device: str):
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.5 * torch.rand(n, 1, generator=g).pow(1 / 3)
    scales = knn_mean_sq_dist(means).clamp_min(1e-7).sqrt()[:, None].repeat(1, 3)
    scales = scales * torch.exp(0.3 * torch.randn(n, 3, generator=g))  # mildly anisotropic
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 1, 3, generator=g) - 0.5  # SH degree 0 coefficients
    c2w = torch.eye(4)[None].clone()
    c2w[0, :3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # columns right, up, -lookat: +y view, z up
    c2w[0, :3, 3] = torch.tensor([0.0, -2.5, 0.0])
    view = opengl_c2w_to_viewmats(c2w)
    Ks = intrinsics_from_fovy(torch.tensor([math.radians(49.0)]), res, res)
    tensors = [t.to(device) for t in (means, quats, scales, opac, colors, view, Ks)]
    return tensors


def timed(fn, reps: int, device: str) -> float:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def bench(n: int, res: int, method: str, reps: int, device: str):
    means, quats, scales, opac, colors, view, Ks = make_scene(n, res, device)
    params = [means, quats, scales, opac, colors]
    kw = dict(sh_degree=0)
    if method == "dense":
        run = lambda: rasterize_reference(*params, view, Ks, res, res, **kw)  # noqa: E731
    elif method.startswith("torch"):
        ts = int(method.split("-")[1])
        run = lambda: rasterize_torch(*params, view, Ks, res, res, tile_size=ts, **kw)  # noqa: E731
    else:
        ts = int(method.split("-")[1])
        run = lambda: rasterize(*params, view, Ks, res, res, backend="gsplat", tile_size=ts, **kw)  # noqa: E731

    with torch.no_grad():
        t_fwd = timed(run, reps, device)
    for p in params:
        p.requires_grad_(True)

    def fwd_bwd():
        rgb, alpha, _ = run()
        grads = torch.autograd.grad(rgb.sum() + alpha.sum(), params)
        return grads

    t_fb = timed(fwd_bwd, reps, device)
    rgb, alpha, meta = run()
    return t_fwd, t_fb, meta.get("n_isects"), float(alpha.detach().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--res", default="64,128")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    resolutions = [int(r) for r in args.res.split(",")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} CPU thread(s), median of {args.reps}\n"
    )
    print(
        "| device | N | res | method | forward ms (median / min) | fwd+bwd ms (median / min) | tile-Gaussian pairs | mean alpha |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for device in devices:
        methods = ["torch-8", "torch-16", "dense"]
        if device == "cuda" and gsplat_available():
            methods += ["gsplat-16"]
        for n in sizes:
            for res in resolutions:
                for m in methods:
                    if m == "dense" and res * res * n > DENSE_LIMIT:
                        print(f"| {device} | {n} | {res}² | dense | skipped (H·W·N > {DENSE_LIMIT:.1e}) | | | |")
                        continue
                    (f_med, f_min), (fb_med, fb_min), isects, a = bench(n, res, m, args.reps, device)
                    print(
                        f"| {device} | {n} | {res}² | {m} | {1e3 * f_med:.0f} / {1e3 * f_min:.0f} | "
                        f"{1e3 * fb_med:.0f} / {1e3 * fb_min:.0f} | "
                        f"{isects if isects is not None else '-'} | {a:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
