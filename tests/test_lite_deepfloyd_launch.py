"""The shipped configs/dreamfusion-if.yaml, reduced, trains and tests to the end through
launch.py on CPU with the tiny offline DeepFloyd IF pipeline (no weights downloaded)."""

import math
import os

import imageio
import pytest
from helpers import ROOT, reduced_overrides, tiny_if_path, train_loss_rows  # noqa: F401  (tiny_if_path: fixture)

CONFIG = os.path.join(ROOT, "configs", "dreamfusion-if.yaml")


def test_config_keeps_threestudio_stock_values():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG)
    assert cfg.system_type == "dreamfusion-system"
    assert cfg.system.prompt_processor_type == "deep-floyd-prompt-processor"
    assert cfg.system.guidance_type == "deep-floyd-guidance"
    assert cfg.system.guidance.pretrained_model_name_or_path == "DeepFloyd/IF-I-XL-v1.0"
    assert cfg.system.guidance.guidance_scale == 20.0 and cfg.system.guidance.weighting_strategy == "sds"
    assert cfg.system.geometry.pos_encoding_config.otype == "ProgressiveBandHashGrid"


def test_without_weights_fails_with_the_weights_message(tmp_path, capsys, monkeypatch):
    import launch

    monkeypatch.setenv("DDPO3D_TEXT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    rc = launch.main(
        [
            "--config",
            CONFIG,
            "--train",
            "system.prompt_processor.prompt=a hamburger",
            "trainer.max_steps=1",
            f"exp_root_dir={tmp_path}",
            "use_timestamp=false",
            "data.width=8",
            "data.height=8",
            "system.renderer.num_samples_per_ray=4",
        ],
        custom_dirs=[],
    )
    err = capsys.readouterr().err
    assert rc != 0
    assert "DeepFloyd/IF-I-XL-v1.0" in err and "were not found" in err


@pytest.mark.slow
def test_reduced_dreamfusion_if_trains_and_tests(tiny_if_path, tmp_path, capsys, monkeypatch):
    import launch

    monkeypatch.setenv("DDPO3D_TEXT_EMBEDDING_CACHE", str(tmp_path / "emb"))
    rc = launch.main(
        ["--config", CONFIG, "--train", "--gpu", "0"] + reduced_overrides(tiny_if_path, tmp_path), custom_dirs=[]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    trial = tmp_path / "dreamfusion-if" / "a_delicious_hamburger"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (trial / "save" / "it2-0.png").is_file()
    video = imageio.mimread(str(trial / "save" / "it3-test.mp4"))
    assert len(video) == 2 and video[0].shape[0] == 32
    rows = train_loss_rows(trial)
    assert len(rows) == 3
    for r in rows:
        for key in ("train/loss_sds", "train/loss", "train/grad_norm", "train/loss_sparsity"):
            assert math.isfinite(float(r[key])), key
        assert float(r["train/min_step"]) == 20 and float(r["train/max_step"]) == 980
