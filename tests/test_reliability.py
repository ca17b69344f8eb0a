"""Reliability as a user meets it: bad rewards, errors, Ctrl-C and resume on the toy world;
trial folders never overwritten; long and empty prompts; export; messages."""

from __future__ import annotations

import csv
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import cache_dir, tiny_sd  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "configs", "toy", "ddpo-brightness.yaml")
#: the README main job shrunk: 16x16 renders, 16 samples per ray, K=4 actions, no timestamp
SMALL = [
    "data.width=16",
    "data.height=16",
    "data.eval_width=16",
    "data.eval_height=16",
    "data.n_val_views=1",
    "data.n_test_views=2",
    "system.renderer.num_samples_per_ray=16",
    "system.guidance.objective.num_samples=4",
    "trainer.enable_progress_bar=false",
    "use_timestamp=false",
]


def _launch(root, *extra, mode="--train", steps=4, config=TOY):
    """``python launch.py`` in a subprocess (real signals, real exit status)."""
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--config", config, mode]
    cmd += SMALL + [f"exp_root_dir={root}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), DDPO3D_HOST="lite")
    return subprocess.run(cmd + list(extra), capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _rows(path):
    with open(path) as f:
        return {(int(r["step"]), r["split"], r["name"]): float(r["value"]) for r in csv.DictReader(f)}


def _finite_ckpt(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    bad = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    return ckpt, bad


def _reward(target, **kwargs):
    kw = ", ".join(f"{k}: {v}" for k, v in kwargs.items())
    return f'system.guidance.reward={{type: python, target: "ddpo3d.testing.rewards:{target}", kwargs: {{{kw}}}}}'


# ------------------------------------------------------------------------------------ toy runs
@pytest.mark.slow
def test_nan_reward_skips_steps_then_stops_naming_the_reward(tmp_path):
    reward = 'system.guidance.reward={type: python, target: "ddpo3d.testing.rewards:nan_reward"}'
    r = _launch(tmp_path, reward, "tag=t", steps=8)
    assert r.returncode == 1
    (err,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "5 consecutive steps skipped" in err
    assert "the reward 'python' (ddpo3d.testing.rewards:nan_reward) returned non-finite values (nan)" in err
    trial = tmp_path / "toy-ddpo-brightness" / "t"
    ckpt, bad = _finite_ckpt(trial / "ckpts" / "last.ckpt")
    assert bad == [] and ckpt["global_step"] == 5
    rows = _rows(trial / "save" / "metrics.csv")
    assert rows[(4, "train", "skipped_steps")] == 4.0 and rows[(1, "train", "skipped_reward")] == 1.0
    assert math.isnan(rows[(0, "val", "reward")])  # the non-finite eval reward is on record


@pytest.mark.slow
def test_a_reward_that_raises_is_named_after_last_ckpt_is_written(tmp_path):
    r = _launch(tmp_path, _reward("raise_at_call", at=3), "tag=t")
    assert r.returncode == 1
    (err,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "reward 'python' (ddpo3d.testing.rewards:raise_at_call) raised ConnectionError: reward server" in err
    last = tmp_path / "toy-ddpo-brightness" / "t" / "ckpts" / "last.ckpt"
    assert f"resume={last}" in err
    ckpt, bad = _finite_ckpt(last)
    assert ckpt["global_step"] == 1 and bad == []  # call 1 scores the sanity validation, call 3 is step 1


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(tmp_path):
    """Ctrl-C during step 3 (the reward sends SIGINT on its 5th call) exits 130 after writing
    last.ckpt at step 4; resuming gives the same save/metrics.csv rows as a run never stopped."""
    marker = tmp_path / "interrupted"
    full = _launch(tmp_path, _reward("interrupt_at_call", at=-1), "tag=full", steps=8)
    assert full.returncode == 0, full.stderr[-2000:]
    cut = _launch(tmp_path, _reward("interrupt_at_call", at=5, marker=marker), "tag=cut", steps=8)
    assert cut.returncode == 130, cut.stderr[-2000:]
    trial = tmp_path / "toy-ddpo-brightness" / "cut"
    assert "interrupted at step 4" in cut.stderr
    assert torch.load(trial / "ckpts" / "last.ckpt", weights_only=False)["global_step"] == 4
    resumed = _launch(
        tmp_path,
        _reward("interrupt_at_call", at=5, marker=marker),
        "tag=cut",
        f"resume={trial / 'ckpts' / 'last.ckpt'}",
        steps=8,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(os.listdir(trial / "ckpts")) == ["epoch=0-step=8.ckpt", "last.ckpt"]  # no last-v1.ckpt
    assert torch.load(trial / "ckpts" / "last.ckpt", weights_only=False)["global_step"] == 8
    a = _rows(tmp_path / "toy-ddpo-brightness" / "full" / "save" / "metrics.csv")
    b = _rows(trial / "save" / "metrics.csv")
    after = [k for k in a if k[0] > 4 and k[2] != "elapsed_s"]
    assert len(after) > 60 and {k[1] for k in after} == {"train", "val", "test"}
    for key in after:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-12), key


@pytest.mark.slow
def test_export_finds_the_surface_of_the_main_job(tmp_path):
    assert _launch(tmp_path, "tag=t", steps=2).returncode == 0
    last = tmp_path / "toy-ddpo-brightness" / "t" / "ckpts" / "last.ckpt"
    r = _launch(
        tmp_path, "tag=t", f"resume={last}", "system.geometry.isosurface_resolution=32", mode="--export", steps=2
    )
    assert r.returncode == 0, r.stderr[-2000:]
    import trimesh

    mesh = trimesh.load(tmp_path / "toy-ddpo-brightness" / "t" / "save" / "it2-export" / "model.obj", process=False)
    assert len(mesh.faces) > 100


# ---------------------------------------------------------------------- trial folders (lite)
def _main(*args):
    import launch

    return launch.main(list(args))


def test_a_typo_never_touches_an_existing_trial_and_a_clash_names_the_folder(tmp_path, capsys):
    trial = tmp_path / "toy-ddpo-brightness" / "keep"
    (trial / "configs").mkdir(parents=True)
    (trial / "configs" / "parsed.yaml").write_text("mine\n")
    (trial / "cmd.txt").write_text("mine\n")
    base = ["--config", TOY, "--train", *SMALL, f"exp_root_dir={tmp_path}", "tag=keep"]
    assert _main(*base, "system.guidance.objectiv.type=none") == 1
    assert "Unknown config key 'objectiv'" in capsys.readouterr().err
    assert _main(*base, "system.guidance.reward={type: brightness, gain: 2}") == 1
    assert "it takes no options" in capsys.readouterr().err
    assert _main(*base) == 1  # valid, but the folder holds another run
    err = capsys.readouterr().err
    assert f"The trial folder {trial} already holds a run" in err and "nothing was written" in err
    assert (trial / "configs" / "parsed.yaml").read_text() == "mine\n" and (trial / "cmd.txt").read_text() == "mine\n"
    assert sorted(os.listdir(trial)) == ["cmd.txt", "configs"]


def test_a_clash_with_timestamps_goes_to_a_new_folder(tmp_path):
    from ddpo3d.lite.experiment import load_config, prepare_trial_dir

    cfg = load_config(TOY, cli_args=[f"exp_root_dir={tmp_path}", "timestamp='@x'"], makedirs=False)
    os.makedirs(os.path.join(cfg.trial_dir, "ckpts"))
    first = cfg.trial_dir
    assert prepare_trial_dir(cfg, "train") == first + "-1" and os.path.isdir(first + "-1")
    assert prepare_trial_dir(load_config(TOY, cli_args=[f"exp_root_dir={tmp_path}", "timestamp='@x'"]), "test") == first


@pytest.mark.parametrize("value", ["", "''", "'   '"])
def test_empty_prompts_are_an_error_naming_the_key(tmp_path, capsys, value):
    base = ["--config", TOY, "--train", *SMALL, f"exp_root_dir={tmp_path}", "tag=e"]
    assert _main(*base, f"system.prompt_processor.prompt={value}") == 1
    assert "error: system.prompt_processor.prompt is empty" in capsys.readouterr().err
    assert not (tmp_path / "toy-ddpo-brightness").exists()


def test_a_long_prompt_gets_a_short_folder_name_with_a_hash(tmp_path, caplog):
    from ddpo3d.lite.experiment import load_config
    from ddpo3d.utils.prompts import MAX_TRIAL_NAME, short_trial_name

    long = " ".join(["a red sphere"] * 170)
    with caplog.at_level(logging.INFO, logger="ddpo3d"):
        cfg = load_config(TOY, cli_args=[f"system.prompt_processor.prompt={long}", f"exp_root_dir={tmp_path}"])
    name = os.path.basename(cfg.trial_dir)
    assert len(name.split("@")[0].encode()) <= MAX_TRIAL_NAME and os.path.isdir(cfg.trial_dir)
    assert "trial folder is named" in caplog.text
    other, _ = short_trial_name(long.replace("sphere", "cube", 1) + " x")
    assert other != name.split("@")[0] and short_trial_name("a_red_sphere") == ("a_red_sphere", False)


def test_long_prompts_keep_their_view_phrases_within_the_token_limit(tiny_sd, cache_dir, caplog):
    from transformers import CLIPTokenizer

    from ddpo3d import lite

    long = "a red sphere " + " ".join(f"with detail number {i}" for i in range(40))
    with caplog.at_level(logging.WARNING, logger="ddpo3d"):
        pp = lite.find("stable-diffusion-prompt-processor")(
            {"prompt": long, "pretrained_model_name_or_path": tiny_sd, "spawn": False}
        )
    tok = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    assert pp.prompt != long and long.startswith(pp.prompt)
    for p, suffix in zip(pp.prompts_vd, ["side view", "front view", "back view", "overhead view"]):
        assert p.endswith(", " + suffix) and len(tok(p).input_ids) <= tok.model_max_length
    assert "cut [" in caplog.text and "detail number 39" in caplog.text


def test_fit_prompt_cuts_whole_words_only():
    from ddpo3d.utils.prompts import fit_prompt

    kept, cut = fit_prompt("a b c d e f", [lambda s: s + ", side view"], lambda s: len(s.split()) + 2, 7)
    assert (kept, cut) == ("a b c", "d e f")  # "a b c, side view" is 5 words + 2 special tokens
    assert fit_prompt("a b", [lambda s: s + ", side view"], lambda s: len(s.split()) + 2, 77) == ("a b", None)


# ---------------------------------------------------------------------------------- messages
def test_malformed_yaml_keeps_the_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsystem:\n  a: [1, 2\n  b: 3\n")
    assert _main("--config", str(bad), "--train") == 1
    err = capsys.readouterr().err
    assert "line 3, column" in err and "line 4, column" in err


def test_negative_lambda_ddpo_gets_a_notice(caplog):
    from ddpo3d.training_guard import warn_negative_reward_weights

    with caplog.at_level(logging.WARNING, logger="ddpo3d"):
        assert warn_negative_reward_weights({"lambda_sds": 1.0, "lambda_ddpo": -3000.0}) == ["lambda_ddpo"]
        assert warn_negative_reward_weights({"lambda_reward": [0, 1.0, -1.0, 100]}) == ["lambda_reward"]
        assert warn_negative_reward_weights({"lambda_ddpo": 3000.0}) == []
    assert "MINIMISES the reward" in caplog.text


def test_metric_history_keeps_one_row_per_key_and_records_nonfinite_values(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ddpo3d_metrics", os.path.join(ROOT, "custom", "threestudio-ddpo3d", "systems", "metrics.py")
    )
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    path = str(tmp_path / "metrics.csv")
    h = metrics.MetricHistory(path)
    h.add(300, "test", {"reward": 0.8, "psnr": 23.1})
    h.add(300, "test", {"reward": 0.8, "psnr": 23.1})  # --test again on the same checkpoint
    h.add(5, "train", {"reward_mean": float("nan"), "loss": float("inf")})
    h.add(300, "test", {"psnr": 23.2})  # a new value replaces the old one
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 4
    again = metrics.MetricHistory(path)
    assert again.latest("test") == {"reward": 0.8, "psnr": 23.2}
    assert math.isnan(again.latest("train")["reward_mean"]) and again.latest("train")["loss"] == math.inf


def test_rewards_raise_on_nonfinite_scores_only_inside_a_training_step():
    from ddpo3d.rewards import build_reward
    from ddpo3d.utils.finite import NonFiniteError, finite_rewards_required

    reward = build_reward({"type": "python", "target": "ddpo3d.testing.rewards:nan_reward"})
    images = torch.rand(2, 4, 4, 3)
    assert torch.isnan(reward(images, ["a", "b"])).all()  # evaluation: logged as NaN
    with finite_rewards_required(), pytest.raises(NonFiniteError, match=r"'python' \(ddpo3d.testing"):
        reward(images, ["a", "b"])


def test_stat_tracker_ignores_nonfinite_rewards_and_round_trips():
    from ddpo3d.objectives.stat_tracker import PerPromptStatTracker

    t = PerPromptStatTracker(4, 2)
    t.update(["p", "p"], torch.tensor([1.0, float("nan")]))
    assert t.get_stats()["p"]["count"] == 1
    t.update(["p", "q"], torch.tensor([3.0, 5.0]))
    u = PerPromptStatTracker(4, 2)
    u.load_state_dict(t.state_dict())
    x = torch.tensor([2.0, 4.0])
    assert torch.equal(u.update(["p", "q"], x), t.update(["p", "q"], x))


def test_eval_accepts_brightness_and_names_the_test_step(tmp_path, capsys):
    import imageio

    from ddpo3d.eval.__main__ import main

    for step in (100, 300):
        d = tmp_path / "save" / f"it{step}-test-rgb"
        d.mkdir(parents=True)
        for i in range(2):
            imageio.imwrite(d / f"{i}.png", (torch.full((8, 8, 3), 0.5 if step == 300 else 1.0) * 255).byte().numpy())
    assert main([str(tmp_path), "--metrics", "brightness", "--prompt", "a red sphere"]) == 0
    out = capsys.readouterr()
    assert "scored 2 views of test step 300" in out.err and "it300-test-rgb" in out.err
    assert "| test step |" in out.out and "| 300 | 2 | 0.498" in out.out
