"""Collect a suite's metrics: ``results.csv``, a Markdown table of mean ± std, one figure per metric.

Rows are the jobs of the suite's manifest (``<out>/suite.json``, written by ``run``), one per
config × prompt × seed, with each metric's mean over the protocol's views. The table
aggregates the jobs of a config (over prompts and seeds; ``by_prompt``: over seeds, per
prompt); ``±`` is the population standard deviation over those jobs, ``n`` their count.
"""

from __future__ import annotations

import csv
import math
import os

from ddpo3d.suite.runner import JobDir, read_json
from ddpo3d.utils.typing import Any, Dict, List, Optional, Tuple

BASE_COLUMNS = ("config", "prompt", "seed", "job_id", "key", "state", "step")


def load_manifest(out: str) -> Dict[str, Any]:
    data = read_json(os.path.join(out, "suite.json"))
    if data is None:
        raise FileNotFoundError(
            f"{out} holds no suite.json: run `python -m ddpo3d.suite run SUITE.yaml --out {out}` first"
        )
    return data


def collect(out: str) -> Tuple[List[Dict[str, Any]], Dict[str, str], Dict[str, str]]:
    """Read every job's ``metrics.json``.

    Returns:
        ``(rows, labels, skipped)``: one row per job (metric means under their names; empty for
        jobs without metrics), ``{metric: header label}`` and ``{metric: reason}`` for metrics
        skipped in some job.
    """
    manifest = load_manifest(out)
    key = manifest["protocol_key"]
    rows: List[Dict[str, Any]] = []
    labels: Dict[str, str] = {}
    skipped: Dict[str, str] = {}
    for spec in manifest["jobs"]:
        job = JobDir(out, spec["job_id"])
        row: Dict[str, Any] = {
            "config": spec["label"],
            "prompt": spec["prompt"],
            "seed": spec["seed"],
            "job_id": spec["job_id"],
            "key": spec["key"][:10],
            "state": job.state(key),
            "step": None,
        }
        metrics = read_json(job.path("metrics.json"))
        if metrics and metrics.get("protocol_key") == key:
            row["step"] = metrics.get("step")
            for name, m in metrics.get("metrics", {}).items():
                row[name] = m["mean"]
                labels.setdefault(name, m.get("label", name))
            for name, reason in (metrics.get("skipped") or {}).items():
                skipped.setdefault(name, reason)
        rows.append(row)
    return rows, labels, skipped


def _mean_std(values: List[float]) -> Tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def aggregate(rows: List[Dict[str, Any]], metrics: List[str], by_prompt: bool = False) -> List[Dict[str, Any]]:
    """Mean and std of each metric over the jobs of each config (and prompt)."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        key = (r["config"], r["prompt"]) if by_prompt else (r["config"],)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        entry: Dict[str, Any] = {"config": key[0], "n": sum(1 for m in members if m["state"] == "done")}
        if by_prompt:
            entry["prompt"] = key[1]
        for name in metrics:
            vals = [m[name] for m in members if isinstance(m.get(name), (int, float))]
            entry[name] = _mean_std(vals) + (len(vals),) if vals else None
        out.append(entry)
    return out


def to_markdown(
    rows: List[Dict[str, Any]], labels: Dict[str, str], by_prompt: bool = False, total: Optional[int] = None
) -> str:
    """The comparison table: one row per config (per config × prompt with ``by_prompt``)."""
    metrics = list(labels)
    agg = aggregate(rows, metrics, by_prompt)
    head = ["config"] + (["prompt"] if by_prompt else []) + ["n"] + [labels[m] for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (2 if by_prompt else 1) + "---:|" * (1 + len(metrics))]
    for e in agg:
        cells = [e["config"]] + ([e["prompt"]] if by_prompt else []) + [str(e["n"])]
        for m in metrics:
            cells.append("–" if e[m] is None else f"{_fmt(e[m][0])} ± {_fmt(e[m][1])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: List[Dict[str, Any]], metrics: List[str], path: str) -> None:
    """``results.csv``: the base columns, then one column per metric (its mean over the views)."""
    fields = list(BASE_COLUMNS) + metrics
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def plot_metric(rows: List[Dict[str, Any]], name: str, label: str, path: str) -> None:
    """Bar per config (mean ± std over its jobs) with every job as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(3.0, 1.2 * len(configs) + 1.5), 3.2))
    for i, c in enumerate(configs):
        vals = [r[name] for r in rows if r["config"] == c and isinstance(r.get(name), (int, float))]
        if not vals:
            continue
        m, s = _mean_std(vals)
        ax.bar(i, m, yerr=s, color="C0", alpha=0.6, capsize=4)
        ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(configs, rotation=20, ha="right")
    ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gather(out: str, by_prompt: bool = False, figures: bool = True) -> Dict[str, Any]:
    """Write ``results.csv``, ``results.md`` (and ``results-by-prompt.md``) and ``figures/<metric>.png``.

    Returns:
        ``{"rows", "table", "csv", "figures", "skipped", "missing"}``; ``missing`` lists jobs without metrics.
    """
    from ddpo3d.suite.spec import slugify

    rows, labels, skipped = collect(out)
    metrics = list(labels)
    csv_path = os.path.join(out, "results.csv")
    write_csv(rows, metrics, csv_path)
    table = to_markdown(rows, labels, by_prompt=by_prompt)
    with open(os.path.join(out, "results-by-prompt.md" if by_prompt else "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    paths = []
    if figures and metrics:
        os.makedirs(os.path.join(out, "figures"), exist_ok=True)
        for name in metrics:
            p = os.path.join(out, "figures", f"{slugify(name, 60)}.png")
            plot_metric(rows, name, labels[name], p)
            paths.append(p)
    missing = [r["job_id"] for r in rows if r["state"] != "done"]
    return {"rows": rows, "table": table, "csv": csv_path, "figures": paths, "skipped": skipped, "missing": missing}


__all__ = ["aggregate", "collect", "gather", "load_manifest", "plot_metric", "to_markdown", "write_csv"]
