"""Per-step signal of the DDPO3D policy gradient on the toy world, by reward and estimator variant.

At an SDS-converged render (the toy object itself, two cameras, 24 px, the toy prior of
``configs/toy/ddpo-*.yaml``), ``M`` independent DDPO3D estimates of the reward's ascent
direction at the render are drawn (fresh t, ε and action noise each, plain ``lambda`` mode). For
estimates g_i = μ + n_i with independent zero-mean noise, E[cos(g_i, g_j)] ≈ |μ|² / E|g|²: the mean
pairwise cosine is the fraction of each step's gradient energy that is signal (the rest is noise
that only averages out over steps). ``snr`` is sqrt(signal / noise) per step.

For a reward linear in the image (brightness), the zeroth-order estimate has signal fraction about
K / D (D = 3·24² pixels); for JPEG size, most of the reward's spread over the K draws comes from the
texture of the injected noise, not from its projection on a smooth direction, which lowers the
fraction further; only K raises it (see the table).

Also printed: the change of the reward when the render is moved along the mean of the ``M``
estimates (a step whose largest pixel change is ``px``/255) and along random directions of the
same norm: how much better than chance the estimated direction is for the real reward.

Usage::

    python benchmarks/toy_pg_snr.py               # both rewards, every variant (~1-2 min on 2 cores)
    python benchmarks/toy_pg_snr.py --reward jpeg-compressibility --variants base K128
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: estimator variants: overrides of the DDPO3D block (and ``max_step_percent`` of the SDS t range)
VARIANTS = {
    "base": {},
    "K64": {"num_samples": 64},
    "K128": {"num_samples": 128},
    "K256": {"num_samples": 256},
    "antithetic": {"antithetic": True},
    "normalize_std": {"normalize_std": True},
    "batch advantage": {"advantage": "batch"},
    "eta 0.1": {"eta": 0.1},
    "eta 0.3": {"eta": 0.3},
    "eta 0.1 antithetic": {"eta": 0.1, "antithetic": True},
    "step_size 5": {"step_size": 5},
    "step_size 100": {"step_size": 100},
    "t <= 0.1 T": {"max_step_percent": 0.1},
}
BASE_BLOCK = {"type": "ddpo3d", "target": "x0_pred", "num_samples": 32, "eta": 1.0, "advantage": "group"}


def camera_rays(size: int, azimuth_deg: float, elevation_deg: float = 15.0, distance: float = 2.5, fovy: float = 40.0):
    """Rays ``([1, H, W, 3], [1, H, W, 3])`` of a camera looking at the origin (the toy eval camera)."""
    import torch

    from ddpo3d.lite.utils.ops import get_ray_directions, get_rays

    focal = 0.5 * size / math.tan(math.radians(fovy) / 2)
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    pos = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]) * distance
    fwd = -pos / pos.norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, fwd)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, pos
    o, d = get_rays(get_ray_directions(size, size, focal), c2w, keepdim=True)
    return o[None], d[None]


def measure(reward_type: str, name: str, over: dict, draws: int, size: int = 24, prompt: str = "a red sphere") -> dict:
    """Mean pairwise cosine of ``draws`` independent estimates and the probe gains (see the module docstring)."""
    import torch

    from ddpo3d.diffusion.analytic import AnalyticGaussianPrior
    from ddpo3d.objectives.combined import RewardGuidedSDS
    from ddpo3d.rewards import build_reward
    from ddpo3d.toy import parse_toy_prompt, render_toy_object

    predictor = AnalyticGaussianPrior(sigma_data=0.05)
    reward = build_reward({"type": reward_type})
    rays = [camera_rays(size, a) for a in (0.0, 90.0)]
    rays_o, rays_d = torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])
    ref, _ = render_toy_object(parse_toy_prompt(prompt), rays_o, rays_d, (1.0, 1.0, 1.0), 96)
    views = ref.shape[0]
    cond = predictor.encode(ref)[:, None]
    block = {**BASE_BLOCK, "strength_mode": "lambda", **{k: v for k, v in over.items() if k != "max_step_percent"}}
    guidance = RewardGuidedSDS(
        {
            "guidance_scale": 0.0,
            "weighting_strategy": "sds",
            "min_step_percent": 0.02,
            "max_step_percent": over.get("max_step_percent", 0.5),
            "objective": block,
        }
    )
    t0 = time.time()
    estimates = []
    for m in range(draws):
        gen = torch.Generator().manual_seed(1000 + m)
        img = ref.clone().requires_grad_(True)
        out = guidance(img, predictor, cond, None, [prompt] * views, reward, x0=predictor.encode(img), generator=gen)
        (grad,) = torch.autograd.grad(out["loss_ddpo"], img)
        estimates.append(-grad)  # ascent direction of the reward
    est = torch.stack(estimates)
    cosines = []
    for b in range(views):
        v = est[:, b].flatten(1)
        v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-30)
        c = v @ v.T
        cosines.append(float((c.sum() - c.diag().sum()) / (draws * (draws - 1))))
    frac = statistics.fmean(cosines)
    mean_dir = est.mean(0)
    r0 = reward(ref, [prompt] * views)
    probes = {}
    for px in (2, 8):
        step = mean_dir / mean_dir.flatten(1).abs().amax(1).clamp(min=1e-30).view(-1, 1, 1, 1) * (px / 255.0)
        along = float((reward((ref + step).clamp(0, 1), [prompt] * views) - r0).mean())
        rand = []
        for s in range(8):
            z = torch.randn(ref.shape, generator=torch.Generator().manual_seed(s))
            z = z * (step.flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
            rand.append(float((reward((ref + z).clamp(0, 1), [prompt] * views) - r0).mean()))
        probes[px] = (along, statistics.fmean(rand))
    return {
        "reward": reward_type,
        "variant": name,
        "K": block["num_samples"],
        "signal_fraction": frac,
        "snr": math.sqrt(max(frac, 0.0) / max(1e-12, 1.0 - frac)),
        "probes": probes,
        "seconds": time.time() - t0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", nargs="+", default=["brightness", "jpeg-compressibility"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--draws", type=int, default=160, help="independent estimates per variant")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(
        "| reward | variant | K | signal fraction (mean pairwise cos) | per-step SNR | probe 2/255: along / random "
        "| probe 8/255: along / random |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for reward_type in args.reward:
        for name in args.variants:
            r = measure(reward_type, name, VARIANTS[name], args.draws)
            p2, p8 = r["probes"][2], r["probes"][8]
            print(
                f"| {reward_type} | {name} | {r['K']} | {r['signal_fraction']:.4f} | {r['snr']:.3f} "
                f"| {p2[0]:+.4f} / {p2[1]:+.4f} | {p8[0]:+.4f} / {p8[1]:+.4f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
