"""The shipped configs/dreamfusion-sd.yaml, reduced, trains and tests to the end through
launch.py on CPU with the tiny offline Stable Diffusion pipeline (no weights downloaded)."""

import glob
import math
import os

import imageio
import pytest
from helpers import ROOT, reduced_overrides, tiny_sd, train_loss_rows  # noqa: F401  (tiny_sd: fixture)

import launch


@pytest.mark.slow
def test_reduced_dreamfusion_sd_trains_tests_and_exports(tiny_sd, tmp_path, capsys):
    rc = launch.main(
        ["--config", os.path.join(ROOT, "configs", "dreamfusion-sd.yaml"), "--train", "--gpu", "0"]
        + reduced_overrides(tiny_sd, tmp_path, n_val_views=2),
        custom_dirs=[],
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    trial = tmp_path / "dreamfusion-sd" / "a_delicious_hamburger"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (trial / "configs" / "parsed.yaml").is_file()
    assert sorted(os.path.basename(p) for p in glob.glob(str(trial / "save" / "it2-*.png"))) == [
        "it2-0.png",
        "it2-1.png",
    ]
    video = imageio.mimread(str(trial / "save" / "it3-test.mp4"))
    assert len(video) == 2 and video[0].shape[0] == 32
    rows = train_loss_rows(trial)
    assert len(rows) == 3
    assert all(math.isfinite(float(r["train/loss_sds"])) and math.isfinite(float(r["train/loss"])) for r in rows)
    # export a mesh from the checkpoint (coarse grid keeps it quick)
    rc = launch.main(
        [
            "--config",
            str(trial / "configs" / "parsed.yaml"),
            "--export",
            f"resume={trial / 'ckpts' / 'last.ckpt'}",
            "system.geometry.isosurface_resolution=32",
            "system.geometry.isosurface_threshold=auto",
            # threestudio's default obj-mtl needs xatlas / nvdiffrast; the built-in runtime writes OBJ
            "system.exporter.fmt=obj",
            "system.exporter.save_uv=false",
        ],
        custom_dirs=[],
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert os.path.getsize(trial / "save" / "it3-export" / "model.obj") > 0
