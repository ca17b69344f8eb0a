"""The Gaussian-splatting configs run reduced on CPU through ``launch.py``'s ``main(argv)``:
DreamGaussian-/GSGen-style SD configs on a tiny SD pipeline and a tiny aesthetic reward, the
toy-world Gaussian configs on the analytic prior; and the toy world with Gaussians raises
fidelity PSNR over a short seeded run."""

import csv
import math
from pathlib import Path

import pytest
import torch

from ddpo3d.gaussians import load_gaussians_ply
from ddpo3d.testing.tiny_clip import TINY_CLIP_NAME, register_tiny_clip, write_aesthetic_head
from ddpo3d.testing.tiny_sd import build_tiny_sd_pipeline

ROOT = Path(__file__).resolve().parents[1]
EXT_CONFIGS = ROOT / "custom" / "threestudio-ddpo3d" / "configs"
SD_CONFIGS = [EXT_CONFIGS / "dreamgaussian-ddpo.yaml", EXT_CONFIGS / "gsgen-ddpo.yaml"]
TOY_CONFIGS = sorted((ROOT / "configs" / "toy").glob("gaussian-*.yaml"))
STEPS = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    register_tiny_clip()
    return {"sd": build_tiny_sd_pipeline(str(root / "tiny-sd")), "head": write_aesthetic_head(str(root / "head.pth"))}


def run_args(out: Path, steps: int = STEPS) -> list:
    """Run-size reductions shared by every config (a fresh output folder, few steps and views)."""
    return [
        f"exp_root_dir={out}",
        "use_timestamp=false",
        "tag=reduced",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "trainer.enable_progress_bar=false",
        "data.n_val_views=1",
        "data.n_test_views=2",
        "data.eval_width=32",
        "data.eval_height=32",
    ]


def gaussian_args(num_points: int = 300) -> list:
    """Fewer Gaussians, and a densification at step 2 with every seen Gaussian selected
    (threshold 0), capped, so the system's densify hooks run inside the reduced run."""
    return [
        f"system.geometry.num_points={num_points}",
        "system.geometry.densify_from_iter=1",
        "system.geometry.densification_interval=2",
        "system.geometry.densify_until_iter=3",
        "system.geometry.densify_grad_threshold=0.0",
        f"system.geometry.max_num_points={num_points + 100}",
        "system.renderer.tile_size=8",
    ]


def sd_args(tiny) -> list:
    """Tiny local SD pipeline and aesthetic reward; three resolution stages 16 -> 24 -> 32 px
    (width, height, batch size and milestones overridden together, as threestudio requires)."""
    return [
        "system.prompt_processor.prompt=a hamburger",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny['sd']}",
        f"system.guidance.pretrained_model_name_or_path={tiny['sd']}",
        "system.guidance.half_precision_weights=false",
        "system.guidance.objective.num_samples=2",
        f"system.guidance.reward.clip_model={TINY_CLIP_NAME}",
        "system.guidance.reward.clip_pretrained=null",
        "system.guidance.reward.allow_random_init=true",
        f"system.guidance.reward.head_path={tiny['head']}",
        "data.width=[16,24,32]",
        "data.height=[16,24,32]",
        "data.batch_size=[2,2,2]",
        "data.resolution_milestones=[1,2]",
    ]


def read_metrics(path: Path) -> dict:
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["split"], r["name"]), []).append((int(r["step"]), float(r["value"])))
    return rows


def check_run(out: Path, steps: int, loss_terms: list, sh_degree: int, num_points: int = 300) -> dict:
    """The common assertions: outputs written, losses finite, densification logged once and
    consistent with the saved PLY. Returns the metrics."""
    trial = next(out.glob("*/reduced"))
    save = trial / "save"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (save / f"it{steps}-test.mp4").is_file()
    assert sorted(p.name for p in (save / f"it{steps}-test-rgb").glob("*.png")) == ["0.png", "1.png"]
    metrics = read_metrics(save / "metrics.csv")
    for term in ["loss", *loss_terms]:
        values = [v for _, v in metrics.get(("train", term), [])]
        assert len(values) == steps and all(math.isfinite(v) for v in values), (term, sorted(metrics))
    # densification at step 2 only (threshold 0: every seen Gaussian cloned or split, capped)
    densified = metrics[("train", "densify_num_points")]
    assert len(densified) == 1, densified  # logged on its step, not repeated afterwards
    n_after = int(densified[0][1])
    counts = {k: int(metrics[("train", f"densify_{k}")][0][1]) for k in ("cloned", "split", "pruned")}
    assert counts["cloned"] + counts["split"] > 0
    # a clone adds one Gaussian, a split replaces one by two (split_num 2)
    assert n_after == num_points + counts["cloned"] + counts["split"] - counts["pruned"], counts
    ply = load_gaussians_ply(str(save / f"it{steps}-gaussians.ply"))
    assert ply["means"].shape == (n_after, 3) and ply["sh_degree"] == sh_degree
    for key in ("means", "sh0", "opacity_logits", "log_scales", "quats"):
        assert torch.isfinite(ply[key]).all(), key
    return metrics


@pytest.mark.parametrize("config", SD_CONFIGS, ids=[c.stem for c in SD_CONFIGS])
def test_sd_gaussian_config_trains_reduced(config, tiny, tmp_path):
    from launch import main

    argv = ["--config", str(config), "--train", "--gpu", "0", *run_args(tmp_path), *gaussian_args(), *sd_args(tiny)]
    assert main(argv) == 0
    metrics = check_run(tmp_path, STEPS, ["loss_sds", "loss_ddpo"], sh_degree=1 if "gsgen" in config.stem else 0)
    for key in [("train", "reward_mean"), ("val", "reward"), ("test", "reward")]:
        assert key in metrics and all(math.isfinite(v) for _, v in metrics[key]), (key, sorted(metrics))
    parsed = next(tmp_path.glob("*/reduced/configs/parsed.yaml")).read_text()
    assert "ddpo3d-gaussian-splat" in parsed


@pytest.mark.parametrize("config", TOY_CONFIGS, ids=[c.stem for c in TOY_CONFIGS])
def test_toy_gaussian_config_trains_reduced(config, tmp_path):
    from launch import main

    argv = ["--config", str(config), "--train", *run_args(tmp_path), *gaussian_args(),
            "data.width=16", "data.height=16"]
    assert main(argv) == 0
    terms = ["loss_sds", "loss_ddpo"] if "ddpo" in config.stem else ["loss_sds"]
    metrics = check_run(tmp_path, STEPS, terms, sh_degree=0)
    assert all(math.isfinite(v) for _, v in metrics[("test", "psnr")])


def test_toy_gaussians_raise_fidelity_psnr(tmp_path):
    """configs/toy/gaussian-sds.yaml, 80 seeded steps at 32² from 1000 Gaussians (densifying at
    steps 20, 40, 60 with the shipped threshold): the test-view PSNR against the toy object rises
    by at least 10 dB over the initial Gaussians' (validation at step 0 on the same two-view
    turntable). Measured: 12.9 -> 29.0 dB (+16.1), about 15 s on one core."""
    from launch import main

    config = ROOT / "configs" / "toy" / "gaussian-sds.yaml"
    args = [f"exp_root_dir={tmp_path}", "use_timestamp=false", "tag=fit", "trainer.max_steps=80",
            "trainer.val_check_interval=80", "trainer.num_sanity_val_steps=2", "trainer.enable_progress_bar=false",
            "data.n_val_views=2", "data.n_test_views=2", "data.eval_width=32", "data.eval_height=32",
            "system.geometry.num_points=1000", "system.geometry.densify_from_iter=10",
            "system.geometry.densification_interval=20", "system.geometry.densify_until_iter=70"]
    assert main(["--config", str(config), "--train", *args]) == 0
    metrics = read_metrics(next(tmp_path.glob("*/fit/save/metrics.csv")))
    before = dict(metrics[("val", "psnr")])[0]
    after = metrics[("test", "psnr")][-1][1]
    assert after > before + 10.0, (before, after)
    assert len(metrics[("train", "densify_num_points")]) == 3  # densified at 20, 40, 60
