"""Render-free evaluation of finished runs.

threestudio (and the built-in runtime) save the test turntable as
``<trial_dir>/save/it<step>-test/<index>.png`` and the merged config as
``<trial_dir>/configs/parsed.yaml``. We score every view of the latest test iteration with
reward models (``ddpo3d.rewards``) and report per-run mean and standard deviation.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import torch

from ddpo3d.utils.typing import Dict, Float, List, Optional, Sequence, Tensor

#: Short metric names accepted by ``--metrics`` and the reward blocks they build.
METRIC_BLOCKS: Dict[str, dict] = {
    "clip": {"type": "clip-score"},
    "clip-score": {"type": "clip-score"},
    "aesthetic": {"type": "aesthetic"},
    "jpeg": {"type": "jpeg-compressibility"},
    "jpeg-compressibility": {"type": "jpeg-compressibility"},
    "jpeg-incompressibility": {"type": "jpeg-incompressibility"},
    "brightness": {"type": "brightness"},
}

_TEST_DIR = re.compile(r"^it(\d+)-test(-rgb)?$")


def find_views(path: "str | Path") -> List[Path]:
    """The PNG views to score for a run directory or a folder of images.

    Args:
        path: a trial directory (its ``save/it<step>-test-rgb`` with the largest step is used,
            else ``save/it<step>-test``), a ``save`` directory, or any folder of PNG files.

    Returns:
        Sorted list of PNG paths (numeric order of their stems where possible).

    Raises:
        FileNotFoundError: when the path does not exist or holds no views.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Run or image folder not found: {path}")
    folder = path
    for candidate in (path / "save", path):
        tests = [d for d in candidate.glob("it*-test*") if d.is_dir() and _TEST_DIR.match(d.name)]
        if tests:
            # latest step first; at equal steps the plain RGB views beat the grids
            folder = max(tests, key=lambda d: (int(_TEST_DIR.match(d.name).group(1)), d.name.endswith("-rgb")))
            break
    views = sorted(folder.glob("*.png"), key=lambda p: (int(p.stem) if p.stem.isdigit() else 1 << 30, p.name))
    if not views:
        raise FileNotFoundError(
            f"No views to score under {path}: expected save/it<step>-test/*.png from a test run "
            f"(python launch.py --config <run>/configs/parsed.yaml --test resume=<ckpt>) or a folder of PNGs"
        )
    return views


def load_views(paths: Sequence[Path], size: Optional[int] = None) -> Float[Tensor, "N H W 3"]:
    """Read PNG views into a float tensor in [0, 1] (alpha dropped, optionally resized).

    threestudio's test images are grids of square panels side by side (render, normal,
    opacity): when a view is an integer number (>= 2) of squares wide, its first panel is used.
    """
    import imageio.v3 as iio

    images = []
    for p in paths:
        arr = np.asarray(iio.imread(p))
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        h, w = arr.shape[:2]
        if w >= 2 * h and w % h == 0:
            arr = arr[:, :h]
        images.append(torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0))
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1 and size is None:
        size = max(s[0] for s in shapes)
    out = []
    for im in images:
        if size is not None and im.shape[0] != size:
            im = torch.nn.functional.interpolate(
                im.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False
            )[0].permute(1, 2, 0)
        out.append(im)
    return torch.stack(out)


def read_run_prompt(run: "str | Path") -> Optional[str]:
    """The prompt recorded in a run's ``configs/parsed.yaml``, if any."""
    from omegaconf import OmegaConf

    for cfg_path in (Path(run) / "configs" / "parsed.yaml", Path(run).parent.parent / "configs" / "parsed.yaml"):
        if cfg_path.is_file():
            cfg = OmegaConf.load(cfg_path)
            prompt = OmegaConf.select(cfg, "system.prompt_processor.prompt", default=None)
            if prompt is not None:
                return str(prompt)
    return None


def score_runs(
    runs: Sequence["str | Path"],
    rewards: Dict[str, "torch.nn.Module"],
    prompt: Optional[str] = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> List[Dict[str, object]]:
    """Score each run's views with each reward.

    Args:
        runs: trial directories or image folders.
        rewards: metric name -> reward module (``ddpo3d.rewards`` contract).
        prompt: the prompt to score against; ``None`` reads it from each run's config.
        batch_size: views per reward call.
        device: torch device for the rewards.

    Returns:
        One row per run: ``run``, ``prompt``, ``step`` (the test step the views come from;
        ``None`` for a plain image folder), ``views``, ``views_from`` (their folder) and
        ``<metric>_mean`` / ``<metric>_std``.

    Raises:
        ValueError: when a run has no recorded prompt and none was given.
    """
    rows = []
    for run in runs:
        views = find_views(run)
        run_prompt = prompt or read_run_prompt(run)
        if run_prompt is None:
            raise ValueError(f"No prompt for {run}: it has no configs/parsed.yaml; pass --prompt")
        images = load_views(views)
        folder = views[0].parent
        match = _TEST_DIR.match(folder.name)
        row: Dict[str, object] = {
            "run": str(run),
            "prompt": run_prompt,
            "step": int(match.group(1)) if match else None,
            "views": len(views),
            "views_from": str(folder),
        }
        for name, reward in rewards.items():
            scores = []
            with torch.no_grad():
                for i in range(0, len(images), batch_size):
                    chunk = images[i : i + batch_size].to(device)
                    scores.append(reward(chunk, [run_prompt] * len(chunk)).float().cpu())
            s = torch.cat(scores)
            row[f"{name}_mean"] = float(s.mean())
            row[f"{name}_std"] = float(s.std(unbiased=False))
        rows.append(row)
    return rows


def to_markdown(rows: List[Dict[str, object]]) -> str:
    """A Markdown table of ``score_runs`` rows (metrics as mean ± std)."""
    if not rows:
        return "(no runs)"
    metrics = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
    head = "| run | prompt | test step | views | " + " | ".join(metrics) + " |"
    sep = "|---|---|---:|---:|" + "---:|" * len(metrics)
    lines = [head, sep]
    for r in rows:
        cells = [f"{r[m + '_mean']:.4f} ± {r[m + '_std']:.4f}" for m in metrics]
        step = "-" if r.get("step") is None else r["step"]
        lines.append(f"| {r['run']} | {r['prompt']} | {step} | {r['views']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: List[Dict[str, object]], path: "str | Path") -> None:
    """Write ``score_runs`` rows to CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
