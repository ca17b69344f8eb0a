"""Metric history of a run: an append-only CSV and a plot of reward and fidelity over steps."""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict

from ddpo3d.utils.typing import Dict, List, Optional, Tuple

FIELDS = ["step", "split", "name", "value"]


class MetricHistory:
    """Rows ``(step, split, name, value)`` appended to ``path`` as they come (nothing lost on interrupt).

    One row per ``(step, split, name)``: writing a value again (``--validate`` / ``--test``
    on a finished run, a resumed run replaying steps) keeps one row, the newest value.
    Non-finite values are written as ``nan`` / ``inf`` so the cause of a failure stays on record.

    Args:
        path: the CSV file; existing rows (a resumed run) are kept and read back.
    """

    def __init__(self, path: str):
        self.path = path
        self.rows: List[Tuple[int, str, str, float]] = []
        self._index: Dict[Tuple[int, str, str], int] = {}
        if os.path.isfile(path):
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    self._put((int(r["step"]), r["split"], r["name"], float(r["value"])))

    def _put(self, row: Tuple[int, str, str, float]) -> bool:
        """Insert or replace a row; ``True`` when an existing row changed."""
        key = row[:3]
        if key in self._index:
            i = self._index[key]
            old = self.rows[i][3]
            if old == row[3] or (math.isnan(old) and math.isnan(row[3])):
                return False
            self.rows[i] = row
            return True
        self._index[key] = len(self.rows)
        self.rows.append(row)
        return False

    def add(self, step: int, split: str, values: Dict[str, float]) -> None:
        """Record scalars (finite or not) for one step and split."""
        new = [(int(step), split, k, float(v)) for k, v in values.items() if v is not None]
        fresh_rows = [r for r in new if r[:3] not in self._index]
        changed = False
        for row in new:
            changed = self._put(row) or changed
        if not fresh_rows and not changed:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if changed:  # a value was replaced: rewrite the file (atomically)
            tmp = self.path + ".tmp"
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(FIELDS)
                w.writerows(self.rows)
            os.replace(tmp, self.path)
            return
        fresh = not os.path.isfile(self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if fresh:
                w.writerow(FIELDS)
            w.writerows(fresh_rows)

    def series(self, split: str, name: str) -> Tuple[List[int], List[float]]:
        """Steps and values of one metric (last value wins per step)."""
        d: Dict[int, float] = {}
        for step, s, n, v in self.rows:
            if s == split and n == name:
                d[step] = v
        steps = sorted(d)
        return steps, [d[s] for s in steps]

    def latest(self, split: str) -> Dict[str, float]:
        """The last value of every metric of a split."""
        out: Dict[str, float] = {}
        for _, s, n, v in self.rows:
            if s == split:
                out[n] = v
        return out

    def plot(self, path: str, title: Optional[str] = None) -> Optional[str]:
        """Reward (train and eval) and fidelity PSNR against steps, one panel each; PNG path or None."""
        panels = []
        reward_keys = [("train", "reward_mean"), ("val", "reward"), ("test", "reward")]
        reward_lines = [(f"{s}/{n}", *self.series(s, n)) for s, n in reward_keys]
        panels.append(("reward", [ln for ln in reward_lines if ln[1]]))
        psnr_lines = [(f"{s}/psnr", *self.series(s, "psnr")) for s in ("val", "test")]
        panels.append(("fidelity PSNR (dB)", [ln for ln in psnr_lines if ln[1]]))
        panels = [p for p in panels if p[1]]
        if not panels:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        groups = defaultdict(list)
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
        for ax, (ylabel, lines) in zip(axes[0], panels):
            for label, xs, ys in lines:
                style = "-" if label.startswith("train") else "o-"
                ax.plot(
                    xs,
                    ys,
                    style,
                    label=label,
                    alpha=0.6 if label.startswith("train") else 1.0,
                    linewidth=1 if label.startswith("train") else 2,
                )
                groups[ylabel].append(label)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
