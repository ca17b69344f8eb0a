"""benchmarks/toy_pareto.py without training: the job list and the two summary lines on made-up runs."""

import argparse
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tp():
    spec = importlib.util.spec_from_file_location("toy_pareto", ROOT / "benchmarks" / "toy_pareto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_cover_every_objective_and_share_the_reward_free_runs(tp):
    from ddpo3d.objectives.combined import OBJECTIVES

    args = argparse.Namespace(strengths=[1.0, 3.0], seeds=3, other_seeds=1)
    jobs = tp.jobs(args)
    labels = {j["label"] for j in jobs}
    assert labels == {"sds" if k == "none" else k for k in OBJECTIVES} | {tp.CONTROL}
    for j in jobs:
        if j["label"] in tp.SHARED:
            assert j["rewards"] == tuple(tp.REWARDS)  # trained once, scored with every reward
        else:
            assert len(j["rewards"]) == 1
        if j["label"] in tp.NEEDS_GRADIENT:
            assert j["rewards"] == ("brightness",)  # JPEG has no gradient
        seeds = {k["seed"] for k in jobs if k["label"] == j["label"]}
        assert seeds == ({0, 1, 2} if j["label"] in tp.CORE else {0})
    keys = [k for j in jobs for k in tp.job_keys(j)]
    assert len(keys) == len(set(keys))
    assert sum(j["label"] == "sds" for j in jobs) == 3 * len(tp.PROMPTS)  # one strength: none


def _rows(label, reward, strength, gains, psnr, base=0.5):
    out = []
    for i, g in enumerate(gains):
        seed, prompt = divmod(i, 2)
        out.append(
            dict(
                reward=reward,
                label=label,
                strength=strength,
                seed=seed,
                prompt=tp_prompts()[prompt],
                reward_value=base + g,
                psnr=psnr,
                grad_ratio_logged=strength or 0.0,
            )
        )
    return out


def tp_prompts():
    return ("a red sphere", "a blue cube")


def test_summary_lines_pick_the_best_point_within_the_fidelity_margin(tp, tmp_path):
    zero = [0.0] * 6
    rows = []
    for reward in ("brightness", "jpeg"):
        rows += _rows("sds", reward, None, zero, 30.0)
        rows += _rows(tp.CONTROL, reward, 1.0, [0.001, -0.001, 0.002, -0.002, 0.0, 0.001], 29.5)
        rows += _rows(tp.CONTROL, reward, 3.0, [0.001, -0.001, 0.002, -0.002, 0.0, 0.001], 29.0)
    # the pg: 0.01 at strength 1 (fidelity kept), 0.05 at 3 (fidelity lost: 20 dB < 27 dB)
    rows += _rows(tp.PG, "brightness", 1.0, [0.010, 0.011, 0.009, 0.010, 0.012, 0.008], 29.0)
    rows += _rows(tp.PG, "brightness", 3.0, [0.05] * 6, 20.0)
    rows += _rows("reward-backprop", "brightness", 1.0, [0.020, 0.021, 0.019, 0.020, 0.022, 0.018], 28.0)
    jpeg_pg = [0.010, 0.012, 0.008, 0.011, 0.009, 0.010]
    rows += _rows(tp.PG, "jpeg", 1.0, jpeg_pg, 29.0)
    lines = tp.summarise(rows, tmp_path)
    x = float(lines[-2].rsplit(":", 1)[1])
    assert x == pytest.approx(0.010 / 0.020, abs=1e-3)
    control = [0.001, -0.001, 0.002, -0.002, 0.0, 0.001]
    diffs = [a - b for a, b in zip(jpeg_pg, control)]
    m = sum(diffs) / 6
    se = math.sqrt(sum((d - m) ** 2 for d in diffs) / 5 / 6)
    z = float(lines[-1].rsplit(":", 1)[1].split()[0])
    assert z == pytest.approx(m / se, abs=0.01)
    assert lines[-2].startswith("pareto brightness: pg gain / backprop gain at fidelity >= 0.9 x sds: ")
    assert lines[-1].endswith(" standard errors")
    assert (tmp_path / "pareto-brightness.png").is_file() and (tmp_path / "pareto-jpeg.png").is_file()


def test_no_backprop_point_gives_nan_not_zero(tp, tmp_path):
    rows = _rows("sds", "brightness", None, [0.0] * 6, 30.0)
    rows += _rows(tp.PG, "brightness", 1.0, [0.01] * 6, 29.0)
    lines = tp.summarise(rows, tmp_path)
    assert lines[-2].endswith(": nan")
