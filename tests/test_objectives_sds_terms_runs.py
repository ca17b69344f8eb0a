"""reward-tilted, reward-sds and dreamdpo run end to end in reduced shipped configs.

The toy configs (configs/toy/<objective>-brightness.yaml) on the analytic prior, and the objective
blocks (custom/threestudio-ddpo3d/configs/rewards/<objective>-sd.yaml) merged into the stock dreamfusion-sd.yaml on the tiny
offline Stable Diffusion pipeline, with the brightness reward (differentiable, no weights).
"""

import csv
import math
from pathlib import Path

import pytest
from helpers import ROOT, reduced_overrides, tiny_sd  # noqa: F401  (tiny_sd: fixture)

TERMS = {"reward-tilted": "tilt", "reward-sds": "rsds", "dreamdpo": "dpo"}


def _metrics(path: Path) -> dict:
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["split"], r["name"]), []).append(float(r["value"]))
    return rows


@pytest.mark.parametrize("objective", sorted(TERMS))
def test_toy_config_runs_reduced(objective, tmp_path):
    from launch import main

    config = Path(ROOT) / "configs" / "toy" / f"{objective}-brightness.yaml"
    reduced = [
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.enable_progress_bar=false",
        "data.n_val_views=1",
        "data.n_test_views=2",
        "data.width=16",
        "data.height=16",
        "data.eval_width=16",
        "data.eval_height=16",
        "system.renderer.num_samples_per_ray=16",
        "use_timestamp=false",
        f"exp_root_dir={tmp_path}",
        "tag=reduced",
    ]
    assert main(["--config", str(config), "--train", *reduced]) == 0
    metrics = _metrics(next(tmp_path.glob("*/reduced/save/metrics.csv")))
    term = TERMS[objective]
    for key in [("train", f"loss_{term}"), ("train", "loss_sds"), ("test", "reward"), ("test", "psnr")]:
        assert key in metrics and all(math.isfinite(v) for v in metrics[key]), (key, sorted(metrics))


@pytest.mark.slow
@pytest.mark.parametrize("objective", sorted(TERMS))
def test_objective_block_runs_on_the_tiny_sd_pipeline(objective, tiny_sd, tmp_path):  # noqa: F811
    from launch import main

    reward = tmp_path / "brightness.yaml"
    reward.write_text("system:\n  guidance:\n    reward:\n      type: brightness\n")
    argv = ["--config", str(Path(ROOT) / "configs" / "dreamfusion-sd.yaml")]
    argv += [
        "--config",
        str(Path(ROOT) / "custom" / "threestudio-ddpo3d" / "configs" / "rewards" / f"{objective}-sd.yaml"),
        "--config",
        str(reward),
    ]
    extra = ["system.guidance.objective.num_candidates=4"] if objective == "reward-sds" else []
    assert main([*argv, "--train", *reduced_overrides(tiny_sd, tmp_path, steps=2), *extra]) == 0
    metrics = _metrics(next(tmp_path.glob("*/*/save/metrics.csv")))
    term = TERMS[objective]
    assert ("train", f"loss_{term}") in metrics and all(math.isfinite(v) for v in metrics[("train", f"loss_{term}")])
    assert ("test", "reward") in metrics
