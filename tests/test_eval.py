"""ddpo3d.eval: scoring saved test views of runs."""

import io

import numpy as np
import pytest
from PIL import Image

from ddpo3d.eval.__main__ import main
from ddpo3d.eval.score import find_views, read_run_prompt


def _jpeg_kb(arr: np.ndarray) -> float:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.tell() / 1000.0


def _make_run(root, prompt="a red sphere", steps=(5, 10), n=3, seed=0):
    rng = np.random.default_rng(seed)
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "parsed.yaml").write_text(f"system:\n  prompt_processor:\n    prompt: {prompt}\n")
    arrays = {}
    for step in steps:
        d = root / "save" / f"it{step}-test"
        d.mkdir(parents=True)
        for i in range(n):
            arr = (rng.random((16, 16, 3)) * 255 * (i + 1) / n).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
            arrays[(step, i)] = arr
    return arrays


def test_find_views_uses_latest_test_iteration(tmp_path):
    _make_run(tmp_path)
    views = find_views(tmp_path)
    assert [v.parent.name for v in views] == ["it10-test"] * 3
    assert [v.stem for v in views] == ["0", "1", "2"]
    assert read_run_prompt(tmp_path) == "a red sphere"


def test_eval_cli_jpeg_matches_independent_byte_count(tmp_path, capsys):
    arrays = _make_run(tmp_path)
    out_csv = tmp_path / "table.csv"
    assert main([str(tmp_path), "--metrics", "jpeg", "--csv", str(out_csv)]) == 0
    expected = np.mean([-_jpeg_kb(arrays[(10, i)]) for i in range(3)])
    text = capsys.readouterr().out
    assert "a red sphere" in text and "| jpeg |" in text
    import csv

    row = next(csv.DictReader(open(out_csv)))
    assert float(row["jpeg_mean"]) == pytest.approx(expected, rel=1e-6)
    assert int(row["views"]) == 3


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--metrics", "jpeg"]) == 2
    assert "not found" in capsys.readouterr().err
    _make_run(tmp_path / "run")
    assert main([str(tmp_path / "run"), "--metrics", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err


def test_rgb_views_preferred_and_grids_cropped(tmp_path):
    from ddpo3d.eval.score import load_views

    _make_run(tmp_path, steps=(10,))
    rgb_dir = tmp_path / "save" / "it10-test-rgb"
    rgb_dir.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(rgb_dir / "0.png")
    assert [v.parent.name for v in find_views(tmp_path)] == ["it10-test-rgb"]
    grid = np.concatenate([np.full((8, 8, 3), 200, np.uint8), np.zeros((8, 8, 3), np.uint8)], 1)
    Image.fromarray(grid).save(tmp_path / "grid.png")
    views = load_views([tmp_path / "grid.png"])
    assert views.shape == (1, 8, 8, 3) and float(views.min()) == pytest.approx(200 / 255)
