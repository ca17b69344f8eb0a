"""CPU demo of the reward library: score synthetic images and print a Markdown table.

``python -m ddpo3d.demo`` runs in seconds with no downloaded weights:

* JPEG (in)compressibility (DDPO's definition) on procedural images;
* clip-score and aesthetic on the *tiny random* CLIP of :mod:`ddpo3d.testing.tiny_clip`
  (with a random aesthetic head): their values only show that the pipeline runs and that
  gradients reach the pixels; real scores need the real weights (see README);
* a weighted sum of all four, reporting each term.

The interim main job of the README until the toy 3-D world lands.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch

from ddpo3d.utils.typing import Dict, Float, List, Tensor, Tuple


def synthetic_images(size: int = 64, seed: int = 0) -> Tuple[Float[Tensor, "B H W 3"], List[str], List[str]]:
    """Procedural test images with matching prompts.

    Args:
        size: image side in pixels.
        seed: seed of the noise image.

    Returns:
        ``(images [5, size, size, 3] in [0, 1], names, prompts)``.
    """
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    flat = torch.full((size, size, 3), 0.5)
    gradient = torch.stack([(xs + 1) / 2, (ys + 1) / 2, 0.5 * torch.ones_like(xs)], dim=-1)
    disk = torch.ones(size, size, 3)
    inside = (xs**2 + ys**2) < 0.45**2
    disk[inside] = torch.tensor([0.85, 0.1, 0.1])
    cells = max(size // 8, 1)
    checker = (((torch.arange(size) // cells)[:, None] + (torch.arange(size) // cells)[None, :]) % 2).float()
    checker = checker[..., None].expand(size, size, 3).contiguous()
    noise = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(seed))
    images = torch.stack([flat, gradient, disk, checker, noise]).clamp(0, 1)
    names = ["flat grey", "colour gradient", "red disk", "checkerboard", "uniform noise"]
    prompts = [
        "a plain grey wall",
        "a smooth colourful gradient",
        "a red ball on a white table",
        "a black and white chessboard",
        "television static",
    ]
    return images, names, prompts


def run(size: int = 64, seed: int = 0) -> str:
    """Build the rewards, score the images, return the Markdown report."""
    from ddpo3d.rewards import build_reward
    from ddpo3d.testing.tiny_clip import tiny_clip_options, write_aesthetic_head

    t0 = time.perf_counter()
    images, names, prompts = synthetic_images(size, seed)
    print(f"[demo] {len(names)} synthetic images, {size}x{size}", file=sys.stderr)
    tiny = tiny_clip_options(seed)
    with tempfile.TemporaryDirectory(prefix="ddpo3d-demo-") as folder:
        head = write_aesthetic_head(os.path.join(folder, "tiny-aesthetic-head.pth"), seed=seed)
        blocks = [
            {"type": "jpeg-compressibility", "weight": 0.1},
            {"type": "jpeg-incompressibility", "weight": 0.0},
            {"type": "clip-score", "weight": 1.0, **tiny},
            {"type": "aesthetic", "weight": 1.0, "head_path": head, **tiny},
        ]
        reward = build_reward(blocks)  # the head is loaded here; the file can go afterwards
    print(f"[demo] built {', '.join(reward.term_names)} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    x = images.clone().requires_grad_(True)
    t1 = time.perf_counter()
    out = reward.evaluate(x, prompts)
    # The mixed sum is not differentiable (JPEG terms), so its score is detached; the
    # differentiable weighted terms keep their graphs: backprop their sum to the pixels.
    diff_part = sum(out.terms[f"{r.name}_weighted"] for r in reward.rewards if r.differentiable)
    diff_part.sum().backward()
    elapsed = time.perf_counter() - t1
    grad_norm = x.grad.flatten(1).norm(dim=1)

    cols: Dict[str, Tensor] = {n: out.terms[n] for n in reward.term_names}
    header = ["image", "prompt"] + [f"{n}" for n in cols] + ["weighted sum", "‖∂(differentiable terms)/∂pixels‖"]
    lines = [
        "## ddpo3d reward demo",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    for i, name in enumerate(names):
        vals = [f"{cols[n][i].item():.4f}" for n in cols]
        lines.append(
            f"| {name} | {prompts[i]} | " + " | ".join(vals) + f" | {out.scores[i].item():.4f} | "
            f"{grad_norm[i].item():.3g} |"
        )
    weights = ", ".join(f"{n} × {w:g}" for n, w in zip(reward.term_names, reward.weights))
    lines += [
        "",
        f"Weighted sum = {weights}. JPEG sizes in kB (DDPO: quality 95, bytes/1000; "
        f"compressibility = −size). clip-score and aesthetic use a tiny *random* CLIP "
        f"({tiny['clip_model']}, seed {seed}) and a random aesthetic head: the numbers only "
        f"show the pipeline and its gradients; configure real weights for real scores.",
        f"Scoring + backward of {len(names)} images: {elapsed * 1000:.0f} ms on {torch.get_num_threads()} thread(s).",
    ]
    assert all(math.isfinite(v) for v in out.scores.tolist())
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m ddpo3d.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise image and tiny models")
    args = parser.parse_args(argv)
    print(run(args.size, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
