"""The README main job (python -m ddpo3d.demo) runs offline and prints a complete table."""

import io

import numpy as np
from PIL import Image

from ddpo3d import demo


def test_demo_table():
    report = demo.run(size=32, seed=1)
    lines = [ln for ln in report.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 5  # header + one row per image
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[2:6] == ["jpeg-compressibility", "jpeg-incompressibility", "clip-score", "aesthetic"]
    images, names, _ = demo.synthetic_images(32, 1)
    for row, img in zip(lines[1:], images):
        cells = [c.strip() for c in row.strip("|").split("|")]
        buf = io.BytesIO()
        Image.fromarray(np.round(img.numpy() * 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
        assert float(cells[3]) == round(len(buf.getvalue()) / 1000, 4)
        assert float(cells[2]) == -float(cells[3])
        assert float(cells[-1]) > 0  # gradients reach the pixels
    assert "random" in report


def test_demo_main_prints(capsys):
    assert demo.main(["--size", "24"]) == 0
    assert "## ddpo3d reward demo" in capsys.readouterr().out
