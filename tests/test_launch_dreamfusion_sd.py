"""The shipped configs/dreamfusion-sd.yaml, reduced, trains and tests to the end through
launch.py on CPU with the tiny offline Stable Diffusion pipeline (no weights downloaded)."""

import csv
import glob
import math
import os

import imageio
import pytest

import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from ddpo3d.testing.tiny_sd import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(str(tmp_path_factory.mktemp("tiny-sd") / "pipe"))


def reduced_overrides(pipeline, root, steps=3):
    return [
        "system.prompt_processor.prompt=a delicious hamburger",
        f"system.prompt_processor.pretrained_model_name_or_path={pipeline}",
        f"system.guidance.pretrained_model_name_or_path={pipeline}",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32",
        "data.n_val_views=2", "data.n_test_views=2",
        "system.renderer.num_samples_per_ray=16",
        f"exp_root_dir={root}", "use_timestamp=false",
    ]


@pytest.mark.slow
def test_reduced_dreamfusion_sd_trains_tests_and_exports(tiny_sd, tmp_path, capsys):
    rc = launch.main(["--config", os.path.join(ROOT, "configs", "dreamfusion-sd.yaml"), "--train", "--gpu", "0"]
                     + reduced_overrides(tiny_sd, tmp_path), custom_dirs=[])
    err = capsys.readouterr().err
    assert rc == 0, err
    trial = tmp_path / "dreamfusion-sd" / "a_delicious_hamburger"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (trial / "configs" / "parsed.yaml").is_file()
    assert sorted(os.path.basename(p) for p in glob.glob(str(trial / "save" / "it2-*.png"))) == ["it2-0.png", "it2-1.png"]
    video = imageio.mimread(str(trial / "save" / "it3-test.mp4"))
    assert len(video) == 2 and video[0].shape[0] == 32
    with open(glob.glob(str(trial / "csv_logs" / "version_*" / "metrics.csv"))[0]) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_sds")]
    assert len(rows) == 3
    assert all(math.isfinite(float(r["train/loss_sds"])) and math.isfinite(float(r["train/loss"])) for r in rows)
    # export a mesh from the checkpoint (coarse grid keeps it quick)
    rc = launch.main(["--config", str(trial / "configs" / "parsed.yaml"), "--export",
                      f"resume={trial / 'ckpts' / 'last.ckpt'}", "system.geometry.isosurface_resolution=32",
                      "system.geometry.isosurface_threshold=auto"], custom_dirs=[])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert os.path.getsize(trial / "save" / "it3-export" / "model.obj") > 0
