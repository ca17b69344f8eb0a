"""Helpers shared by several test modules: the tiny offline pipelines, a per-test text
embedding cache, and the reduced launch.py runs of the shipped configs.

Fixtures here are imported by the modules that use them (``from helpers import tiny_sd``),
keeping their scope (``module``: one build per importing module; the builders reuse a
folder that already holds a pipeline).
"""

from __future__ import annotations

import csv
import glob
import os
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    """Folder of the tiny offline Stable Diffusion pipeline (``ddpo3d.testing.tiny_sd``)."""
    from ddpo3d.testing.tiny_sd import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(str(tmp_path_factory.getbasetemp() / "tiny_sd"))


@pytest.fixture(scope="module")
def tiny_if_path(tmp_path_factory) -> str:
    """Folder of the tiny offline DeepFloyd IF pipeline (``ddpo3d.testing.tiny_if``)."""
    from ddpo3d.testing.tiny_if import build_tiny_if_pipeline

    return build_tiny_if_pipeline(str(tmp_path_factory.getbasetemp() / "tiny_if"))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh text-embedding cache folder (``$DDPO3D_TEXT_EMBEDDING_CACHE``) for one test."""
    d = tmp_path / "emb_cache"
    monkeypatch.setenv("DDPO3D_TEXT_EMBEDDING_CACHE", str(d))
    return d


def reduced_overrides(pipeline: str, root, steps: int = 3, n_val_views: int = 1) -> List[str]:
    """launch.py overrides that shrink a shipped text-to-3D config to a CPU run on a tiny pipeline.

    Args:
        pipeline: the tiny pipeline folder (prompt processor and guidance).
        root: ``exp_root_dir``.
        steps: ``trainer.max_steps`` (validation every 2 steps).
        n_val_views: ``data.n_val_views``.

    Returns:
        the override list (32x32 renders, 16 samples per ray, 2 test views, no timestamp).
    """
    return [
        "system.prompt_processor.prompt=a delicious hamburger",
        f"system.prompt_processor.pretrained_model_name_or_path={pipeline}",
        f"system.guidance.pretrained_model_name_or_path={pipeline}",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "data.width=32",
        "data.height=32",
        "data.eval_width=32",
        "data.eval_height=32",
        f"data.n_val_views={n_val_views}",
        "data.n_test_views=2",
        "system.renderer.num_samples_per_ray=16",
        f"exp_root_dir={root}",
        "use_timestamp=false",
    ]


def train_loss_rows(trial) -> List[Dict[str, str]]:
    """Rows of the trial's CSV log (``csv_logs/version_*/metrics.csv``) that hold ``train/loss_sds``."""
    with open(glob.glob(str(trial / "csv_logs" / "version_*" / "metrics.csv"))[0]) as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss_sds")]


def fake_hf_file(cache, repo_id: str, filename: str, payload: bytes = b"weights") -> str:
    """Write ``filename`` into a Hugging Face hub cache layout (``models--org--name/refs/main``
    naming a snapshot that holds the file), as ``huggingface_hub`` leaves it after a download.

    Args:
        cache: the hub cache folder (a ``pathlib.Path``).
        repo_id: ``org/name``.
        filename: path inside the repository (sub-folders allowed).
        payload: the file's bytes.

    Returns:
        the snapshot file's path.
    """
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "1" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    (snap / filename).parent.mkdir(parents=True, exist_ok=True)
    (snap / filename).write_bytes(payload)
    return str(snap / filename)
