"""The comparison page of a suite: ``python -m ddpo3d.suite report DIR`` writes ``DIR/report/index.html``.

One row per prompt (per prompt × seed when the suite has several seeds), one column per config,
each cell the job's final turntable (the ``it<step>-test.mp4`` the protocol's render wrote, else the
training run's), its metrics and a link to its trial folder; above the grid the mean ± std table of
``gather`` with the best value per metric marked, below it the reward and fidelity curves of every
config (inline SVG drawn here from each trial's ``save/metrics.csv``) and a legend of the metrics'
reward models and the view protocol. For the toy world (``system.reference: toy``) the true object's
render, the second panel of the test grids, is an extra column.

Nothing is recomputed: values come from the jobs' ``metrics.json`` (what ``gather`` writes to
``results.csv``), curves from ``save/metrics.csv``, renders from ``save/``. The page is one HTML
file with its CSS, JavaScript (sorting, hiding configs; no framework, no network) and charts
inline. Media are linked relatively by default (``../jobs/<job>/.../it<step>-test.mp4``): the page
stays a few hundred kB for hundreds of cells and still works when the whole suite folder moves or
is copied, but not when ``report/`` is moved alone; ``copy_media=True`` copies the files into
``report/media/`` instead, so that ``report/`` can be sent on its own.

A plain list of trial folders (threestudio's ``outputs/<name>/<tag>``) works too: the config is the
run's ``name``, the prompt and seed come from ``configs/parsed.yaml``, the metrics are the scalars
the system logged on the test split.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from urllib.parse import quote

from ddpo3d.utils.typing import Any, Dict, List, Optional, Tuple

_MP4 = re.compile(r"^it(\d+)-test\.mp4$")
_GRID = re.compile(r"^it(\d+)-test$")

#: metric direction by name (system scalars); reward metrics of the protocol are always "higher"
_HIGHER = ("psnr", "ssim", "reward", "score", "clip", "aesthetic", "accuracy", "iou")
_LOWER = ("lpips", "loss", "time", "elapsed", "seconds", "fid", "error", "mse", "chamfer", "memory")

#: line colours of the configs (matplotlib's tab10, readable on white)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


class ReportError(ValueError):
    """A report input that cannot be used (the message names the folder and what is missing)."""


@dataclass
class Media:
    """A cell's turntable: a video or an image, shown cropped to one panel of the test grid."""

    kind: str  # "video" or "image"
    path: str  # absolute path of the file
    poster: Optional[str] = None  # first test grid: shown instead when the video cannot load or play
    panels: int = 1  # panels side by side in each frame (render | reference | normal | opacity)
    panel_px: int = 0  # width of one panel in pixels (0: unknown)
    note: Optional[str] = None  # why an image stands in for a video


@dataclass
class Cell:
    """One job: a config × prompt × seed."""

    config: str
    prompt: str
    seed: Optional[int]
    job_id: str
    state: str  # done / failed / running / pending / no render
    reason: Optional[str]  # why there is no media, or why the job is not done
    metrics: Dict[str, float] = field(default_factory=dict)
    media: Optional[Media] = None
    reference_panel: Optional[int] = None  # index of the true object's panel in the grid (toy world)
    trial: Optional[str] = None  # trial folder
    log: Optional[str] = None  # log of the failed attempt
    step: Optional[int] = None
    curves: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)  # "reward" / "fidelity"
    train_reward: Optional[str] = None  # the reward the config trains on (from parsed.yaml)
    objective: Optional[str] = None


@dataclass
class ReportData:
    """Everything the page shows, read from disk."""

    title: str
    cells: List[Cell]
    configs: List[str]
    metrics: List[str]  # column names, in results.csv order
    labels: Dict[str, str]  # metric -> header label (model, views, resolution)
    metric_info: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # model, views, resolution, source
    protocol: Optional[Dict[str, Any]] = None
    protocol_key: Optional[str] = None
    skipped: Dict[str, str] = field(default_factory=dict)
    source: str = ""  # the suite folder or "N trial folders"


# ---------------------------------------------------------------------------- reading


def metric_direction(name: str, reward_metric: bool = False) -> Optional[str]:
    """``"higher"`` / ``"lower"`` (the better end of a metric) or ``None`` when unknown.

    Args:
        name: the metric's column name (``brightness``, ``test/psnr``, ...).
        reward_metric: the metric is a reward block of the protocol (rewards are maximised).

    Returns:
        The direction, or ``None``: unknown metrics get no "best" mark.
    """
    if reward_metric:
        return "higher"
    low = name.lower().rsplit("/", 1)[-1]
    if any(k in low for k in _LOWER):
        return "lower"
    if any(k in low for k in _HIGHER):
        return "higher"
    return None


def read_curves(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """Reward and fidelity against steps from a trial's ``save/metrics.csv`` (``step,split,name,value``).

    Returns:
        ``{"reward": [(step, value)], "fidelity": [...]}`` with the validation reward (else the
        training batch's ``reward_mean``) and the validation PSNR; absent keys have no data.
    """
    series: Dict[Tuple[str, str], Dict[int, float]] = {}
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step, value = int(row["step"]), float(row["value"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                series.setdefault((row.get("split", ""), row.get("name", "")), {})[step] = value
    out = {}
    for key, candidates in (
        ("reward", (("val", "reward"), ("train", "reward_mean"))),
        ("fidelity", (("val", "psnr"),)),
    ):
        for cand in candidates:
            if series.get(cand):
                out[key] = sorted(series[cand].items())
                break
    return out


def _load_yaml(path: str) -> Dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _get(d: Dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def describe_reward(block: Any) -> Optional[str]:
    """A training reward block (or list of blocks) as text: ``brightness``, ``0.5 x clip-score (CLIP ...)``."""
    from ddpo3d.suite.protocol import describe_model

    if block is None:
        return None
    blocks = block if isinstance(block, list) else [block]
    parts = []
    for b in blocks:
        if not isinstance(b, dict):
            continue
        text = str(b.get("name") or b.get("type", "?"))
        model = describe_model(b)
        if model:
            text += f" ({model})"
        if "weight" in b and len(blocks) > 1:
            text = f"{b['weight']} x {text}"
        parts.append(text)
    return " + ".join(parts) or None


def _latest(folder: str, pattern: "re.Pattern[str]", want_dir: bool) -> Optional[Tuple[int, str]]:
    best = None
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = pattern.match(name)
            path = os.path.join(folder, name)
            if m and (os.path.isdir(path) if want_dir else os.path.isfile(path)):
                if best is None or int(m.group(1)) > best[0]:
                    best = (int(m.group(1)), path)
    return best


def _image_size(path: str) -> Optional[Tuple[int, int]]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def _first_png(folder: str) -> Optional[str]:
    if not os.path.isdir(folder):
        return None
    names = [f for f in os.listdir(folder) if f.endswith(".png") and f[:-4].isdigit()]
    return os.path.join(folder, min(names, key=lambda f: int(f[:-4]))) if names else None


def find_media(save_dirs: List[str]) -> Tuple[Optional[Media], Optional[int], str]:
    """A job's turntable: the newest video of the first of ``save_dirs`` that has one, else its first test view.

    Args:
        save_dirs: ``save/`` folders in order of preference (the protocol's render, then training's).

    Returns:
        ``(media, step, why_none)``: the video (or, without one, the first test view as an image),
        its step, and the reason when there is neither.
    """
    found = []
    for save in save_dirs:
        mp4 = _latest(save, _MP4, want_dir=False)
        grid = _latest(save, _GRID, want_dir=True)
        poster = _first_png(grid[1]) if grid else None
        panels, panel_px = 1, 0
        if poster:
            size = _image_size(poster)
            rgb = _first_png(os.path.join(save, f"it{grid[0]}-test-rgb"))
            rgb_size = _image_size(rgb) if rgb else None
            panel_w = rgb_size[0] if rgb_size else (size[1] if size else 0)  # square panels without RGB views
            if size and panel_w:
                panels = max(1, round(size[0] / panel_w))
                panel_px = int(panel_w)
        found.append((mp4, grid, poster, panels, panel_px))
    for mp4, grid, poster, panels, panel_px in found:  # a video anywhere beats a still image
        if mp4:
            if grid is None or grid[0] != mp4[0]:
                poster = None  # the grid of another step would not match the video
            return Media("video", mp4[1], poster=poster, panels=panels, panel_px=panel_px), mp4[0], ""
    for _, grid, poster, panels, panel_px in found:
        if poster:
            note = "no turntable video yet; first test view shown"
            return Media("image", poster, panels=panels, panel_px=panel_px, note=note), grid[0], ""
    where = " or ".join(save_dirs) if save_dirs else "(no save folder)"
    return None, None, f"no turntable video (it<step>-test.mp4) or test views in {where}"


def _trial_info(trial: str) -> Dict[str, Any]:
    parsed = _load_yaml(os.path.join(trial, "configs", "parsed.yaml"))
    return {
        "parsed": parsed,
        "reference": bool(_get(parsed, "system.reference")),
        "train_reward": describe_reward(_get(parsed, "system.guidance.reward")),
        "objective": _get(parsed, "system.guidance.objective.type"),
    }


def _reason(job: Any, state: str) -> Optional[str]:
    from ddpo3d.suite.runner import TRAINED, read_json

    if state == "failed":
        info = job.failure() or {}
        bits = [f"failed at {info.get('stage', '?')}"]
        if info.get("rc") is not None:
            bits.append(f"exit {info['rc']}")
        if info.get("error"):
            bits.append(str(info["error"]))
        return ", ".join(bits)
    if state == "running":
        info = read_json(job.path("RUNNING")) or {}
        return f"still running ({info.get('stage', 'train')}, since {info.get('time', '?')})"
    if state == "pending":
        return "trained, not scored under this protocol yet" if os.path.isfile(job.path(TRAINED)) else "not started"
    return None


def read_suite(out: str) -> ReportData:
    """Read a suite folder (``suite.json`` from ``run``; metrics as ``gather`` reads them).

    Raises:
        ReportError: ``out`` is not a folder or holds no ``suite.json``.
    """
    from ddpo3d.suite.gather import collect
    from ddpo3d.suite.runner import JobDir, read_json

    if not os.path.isdir(out):
        raise ReportError(f"report: {out} is not a folder")
    if not os.path.isfile(os.path.join(out, "suite.json")):
        raise ReportError(
            f"report: {out} holds no suite.json (not a suite folder written by `python -m ddpo3d.suite run`); "
            "pass trial folders (each with save/ and configs/parsed.yaml) instead"
        )
    manifest = read_json(os.path.join(out, "suite.json"))
    if not isinstance(manifest, dict) or "jobs" not in manifest:
        raise ReportError(f"report: {os.path.join(out, 'suite.json')} is unreadable or has no 'jobs'")
    rows, labels, skipped = collect(out)
    key = manifest.get("protocol_key")
    cells = []
    info: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        job = JobDir(out, row["job_id"])
        metrics_json = read_json(job.path("metrics.json")) or {}
        if metrics_json.get("protocol_key") == key:
            for name, m in (metrics_json.get("metrics") or {}).items():
                info.setdefault(name, {k: m.get(k) for k in ("model", "views", "resolution")})
        saves = [job.path(f"eval-{key}", "save"), job.path("trial", "save")] if key else [job.path("trial", "save")]
        media, step, why = find_media([s for s in saves if os.path.isdir(s)])
        tinfo = _trial_info(job.trial)
        state = row["state"]
        reason = _reason(job, state)
        if media is None and reason is None:  # a finished job without renders (a failed one says why)
            reason = why
        failure = job.failure() or {}
        cell = Cell(
            config=row["config"],
            prompt=row["prompt"],
            seed=row["seed"],
            job_id=row["job_id"],
            state=state,
            reason=reason,
            metrics={
                m: float(row[m]) for m in labels if isinstance(row.get(m), (int, float)) and math.isfinite(row[m])
            },
            media=media,
            reference_panel=1 if tinfo["reference"] and media is not None and media.panels >= 3 else None,
            trial=job.trial if os.path.isdir(job.trial) else None,
            log=failure.get("log") if state == "failed" else None,
            step=row.get("step") or step,
            curves=read_curves(os.path.join(job.trial, "save", "metrics.csv")),
            train_reward=tinfo["train_reward"],
            objective=tinfo["objective"],
        )
        cells.append(cell)
    protocol = manifest.get("protocol") or {}
    reward_names = {m.get("name") for m in protocol.get("metrics", [])}
    for name in labels:
        entry = info.setdefault(name, {})
        entry["source"] = "protocol reward" if name in reward_names else "system (logged on the test split)"
        blocks = [m.get("block") for m in protocol.get("metrics", []) if m.get("name") == name]
        entry["block"] = blocks[0] if blocks else None
        entry["direction"] = metric_direction(name, reward_metric=name in reward_names)
    return ReportData(
        title=f"suite {manifest.get('name', os.path.basename(out))}",
        cells=cells,
        configs=list(dict.fromkeys(c.config for c in cells)),
        metrics=list(labels),
        labels=labels,
        metric_info=info,
        protocol=protocol,
        protocol_key=key,
        skipped=skipped,
        source=out,
    )


def read_trials(trials: List[str]) -> ReportData:
    """Read a plain list of trial folders (threestudio's ``outputs/<name>/<tag>``).

    Raises:
        ReportError: naming the first path that is not a trial folder.
    """
    from ddpo3d.suite.protocol import system_metrics

    cells = []
    labels: Dict[str, str] = {}
    seen: Dict[Tuple[str, str, Any], int] = {}
    for trial in trials:
        trial = os.path.abspath(trial)
        if not os.path.isdir(trial):
            raise ReportError(f"report: {trial} is not a folder")
        if not (
            os.path.isdir(os.path.join(trial, "save")) or os.path.isfile(os.path.join(trial, "configs", "parsed.yaml"))
        ):
            raise ReportError(
                f"report: {trial} is neither a suite folder (suite.json) nor a trial folder (save/, configs/parsed.yaml)"
            )
        tinfo = _trial_info(trial)
        parsed = tinfo["parsed"]
        config = str(parsed.get("name") or os.path.basename(os.path.dirname(trial)))
        prompt = str(_get(parsed, "system.prompt_processor.prompt") or os.path.basename(trial))
        seed = parsed.get("seed")
        n = seen.get((config, prompt, seed), 0)
        seen[(config, prompt, seed)] = n + 1
        if n:  # the same config, prompt and seed twice: tell the runs apart by folder
            config = f"{config} ({os.path.basename(trial)})"
        save = os.path.join(trial, "save")
        media, step, why = find_media([save] if os.path.isdir(save) else [])
        metrics = {k: v for k, v in system_metrics(save).items() if math.isfinite(v)}
        for name in metrics:
            labels.setdefault(name, f"{name} (system)")
        cells.append(
            Cell(
                config=config,
                prompt=prompt,
                seed=seed,
                job_id=os.path.basename(trial),
                state="done" if media is not None else "no render",
                reason=None if media is not None else why,
                metrics=metrics,
                media=media,
                reference_panel=1 if tinfo["reference"] and media is not None and media.panels >= 3 else None,
                trial=trial,
                step=step,
                curves=read_curves(os.path.join(save, "metrics.csv")),
                train_reward=tinfo["train_reward"],
                objective=tinfo["objective"],
            )
        )
    info = {
        n: {"source": "system (logged on the test split)", "direction": metric_direction(n), "block": None}
        for n in labels
    }
    return ReportData(
        title=f"{len(trials)} trial folders",
        cells=cells,
        configs=list(dict.fromkeys(c.config for c in cells)),
        metrics=list(labels),
        labels=labels,
        metric_info=info,
        source=f"{len(trials)} trial folders",
    )


# ---------------------------------------------------------------------------- aggregation


def mean_std(values: List[float]) -> Tuple[float, float]:
    """Mean and population standard deviation (as ``gather`` computes them)."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def summary(data: ReportData) -> Dict[str, Dict[str, Optional[Tuple[float, float, int]]]]:
    """``{config: {metric: (mean, std, n) or None}}`` over the config's jobs with a value."""
    out: Dict[str, Dict[str, Optional[Tuple[float, float, int]]]] = {}
    for config in data.configs:
        members = [c for c in data.cells if c.config == config]
        out[config] = {}
        for m in data.metrics:
            vals = [c.metrics[m] for c in members if m in c.metrics]
            out[config][m] = mean_std(vals) + (len(vals),) if vals else None
    return out


def best_configs(data: ReportData, table: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """``{metric: [configs]}`` with the best mean (ties all marked); metrics of unknown direction are absent."""
    best: Dict[str, List[str]] = {}
    for m in data.metrics:
        direction = data.metric_info.get(m, {}).get("direction")
        vals = {c: table[c][m][0] for c in data.configs if table[c].get(m) is not None}
        if direction is None or not vals:
            continue
        target = max(vals.values()) if direction == "higher" else min(vals.values())
        best[m] = [c for c, v in vals.items() if v == target]
    return best


def fmt(value: Optional[float]) -> str:
    """4 significant digits, like ``gather``'s table."""
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


# ---------------------------------------------------------------------------- charts


def svg_chart(
    series: List[Dict[str, Any]],
    title: str,
    ylabel: str,
    width: int = 340,
    height: int = 220,
    yrange: Optional[Tuple[float, float]] = None,
) -> str:
    """A line chart as inline SVG.

    Args:
        series: ``{"points": [(x, y)], "colour", "width", "opacity", "label"}`` per line; a
            ``"band": [(x, low, high)]`` entry is drawn as a shaded envelope.
        title: title above the plot.
        ylabel: y-axis label.
        width: pixel width.
        height: pixel height.
        yrange: y limits (default: the data's, padded).

    Returns:
        The ``<svg>`` element (a "no data" note when no series has points).
    """
    pts = [p for s in series for p in s["points"]]
    pts += [(x, y) for s in series for x, lo, hi in s.get("band", ()) for y in (lo, hi)]
    esc = html.escape
    if not pts:
        return f'<div class="nodata">{esc(title)}: no data in save/metrics.csv</div>'
    left, right, top, bottom = 58, 12, 28, 38
    xs = [p[0] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    if yrange is None:
        ys = [p[1] for p in pts]
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.08 or abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        y0, y1 = yrange
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f'<text x="{left}" y="17" class="ct">{esc(title)}</text>',
    ]
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        y = sy(v)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt(v)}</text>')
    for i in range(5):
        v = x0 + (x1 - x0) * i / 4
        x = sx(v)
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{round(v)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plotbox"/>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" class="tick" text-anchor="middle">step</text>')
    parts.append(
        f'<text transform="translate(13 {top + ph / 2}) rotate(-90)" class="tick" text-anchor="middle">{esc(ylabel)}</text>'
    )
    for s in series:
        if s.get("band"):  # min-max envelope: the upper edge forwards, the lower edge back
            edge = [(x, hi) for x, _, hi in s["band"]] + [(x, lo) for x, lo, _ in reversed(s["band"])]
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in edge)
            parts.append(
                f'<polygon points="{path}" fill="{s["colour"]}" fill-opacity="0.18" stroke="none">'
                f"<title>{esc(s.get('label', ''))}</title></polygon>"
            )
        if not s["points"]:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s["points"])
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{s["colour"]}" stroke-width="{s.get("width", 2)}" '
            f'stroke-opacity="{s.get("opacity", 1)}"><title>{esc(s.get("label", ""))}</title></polyline>'
        )
    parts.append("</svg>")
    return "".join(parts)


#: above this many jobs per config a chart shows their min-max band and mean instead of every line
MAX_LINES = 12


def _by_step(curves: List[List[Tuple[int, float]]]) -> List[Tuple[int, List[float]]]:
    by_step: Dict[int, List[float]] = {}
    for c in curves:
        for s, v in c:
            by_step.setdefault(s, []).append(v)
    return sorted(by_step.items())


def _mean_curve(curves: List[List[Tuple[int, float]]]) -> List[Tuple[int, float]]:
    return [(s, sum(v) / len(v)) for s, v in _by_step(curves)]


def config_series(cells: List[Cell], key: str, colour: str) -> Tuple[List[Dict[str, Any]], str]:
    """The chart series of one config's jobs for ``key`` (``reward`` / ``fidelity``), and how to read them.

    Up to ``MAX_LINES`` jobs: a thin line per job and a thick mean; more: the min-max band and the mean.
    """
    jobs = [x for x in cells if x.curves.get(key)]
    lines = [x.curves[key] for x in jobs]
    if len(lines) > MAX_LINES:
        band = [(s, min(v), max(v)) for s, v in _by_step(lines)]
        mean = {"points": _mean_curve(lines), "colour": colour, "width": 3, "label": "mean over jobs"}
        return [{"points": [], "band": band, "colour": colour, "label": "min-max over jobs"}, mean], (
            f"band: min-max over {len(lines)} jobs, line: their mean"
        )
    series = [
        {
            "points": x.curves[key],
            "colour": colour,
            "width": 1.2,
            "opacity": 0.35,
            "label": f"{x.prompt} (seed {x.seed})",
        }
        for x in jobs
    ]
    if len(lines) > 1:
        series.append({"points": _mean_curve(lines), "colour": colour, "width": 3, "label": "mean over jobs"})
        return series, "thin: each job, thick: their mean"
    for one in series:
        one.update(width=2.5, opacity=1)
    return series, "one job"


# ---------------------------------------------------------------------------- page

CSS = """
:root { --cell: 220px; --ink: #1d2330; --muted: #5b6475; --line: #d9dde5; --accent: #0b6bcb; }
* { box-sizing: border-box; }
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #f6f7f9; }
header.top { background: #fff; border-bottom: 1px solid var(--line); padding: 18px 28px 14px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 10px; }
.sub { color: var(--muted); font-size: 13.5px; }
main { padding: 4px 28px 40px; }
section { margin-bottom: 8px; }
table { border-collapse: collapse; }
.summary { background: #fff; border: 1px solid var(--line); font-variant-numeric: tabular-nums; }
.summary th, .summary td { padding: 7px 14px; border-bottom: 1px solid var(--line); text-align: right; }
.summary th { background: #eef1f6; font-weight: 600; font-size: 13.5px; cursor: pointer; user-select: none; }
.summary th:first-child, .summary td:first-child { text-align: left; }
.summary td.best { font-weight: 700; background: #e3f4e6; }
.summary td.best::after, .m .best::after { content: " \\2605"; color: #1a7f37; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; margin-right: 7px; vertical-align: -1px; }
.toolbar { position: sticky; top: 0; z-index: 5; background: #fff; border: 1px solid var(--line); border-radius: 8px;
           padding: 9px 14px; margin: 18px 0 12px; display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: center;
           font-size: 14px; box-shadow: 0 1px 3px rgba(0,0,0,.05); }
.toolbar label { white-space: nowrap; cursor: pointer; }
.toolbar .status { color: var(--muted); }
#grid { background: #fff; border: 1px solid var(--line); }
#grid th, #grid td { border: 1px solid var(--line); vertical-align: top; padding: 8px; }
#grid thead th { background: #eef1f6; position: sticky; top: 52px; z-index: 2; text-align: left; min-width: calc(var(--cell) + 18px); }
#grid thead th.prompt-h { min-width: 170px; }
#grid .cfg { font-size: 16px; font-weight: 700; }
#grid td.prompt { font-weight: 600; font-size: 15px; max-width: 200px; background: #fafbfc; }
.seed { color: var(--muted); font-weight: 400; font-size: 13px; }
.sorts { margin-top: 5px; display: flex; flex-wrap: wrap; gap: 4px; }
button.sort { font: inherit; font-size: 12px; padding: 2px 8px; border: 1px solid #b8c0cc; background: #fff; border-radius: 11px;
              cursor: pointer; color: var(--ink); }
button.sort:hover { border-color: var(--accent); }
button.sort.active { background: var(--accent); border-color: var(--accent); color: #fff; }
.frame { width: var(--cell); height: var(--cell); overflow: hidden; position: relative; background: #fff; border-radius: 4px;
         border: 1px solid #e3e6ec; }
.frame video, .frame img { position: absolute; top: 0; height: 100%; image-rendering: pixelated; display: block; max-width: none; }
.frame.smooth video, .frame.smooth img { image-rendering: auto; }
.placeholder { width: var(--cell); height: var(--cell); display: flex; flex-direction: column; justify-content: center;
               align-items: center; text-align: center; padding: 12px; border: 2px dashed #c5cbd6; border-radius: 4px;
               color: var(--muted); font-size: 13px; background: repeating-linear-gradient(45deg,#fafbfc,#fafbfc 8px,#f2f4f7 8px,#f2f4f7 16px); }
.placeholder b { color: var(--ink); font-size: 14px; margin-bottom: 4px; }
.placeholder.failed b { color: #b42318; } .placeholder.running b { color: #9a6700; }
.note { font-size: 12px; color: #9a6700; margin-top: 3px; max-width: var(--cell); }
.m { margin-top: 6px; font-size: 13px; font-variant-numeric: tabular-nums; width: var(--cell); }
.m td { border: none !important; padding: 1px 0 !important; }
.m td.v { text-align: right; }
.m .best { font-weight: 700; }
.links { font-size: 12.5px; margin-top: 4px; } .links a { color: var(--accent); margin-right: 10px; }
.badge { display: inline-block; font-size: 11.5px; padding: 0 6px; border-radius: 8px; background: #fde8e8; color: #b42318; }
.badge.running { background: #fff4d6; color: #9a6700; } .badge.pending { background: #eef1f6; color: var(--muted); }
.curves { display: flex; flex-wrap: wrap; gap: 14px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card h3 { font-size: 15.5px; margin: 0 0 2px; } .card .sub { margin-bottom: 4px; }
.chart .ct { font-size: 13px; font-weight: 600; fill: var(--ink); } .chart .tick { font-size: 11px; fill: var(--muted); }
.chart .grid { stroke: #eceef2; } .chart .plotbox { fill: none; stroke: #c9ced8; }
.nodata { color: var(--muted); font-size: 13px; padding: 20px; }
.legend { background: #fff; border: 1px solid var(--line); font-size: 14px; }
.legend th, .legend td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
.legend th { background: #eef1f6; }
code { font-size: 13px; background: #eef1f6; padding: 0 4px; border-radius: 3px; }
"""

JS = r"""
(function () {
  "use strict";
  window.__mediaErrors = [];
  // media that cannot load or play: record it and show why instead of a broken frame
  document.addEventListener("error", function (ev) {
    var el = ev.target;
    if (!el || (el.tagName !== "VIDEO" && el.tagName !== "IMG")) return;
    var src = el.getAttribute("src");
    window.__mediaErrors.push(src);
    var frame = el.closest(".frame");
    if (!frame) return;
    var poster = el.tagName === "VIDEO" ? el.getAttribute("data-fallback") : null;
    if (poster) {  // e.g. a browser without H.264: the first test view instead
      var img = document.createElement("img");
      img.src = poster; img.style.cssText = el.style.cssText; img.alt = el.getAttribute("aria-label") || "";
      el.replaceWith(img);
      var n = document.createElement("div"); n.className = "note";
      n.textContent = "could not load or play " + src + " (missing file, or no H.264 in this browser); first test view shown";
      frame.after(n);
    } else {
      var p = document.createElement("div"); p.className = "placeholder failed";
      p.innerHTML = "<b>media did not load</b>"; p.appendChild(document.createTextNode(src));
      frame.replaceWith(p);
    }
  }, true);

  var grid = document.getElementById("grid");
  var tbody = grid.tBodies[0];
  var configs = JSON.parse(document.getElementById("report-data").textContent).configs;
  var sortState = null;
  function values(tr) { return JSON.parse(tr.getAttribute("data-values")); }
  function sortRows(ci, metric, dir) {
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var va = (values(a)[configs[ci]] || {})[metric], vb = (values(b)[configs[ci]] || {})[metric];
      var na = va === undefined || va === null, nb = vb === undefined || vb === null;
      if (na || nb) return (na - nb) || (+a.dataset.order - +b.dataset.order);  // no value: last
      return (va - vb) * dir || (+a.dataset.order - +b.dataset.order);
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function status(text) { document.getElementById("sort-status").textContent = text; }
  Array.prototype.forEach.call(document.querySelectorAll("button.sort"), function (b) {
    b.addEventListener("click", function () {
      var ci = +b.dataset.col, metric = b.dataset.metric;
      var first = b.dataset.dir === "lower" ? 1 : -1;  // best first; unknown direction: descending
      var dir = sortState && sortState.btn === b ? -sortState.dir : first;
      sortState = {btn: b, dir: dir};
      sortRows(ci, metric, dir);
      Array.prototype.forEach.call(document.querySelectorAll("button.sort.active"), function (o) { o.classList.remove("active"); });
      b.classList.add("active");
      status("rows sorted by " + metric + " of " + configs[ci] + (dir > 0 ? " (ascending)" : " (descending)"));
    });
  });
  document.getElementById("sort-reset").addEventListener("click", function () {
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) { return +a.dataset.order - +b.dataset.order; });
    rows.forEach(function (r) { tbody.appendChild(r); });
    sortState = null;
    Array.prototype.forEach.call(document.querySelectorAll("button.sort.active"), function (o) { o.classList.remove("active"); });
    status("suite order");
  });
  // hide / show configs everywhere (grid column, summary row, curve card)
  Array.prototype.forEach.call(document.querySelectorAll("input.cfg-toggle"), function (box) {
    box.addEventListener("change", function () {
      Array.prototype.forEach.call(document.querySelectorAll('[data-col="' + box.dataset.col + '"]'), function (el) {
        el.hidden = !box.checked;
      });
    });
  });
  // summary table: click a header to sort the configs by it
  var summary = document.getElementById("summary");
  if (summary) {
    Array.prototype.forEach.call(summary.tHead.rows[0].cells, function (th, k) {
      th.addEventListener("click", function () {
        var body = summary.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var dir = th.dataset.sorted === "1" ? -1 : 1;
        Array.prototype.forEach.call(summary.tHead.rows[0].cells, function (o) { delete o.dataset.sorted; });
        th.dataset.sorted = dir === 1 ? "1" : "-1";
        rows.sort(function (a, b) {
          var x = a.cells[k].dataset.v, y = b.cells[k].dataset.v;
          if (x === undefined || y === undefined) return (a.cells[k].textContent > b.cells[k].textContent ? 1 : -1) * dir;
          if (x === "" || y === "") return (x === "") - (y === "");
          return (+x - +y) * dir * (th.dataset.dir === "lower" ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  var size = document.getElementById("cell-size");
  size.addEventListener("input", function () { document.documentElement.style.setProperty("--cell", size.value + "px"); });
  // play turntables only while on screen (hundreds of videos otherwise decode at once)
  var videos = document.querySelectorAll("video");
  if ("IntersectionObserver" in window) {
    var io = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { var p = e.target.play(); if (p) p.catch(function () {}); } else e.target.pause(); });
    }, {rootMargin: "200px"});
    Array.prototype.forEach.call(videos, function (v) { io.observe(v); });
  }
})();
"""


class _Linker:
    """Turns a media file into the ``src`` the page uses (relative link or copy under ``media/``)."""

    def __init__(self, report_dir: str, copy: bool) -> None:
        self.report_dir = report_dir
        self.copy = copy
        self.files: Dict[str, str] = {}  # absolute source path -> src

    def __call__(self, path: str, job_id: str) -> str:
        if path in self.files:
            return self.files[path]
        if self.copy:
            rel = os.path.join("media", re.sub(r"[^A-Za-z0-9._-]+", "_", job_id), os.path.basename(path))
            n = 1
            while os.path.join(self.report_dir, rel) in {os.path.join(self.report_dir, v) for v in self.files.values()}:
                stem, ext = os.path.splitext(os.path.basename(path))
                rel = os.path.join(os.path.dirname(rel), f"{stem}-{n}{ext}")
                n += 1
            dst = os.path.join(self.report_dir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(path, dst)
        else:
            rel = os.path.relpath(path, self.report_dir)
        src = "/".join(quote(p) for p in rel.split(os.sep))
        self.files[path] = src
        return src


def _href(path: str, report_dir: str) -> str:
    return "/".join(quote(p) for p in os.path.relpath(path, report_dir).split(os.sep))


def _media_html(media: Media, panel: int, src: str, poster: Optional[str], label: str) -> str:
    """A frame showing one panel of the (possibly multi-panel) turntable."""
    style = f"width:{media.panels * 100}%;left:-{panel * 100}%"
    # small renders are enlarged with visible pixels; large ones are smoothed when shrunk
    smooth = " smooth" if media.panel_px >= 256 else ""
    if media.kind == "video":
        # the first test view is fetched only if the video fails (a poster would load with the page)
        p = f' data-fallback="{poster}"' if poster else ""
        tag = (
            f'<video src="{src}"{p} muted loop playsinline preload="metadata" style="{style}" '
            f'aria-label="{html.escape(label)}"></video>'
        )
    else:
        tag = f'<img src="{src}" alt="{html.escape(label)}" style="{style}">'
    return f'<div class="frame{smooth}">{tag}</div>'


def _placeholder(state: str, reason: Optional[str]) -> str:
    title = {"failed": "failed", "running": "still running", "pending": "not finished"}.get(state, "no render")
    cls = state if state in ("failed", "running") else ""
    return f'<div class="placeholder {cls}"><b>{title}</b>{html.escape(reason or "")}</div>'


def render_html(data: ReportData, report_dir: str, copy_media: bool = False) -> Tuple[str, Dict[str, Any]]:
    """The page for ``data``, with media paths relative to ``report_dir``.

    Returns:
        ``(html, stats)``: stats hold ``cells``, ``cell_html_bytes``, ``curve_html_bytes`` and the
        media files (absolute source paths) the page links, for :func:`page_size`.
    """
    esc = html.escape
    link = _Linker(report_dir, copy_media)
    table = summary(data)
    best = best_configs(data, table)
    colour = {c: COLOURS[i % len(COLOURS)] for i, c in enumerate(data.configs)}
    col = {c: i for i, c in enumerate(data.configs)}
    seeds = {c.seed for c in data.cells}
    multi_seed = len(seeds) > 1
    rows: Dict[Tuple[str, Any], Dict[str, Cell]] = {}
    for c in data.cells:
        rows.setdefault((c.prompt, c.seed if multi_seed else None), {})[c.config] = c
    has_reference = any(c.reference_panel is not None for c in data.cells)
    directions = {m: data.metric_info.get(m, {}).get("direction") for m in data.metrics}
    short = {m: m for m in data.metrics}

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(data.title)} – comparison</title>",
        f"<style>{CSS}</style></head><body>",
        f'<header class="top"><h1>{esc(data.title)}</h1>',
        f'<div class="sub">{len(data.configs)} configs × {len(rows)} rows '
        f"({len(data.cells)} jobs; {sum(c.state == 'done' for c in data.cells)} done) · source <code>"
        f"{esc(data.source)}</code> · values from the jobs' metrics (results.csv), curves from save/metrics.csv</div>",
        "</header><main>",
    ]
    # ---- summary table
    out.append("<section><h2>Mean ± std per config</h2>")
    if data.metrics:
        head = ["<th>config</th>", '<th data-dir="higher">n</th>']
        for m in data.metrics:
            d = directions[m]
            arrow = {"higher": " ↑", "lower": " ↓"}.get(d or "", "")
            head.append(
                f'<th data-dir="{d or "unknown"}" title="{esc(data.labels.get(m, m))}">{esc(data.labels.get(m, m))}{arrow}</th>'
            )
        out.append(f'<table class="summary" id="summary"><thead><tr>{"".join(head)}</tr></thead><tbody>')
        for c in data.configs:
            n = sum(1 for x in data.cells if x.config == c and x.state == "done")
            tds = [
                f'<td><span class="swatch" style="background:{colour[c]}"></span>{esc(c)}</td>',
                f'<td data-v="{n}">{n}</td>',
            ]
            for m in data.metrics:
                v = table[c][m]
                if v is None:
                    tds.append('<td data-v="">–</td>')
                else:
                    cls = ' class="best"' if c in best.get(m, ()) else ""
                    tds.append(f'<td{cls} data-v="{v[0]!r}">{fmt(v[0])} ± {fmt(v[1])}</td>')
            out.append(f'<tr data-col="{col[c]}">{"".join(tds)}</tr>')
        out.append("</tbody></table>")
        unknown = [m for m in data.metrics if directions[m] is None]
        note = "★ best mean per metric (↑ higher is better, ↓ lower is better); ± is the std over a config's jobs."
        if unknown:
            note += f" Not marked (direction unknown): {', '.join(unknown)}."
        out.append(f'<p class="sub">{esc(note)} Click a header to sort the configs.</p>')
    else:
        out.append('<p class="sub">No metrics yet (no job has been scored).</p>')
    out.append("</section>")

    # ---- toolbar + grid
    out.append('<div class="toolbar"><b>Configs:</b>')
    for c in data.configs:
        out.append(
            f'<label><input type="checkbox" class="cfg-toggle" data-col="{col[c]}" data-config="{esc(c)}" checked> '
            f'<span class="swatch" style="background:{colour[c]}"></span>{esc(c)}</label>'
        )
    out.append(
        '<label>render size <input type="range" id="cell-size" min="96" max="512" step="8" value="220"></label>'
        '<button class="sort" id="sort-reset">suite order</button><span class="status" id="sort-status">suite order</span></div>'
    )
    out.append('<table id="grid"><thead><tr><th class="prompt-h">prompt</th>')
    if has_reference:
        out.append(
            '<th class="ref-h"><div class="cfg">ground truth</div><div class="sub">the toy object the prompt names</div></th>'
        )
    for c in data.configs:
        buttons = "".join(
            f'<button class="sort" data-col="{col[c]}" data-config="{esc(c)}" data-metric="{esc(m)}" '
            f'data-dir="{directions[m] or "unknown"}" title="sort rows by {esc(data.labels.get(m, m))} of {esc(c)}">'
            f"{esc(short[m])}</button>"
            for m in data.metrics
        )
        reward = next((x.train_reward for x in data.cells if x.config == c and x.train_reward), None)
        sub = f'<div class="sub">trains on: {esc(reward)}</div>' if reward else ""
        out.append(
            f'<th data-col="{col[c]}" data-config="{esc(c)}"><div class="cfg"><span class="swatch" '
            f'style="background:{colour[c]}"></span>{esc(c)}</div>{sub}<div class="sorts">{buttons}</div></th>'
        )
    out.append("</tr></thead><tbody>")
    cell_bytes = 0
    media_files: List[str] = []
    for order, ((prompt, seed), cells) in enumerate(rows.items()):
        vals = {c: {m: cells[c].metrics[m] for m in data.metrics if m in cells[c].metrics} for c in cells}
        row_best = {}
        for m in data.metrics:
            d = directions[m]
            got = [v[m] for v in vals.values() if m in v]
            if d and len(got) > 1:
                row_best[m] = max(got) if d == "higher" else min(got)
        seed_txt = f' <span class="seed">seed {seed}</span>' if multi_seed else ""
        tr = [
            f'<tr data-order="{order}" data-prompt="{esc(prompt)}" data-seed="{"" if seed is None else seed}" '
            f"data-values='{esc(json.dumps(vals), quote=True)}'><td class=\"prompt\">{esc(prompt)}{seed_txt}</td>"
        ]
        if has_reference:
            ref = next((x for x in cells.values() if x.reference_panel is not None), None)
            if ref is not None:
                src = link(ref.media.path, ref.job_id)
                poster = link(ref.media.poster, ref.job_id) if ref.media.poster else None
                tr.append(f"<td>{_media_html(ref.media, ref.reference_panel, src, poster, f'true object: {prompt}')}")
                tr.append(f'<div class="links">panel 2 of {esc(ref.config)}\'s test grid</div></td>')
                media_files += [ref.media.path] + ([ref.media.poster] if ref.media.poster else [])
            else:
                tr.append(f"<td>{_placeholder('none', 'no test grid with the true object for this prompt')}</td>")
        for c in data.configs:
            x = cells.get(c)
            if x is None:
                td = f'<td data-col="{col[c]}">{_placeholder("none", "no job of this config for this prompt")}</td>'
                cell_bytes += len(td)
                tr.append(td)
                continue
            parts = [f'<td data-col="{col[c]}" data-config="{esc(c)}" data-job="{esc(x.job_id)}">']
            if x.media is not None:
                src = link(x.media.path, x.job_id)
                poster = link(x.media.poster, x.job_id) if x.media.poster else None
                parts.append(_media_html(x.media, 0, src, poster, f"{c}: {prompt}"))
                media_files += [x.media.path] + ([x.media.poster] if x.media.poster else [])
                if x.media.note:
                    parts.append(f'<div class="note">{esc(x.media.note)}</div>')
            else:
                parts.append(_placeholder(x.state, x.reason))
            if x.state != "done" and x.media is not None:
                parts.append(
                    f'<div><span class="badge {esc(x.state)}">{esc(x.state)}</span> {esc(x.reason or "")}</div>'
                )
            if x.metrics:
                mrows = []
                for m in data.metrics:
                    if m not in x.metrics:
                        continue
                    cls = " best" if m in row_best and x.metrics[m] == row_best[m] else ""
                    mrows.append(f'<tr><td>{esc(short[m])}</td><td class="v{cls}">{fmt(x.metrics[m])}</td></tr>')
                parts.append(f'<table class="m">{"".join(mrows)}</table>')
            links = []
            if x.trial:
                links.append(f'<a href="{_href(x.trial, report_dir)}/">trial folder</a>')
            if x.log:
                links.append(f'<a href="{_href(x.log, report_dir)}">log</a>')
            if x.step is not None:
                links.append(f'<span class="sub">step {x.step}</span>')
            parts.append(f'<div class="links">{"".join(links)}</div></td>')
            td = "".join(parts)
            cell_bytes += len(td.encode("utf-8"))
            tr.append(td)
        tr.append("</tr>")
        out.append("".join(tr))
    out.append("</tbody></table>")
    out.append(
        '<p class="sub">Each cell: the final test turntable (the evaluation render when the protocol made one, '
        "else the training run's), its metrics (bold ★: best in the row), and its trial folder. "
        "Click a metric under a config's name to sort the rows by it (best first; again to reverse; no value: last).</p>"
    )

    # ---- curves
    curve_start = sum(len(s.encode("utf-8")) for s in out)
    out.append('<section><h2>Reward and fidelity during training</h2><div class="curves">')
    fid_pts = [v for x in data.cells for _, v in x.curves.get("fidelity", [])]
    fid_range = None
    if fid_pts:
        lo, hi = min(fid_pts), max(fid_pts)
        pad = (hi - lo) * 0.08 or 1.0
        fid_range = (lo - pad, hi + pad)
    for c in data.configs:
        members = [x for x in data.cells if x.config == c]
        reward = next((x.train_reward for x in members if x.train_reward), None)
        charts = []
        how = ""
        for key, title, ylabel, yr in (
            ("reward", f"reward: {reward or 'as logged'}", "reward (validation views)", None),
            ("fidelity", "fidelity: PSNR to the true object (dB)", "PSNR (dB)", fid_range),
        ):
            series, text = config_series(members, key, colour[c])
            if key == "fidelity" and not series:
                continue  # only the toy world logs fidelity
            how = how or text
            charts.append(svg_chart(series, title, ylabel, yrange=yr))
        objective = next((x.objective for x in members if x.objective), None)
        sub = f"objective {objective}; " if objective else ""
        out.append(
            f'<div class="card" data-col="{col[c]}"><h3><span class="swatch" style="background:{colour[c]}"></span>{esc(c)}</h3>'
            f'<div class="sub">{esc(sub + how)}</div>{"".join(charts)}</div>'
        )
    out.append("</div></section>")
    curve_bytes = sum(len(s.encode("utf-8")) for s in out) - curve_start

    # ---- legend
    out.append("<section><h2>Legend</h2>")
    if data.protocol:
        p = data.protocol
        res = f"{p.get('resolution')} px" if p.get("resolution") else "the config's own resolution"
        out.append(
            f"<p>View protocol <code>{esc(str(data.protocol_key))}</code>: every finished job's final checkpoint rendered "
            f"from {esc(str(p.get('views')))} test views evenly spaced in azimuth at {esc(res)}"
            f"{', with normal maps' if p.get('normals') else ''}; each metric is the mean over those views. "
            "Turntables are those renders.</p>"
        )
    if data.metrics:
        out.append(
            '<table class="legend"><thead><tr><th>metric</th><th>model</th><th>views</th><th>resolution</th>'
            "<th>source</th><th>better</th></tr></thead><tbody>"
        )
        for m in data.metrics:
            inf = data.metric_info.get(m, {})
            block = inf.get("block")
            if inf.get("model"):
                model = inf["model"]
            elif isinstance(block, dict):
                model = f"{block.get('type')} (no model)"
            else:
                model = "the system's own scalar (e.g. the toy world's PSNR to the true object)"
            better = {"higher": "higher ↑", "lower": "lower ↓"}.get(inf.get("direction") or "", "unknown (not marked)")
            out.append(
                f"<tr><td><code>{esc(m)}</code></td><td>{esc(str(model))}</td><td>{esc(str(inf.get('views', '–')))}</td>"
                f"<td>{esc(str(inf.get('resolution', '–')))}</td><td>{esc(inf.get('source', ''))}</td><td>{better}</td></tr>"
            )
        out.append("</tbody></table>")
    for name, reason in data.skipped.items():
        out.append(f'<p class="sub">Metric <code>{esc(name)}</code> skipped (weights missing): {esc(reason)}</p>')
    out.append(
        '<table class="legend" style="margin-top:12px"><thead><tr><th>config</th><th>trains on (reward)</th>'
        "<th>objective</th></tr></thead><tbody>"
    )
    for c in data.configs:
        members = [x for x in data.cells if x.config == c]
        reward = next((x.train_reward for x in members if x.train_reward), None) or "none"
        objective = next((x.objective for x in members if x.objective), None) or "–"
        out.append(
            f'<tr data-col="{col[c]}"><td>{esc(c)}</td><td>{esc(reward)}</td><td>{esc(str(objective))}</td></tr>'
        )
    out.append("</tbody></table>")
    media_note = (
        "copied into report/media/ (the report folder stands alone)"
        if copy_media
        else "linked relatively from the suite's folders (move or copy the whole suite folder, not report/ alone)"
    )
    out.append(f'<p class="sub">Media: {media_note}.</p></section></main>')
    payload = json.dumps({"configs": data.configs, "metrics": data.metrics})
    out.append(f'<script type="application/json" id="report-data">{esc(payload, quote=False)}</script>')
    out.append(f"<script>{JS}</script></body></html>")
    page = "\n".join(out)
    cells_n = sum(1 for _ in data.cells)
    stats = {"cells": cells_n, "cell_html_bytes": cell_bytes, "curve_html_bytes": curve_bytes, "media": media_files}
    return page, stats


def gpteval3d_prompts() -> Optional[List[str]]:
    """GPTEval3D's 110 prompts from ``configs/suites/prompts/`` when this is a source checkout."""
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "configs",
        "suites",
        "prompts",
        "gpteval3d-prompts.json",
    )
    try:
        with open(path, encoding="utf-8") as f:
            prompts = json.load(f)
    except (OSError, ValueError):
        return None
    return [str(p) for p in prompts] if isinstance(prompts, list) and prompts else None


def estimate_size(data: ReportData, report_dir: str, prompts: Any = 110, configs: int = 5) -> Dict[str, float]:
    """The page's size for a larger suite, scaled up from a measured one.

    The grid is rebuilt with ``prompts`` × ``configs`` cells, each a copy of a measured cell of the
    same config (cycling through them; configs beyond the measured ones repeat them), and the page
    is rendered in memory: its HTML bytes are exact for that grid. Media are the mean bytes a
    measured cell loads (its video; the ground-truth column reuses a cell's) times the cell count;
    they scale with the render resolution and view count of the protocol. The first test view each
    cell keeps as a fallback is counted apart (``fallback_per_cell``: on disk, loaded only if a
    video fails).

    Args:
        data: a measured report.
        report_dir: where the page would live (for relative links).
        prompts: a prompt count or the prompts themselves (e.g. :func:`gpteval3d_prompts`).
        configs: config count.

    Returns:
        ``{"cells", "html_bytes", "html_per_cell", "media_per_cell", "media_bytes", "fallback_per_cell",
        "measured_cells", "measured_html_bytes"}``.
    """
    import dataclasses

    names = [f"prompt {i}" for i in range(prompts)] if isinstance(prompts, int) else list(prompts)
    measured, _ = render_html(data, report_dir)
    with_media = [c for c in data.cells if c.media is not None]
    media = [os.path.getsize(c.media.path) for c in with_media if os.path.isfile(c.media.path)]
    media_per_cell = sum(media) / len(media) if media else 0.0
    fallback = [
        os.path.getsize(c.media.poster) for c in with_media if c.media.poster and os.path.isfile(c.media.poster)
    ]
    fallback_per_cell = sum(fallback) / len(with_media) if with_media else 0.0
    cells = []
    config_names = []
    for k in range(configs):
        base = data.configs[k % len(data.configs)]
        name = base if k < len(data.configs) else f"{base} ({k + 1})"
        config_names.append(name)
        pool = [c for c in data.cells if c.config == base and c.media is not None] or [
            c for c in data.cells if c.config == base
        ]
        for i, prompt in enumerate(names):
            cells.append(dataclasses.replace(pool[i % len(pool)], config=name, prompt=prompt, seed=0))
    scaled = dataclasses.replace(data, cells=cells, configs=config_names)
    page, _ = render_html(scaled, report_dir)
    n = len(cells)
    html_bytes = len(page.encode("utf-8"))
    return {
        "cells": n,
        "html_bytes": html_bytes,
        "html_per_cell": (html_bytes - len(measured.encode("utf-8"))) / max(1, n - len(data.cells)),
        "media_per_cell": media_per_cell,
        "media_bytes": media_per_cell * n,
        "fallback_per_cell": fallback_per_cell,
        "measured_cells": len(data.cells),
        "measured_html_bytes": len(measured.encode("utf-8")),
    }


def build_report(paths: List[str], out: Optional[str] = None, copy_media: bool = False) -> Dict[str, Any]:
    """Write ``index.html`` for a suite folder (one path with ``suite.json``) or a list of trial folders.

    Args:
        paths: a suite folder, or trial folders.
        out: the report folder (default: ``<suite>/report``; required for trial folders).
        copy_media: copy the media into ``<out>/media/`` instead of linking them.

    Returns:
        ``{"index": path, "data": ReportData, "html_bytes": size of index.html}``.

    Raises:
        ReportError: a path that is neither a suite nor a trial folder, or no ``out`` for trials.
    """
    if not paths:
        raise ReportError("report: give a suite folder or trial folders")
    paths = [os.path.abspath(p) for p in paths]
    for p in paths:
        if not os.path.exists(p):
            raise ReportError(f"report: {p} does not exist")
    if len(paths) == 1 and os.path.isfile(os.path.join(paths[0], "suite.json")):
        data = read_suite(paths[0])
        out = os.path.abspath(out or os.path.join(paths[0], "report"))
    else:
        if len(paths) == 1 and os.path.isdir(paths[0]) and not os.path.isdir(os.path.join(paths[0], "save")):
            read_suite(paths[0])  # raises with the "no suite.json" message
        if out is None:
            raise ReportError("report: --out is required for a list of trial folders")
        data = read_trials(paths)
        out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    page, stats = render_html(data, out, copy_media=copy_media)
    index = os.path.join(out, "index.html")
    tmp = f"{index}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, index)
    return {"index": index, "data": data, "html_bytes": len(page.encode("utf-8")), "out": out}


__all__ = [
    "Cell",
    "Media",
    "ReportData",
    "ReportError",
    "build_report",
    "find_media",
    "metric_direction",
    "estimate_size",
    "gpteval3d_prompts",
    "read_suite",
    "read_trials",
    "read_curves",
    "render_html",
    "svg_chart",
]
