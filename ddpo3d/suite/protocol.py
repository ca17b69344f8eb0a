"""The evaluation protocol: render a finished job's final checkpoint from N evenly spaced views
and score the views with reward models (``ddpo3d.eval``).

The render is the project's own ``launch.py --test`` on the job's ``configs/parsed.yaml`` and
``ckpts/last.ckpt``, with ``data.n_test_views=N`` (the test cameras of threestudio's
``random-camera-datamodule`` are evenly spaced in azimuth) and ``data.eval_width`` /
``eval_height`` set to the protocol's resolution, into ``<job>/eval-<protocol key>/`` (the
training folder is left as it is). ``ddpo3d-system`` saves each view as plain RGB
(``save/it<step>-test-rgb/``) and, when the system renders normals (any material that needs
them, e.g. DreamFusion's ``diffuse-with-point-light-material``), the normal map
(``save/it<step>-test-normal/``): the two images GPTEval3D's judge compares.

Each metric is a reward block; a metric whose weights are not on disk is skipped with a notice
(recorded in ``metrics.json``), never an error. Scalars the system logs for the test split
(e.g. the toy world's fidelity ``psnr``) are kept as ``test/<name>`` metrics, except the
config's own reward (it differs between configs).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from ddpo3d.suite.spec import EvalProtocol, MetricSpec, quote_value
from ddpo3d.utils.typing import Any, Dict, List, Optional, Tuple

_TEST_DIR = re.compile(r"^it(\d+)-test(-rgb|-normal)?$")
#: reward modules built in this process, by block (a worker scores many jobs with one model)
_REWARDS: Dict[str, Any] = {}


def describe_model(block: Dict[str, Any]) -> Optional[str]:
    """The model a reward block scores with, as written in table headers (``None`` for model-free rewards)."""
    kind = block.get("type")
    if "clip_checkpoint" in block and block["clip_checkpoint"]:
        clip = os.path.basename(str(block["clip_checkpoint"]))
    else:
        clip = f"{block.get('clip_model', 'ViT-L-14')}/{block.get('clip_pretrained', 'openai')}"
    if kind == "clip-score":
        return f"CLIP {clip}"
    if kind == "aesthetic":
        return f"LAION aesthetic v2 on {clip}"
    if kind in ("jpeg-compressibility", "jpeg-incompressibility", "brightness"):
        return None
    if "model" in block:
        return str(block["model"])
    return None


def metric_label(name: str, model: Optional[str], views: int, resolution: int) -> str:
    """``name (model, N views, Rpx)``: the header of a metric column."""
    inner = ", ".join(p for p in (model, f"{views} views", f"{resolution}px") if p)
    return f"{name} ({inner})"


def render_args(job: Any, protocol: EvalProtocol, tag: str) -> List[str]:
    """``launch.py`` arguments rendering a job's final checkpoint under the protocol."""
    from ddpo3d.suite.runner import pin_overrides

    parsed = os.path.join(job.trial, "configs", "parsed.yaml")
    if not os.path.isfile(parsed):
        raise FileNotFoundError(f"the finished run has no {parsed}")
    ckpt = job.latest_ckpt()
    if ckpt is None:
        raise FileNotFoundError(f"the finished run has no complete checkpoint under {job.path('trial', 'ckpts')}")
    args = ["--config", parsed, "--test", f"resume={quote_value(ckpt)}", *pin_overrides(job, tag)]
    args.append(f"data.n_test_views={protocol.views}")
    if protocol.resolution is not None:
        args += [f"data.eval_width={protocol.resolution}", f"data.eval_height={protocol.resolution}"]
    return args + list(protocol.overrides)


def latest_test_dirs(save: str) -> Dict[str, str]:
    """``{"rgb": ..., "normal": ..., "grid": ...}`` folders of the latest test step under ``save``."""
    found: Dict[int, Dict[str, str]] = {}
    if os.path.isdir(save):
        for name in os.listdir(save):
            m = _TEST_DIR.match(name)
            if m and os.path.isdir(os.path.join(save, name)):
                kind = {"-rgb": "rgb", "-normal": "normal", None: "grid"}[m.group(2)]
                found.setdefault(int(m.group(1)), {})[kind] = os.path.join(save, name)
    if not found:
        return {}
    return found[max(found)]


def system_metrics(save: str) -> Dict[str, float]:
    """The test-split scalars the system wrote to ``save/metrics.csv`` (``step,split,name,value``)."""
    path = os.path.join(save, "metrics.csv")
    out: Dict[str, float] = {}
    if not os.path.isfile(path):
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            name = str(row.get("name", ""))
            if row.get("split") == "test" and name and not name.startswith("reward"):
                out[f"test/{name}"] = float(row["value"])
    return out


def build_metric(spec: MetricSpec, device: str) -> Tuple[Optional[Any], Optional[str]]:
    """Build (or reuse) a metric's reward; ``(None, reason)`` when its weights are missing."""
    from ddpo3d.rewards import build_reward

    key = json.dumps(spec.block, sort_keys=True)
    if key in _REWARDS:
        return _REWARDS[key], None
    try:
        reward = build_reward(spec.block).to(device)
    except (FileNotFoundError, ImportError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r"\s*Looked in:?\s*$", "", first)  # the places searched follow on the next lines
        return None, f"{type(exc).__name__}: {first}"
    reward.eval()
    _REWARDS[key] = reward
    return reward, None


def score_views(
    views: List[str], prompt: str, protocol: EvalProtocol, device: str, log: Any
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, str]]:
    """Score the RGB views with every metric of the protocol.

    Returns:
        ``(metrics, skipped)``: ``{name: {mean, std, label, model, views, resolution}}`` and
        ``{name: reason}`` for metrics whose weights are missing.
    """
    import torch

    from ddpo3d.eval.score import load_views

    images = load_views([Path(v) for v in views])
    n, res = images.shape[0], int(images.shape[1])
    metrics: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    for spec in protocol.metrics:
        reward, reason = build_metric(spec, device)
        if reward is None:
            skipped[spec.name] = reason
            log.write(f"[suite] metric {spec.name!r} skipped: {reason}\n")
            continue
        scores = []
        with torch.no_grad():
            for i in range(0, n, protocol.batch_size):
                chunk = images[i : i + protocol.batch_size].to(device)
                scores.append(reward(chunk, [prompt] * len(chunk)).float().cpu())
        s = torch.cat(scores)
        model = describe_model(spec.block)
        metrics[spec.name] = {
            "mean": float(s.mean()),
            "std": float(s.std(unbiased=False)),
            "model": model,
            "views": n,
            "resolution": res,
            "label": metric_label(spec.name, model, n, res),
        }
    return metrics, skipped


def evaluate_job(job: Any, protocol: EvalProtocol, cwd: str, in_process: bool = False) -> Tuple[bool, str]:
    """Render and score a trained job; writes ``<job>/metrics.json``.

    Returns:
        ``(ok, log path)``.
    """
    import torch

    from ddpo3d.suite.runner import now, read_json, run_launcher, write_json

    tag = f"eval-{protocol.key()}"
    n = (
        sum(1 for f in os.listdir(job.path("logs")) if f.startswith("eval-")) + 1
        if os.path.isdir(job.path("logs"))
        else 1
    )
    log_path = job.path("logs", f"eval-{n}.log")
    rc = run_launcher(
        render_args(job, protocol, tag), log_path, cwd, in_process=in_process, heartbeat=job.path("RUNNING")
    )
    if rc != 0:
        return False, log_path
    save = job.path(tag, "save")
    dirs = latest_test_dirs(save)
    views_dir = dirs.get("rgb") or dirs.get("grid")
    if views_dir is None:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"[suite] the render wrote no test views under {save}\n")
        return False, log_path
    from ddpo3d.eval.score import find_views

    views = [str(p) for p in find_views(Path(views_dir))]
    spec = job.spec()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with open(log_path, "a", encoding="utf-8") as log:
        metrics, skipped = score_views(views, spec["prompt"], protocol, device, log)
        n_views = len(views)
        sys_metrics = system_metrics(save)
        if sys_metrics:
            import imageio.v3 as iio

            res = int(iio.imread(views[0]).shape[0])
        for key, value in sys_metrics.items():
            metrics[key] = {
                "mean": value,
                "std": None,
                "model": None,
                "views": n_views,
                "resolution": res,
                "label": metric_label(key, "system", n_views, res),
            }
        normal_dir = dirs.get("normal")
        if protocol.normals and normal_dir is None:
            log.write(
                "[suite] no normal maps: this system/material renders none (a material that needs normals, "
                "e.g. diffuse-with-point-light-material with geometry.normal_type set, renders them)\n"
            )
        step = None
        m = re.match(r"^it(\d+)-", os.path.basename(views_dir))
        if m:
            step = int(m.group(1))
        trained = read_json(job.path("TRAINED")) or {}
        write_json(
            job.path("metrics.json"),
            {
                "job_id": job.job_id,
                "protocol_key": protocol.key(),
                "protocol": protocol.to_dict(),
                "step": step,
                "views": n_views,
                "views_dir": views_dir,
                "normals_dir": normal_dir if protocol.normals else None,
                "metrics": metrics,
                "skipped": skipped,
                "trained": trained.get("time"),
                "scored": now(),
            },
        )
        log.write(f"[suite] wrote {job.path('metrics.json')}\n")
    return True, log_path


__all__ = ["describe_model", "evaluate_job", "latest_test_dirs", "metric_label", "render_args", "system_metrics"]
