"""ddpo3d.training_guard on the built-in runtime with the test doubles: non-finite values never
reach the parameters, exceptions write last.ckpt and name the component, checkpoints are finite."""

from __future__ import annotations

import csv
import glob
import os

import lite_doubles
import pytest
import torch

from ddpo3d.lite.experiment import load_config
from ddpo3d.lite.trainer import run_experiment
from ddpo3d.training_guard import (
    NonFiniteError,
    TrainingGuard,
    collect_extra_state,
    format_training_error,
    nonfinite_tensors,
    restore_extra_state,
)


def _cfg(tmp_path, max_steps=4, overrides=(), **system):
    base = [
        "checkpoint.every_n_train_steps=1",
        "checkpoint.save_top_k=-1",
        "checkpoint.save_last=true",
        "trainer.val_check_interval=100",
    ]
    return load_config(
        lite_doubles.experiment_yaml(str(tmp_path), max_steps=max_steps, **system),
        cli_args=base + list(overrides),
        from_string=True,
        makedirs=False,
    )


def _ckpt(cfg, step):
    return torch.load(
        os.path.join(cfg.trial_dir, "ckpts", f"epoch=0-step={step}.ckpt"), map_location="cpu", weights_only=False
    )


def _opt_state(ckpt):
    return {(k, n): torch.as_tensor(v) for k, s in ckpt["optimizer_states"][0]["state"].items() for n, v in s.items()}


def _logged(cfg, key):
    path = glob.glob(os.path.join(cfg.trial_dir, "csv_logs", "version_*", "metrics.csv"))[0]
    with open(path) as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.parametrize("kind", ["nan_loss_steps", "nan_grad_steps"])
def test_a_nonfinite_loss_or_gradient_leaves_parameters_and_optimizer_state_untouched(tmp_path, kind):
    cfg = _cfg(tmp_path, guidance={kind: [2]})
    result = run_experiment(cfg, "train")
    before, after, later = _ckpt(cfg, 2), _ckpt(cfg, 3), _ckpt(cfg, 4)
    for name, value in before["state_dict"].items():  # step index 2 was skipped
        assert torch.equal(value, after["state_dict"][name]), name
    sb, sa, sl = _opt_state(before), _opt_state(after), _opt_state(later)
    assert sb.keys() == sa.keys() and all(torch.equal(sb[k], sa[k]) for k in sb)
    assert any(not torch.equal(sa[k], sl[k]) for k in sa)  # the next step trains again
    guard = result["system"].training_guard
    assert guard.skipped_steps == 1 and guard.consecutive == 0
    assert _logged(cfg, "train/skipped_steps")[0] == (2, 1.0)
    for step in (2, 3, 4):
        assert not nonfinite_tensors(_ckpt(cfg, step))


def test_consecutive_skips_stop_the_run_with_one_message_and_a_finite_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, max_steps=10, guidance={"nan_loss_steps": list(range(1, 10))}, max_consecutive_skips=3)
    with pytest.raises(NonFiniteError, match=r"3 consecutive steps skipped \(steps 2-4\)") as info:
        run_experiment(cfg, "train")
    assert "max_consecutive_skips" in str(info.value)
    last = torch.load(os.path.join(cfg.trial_dir, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert last["global_step"] == 4 and not nonfinite_tensors(last)
    first = _ckpt(cfg, 1)
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in first["state_dict"].items())


def test_an_exception_writes_last_ckpt_first_and_names_the_component(tmp_path):
    cfg = _cfg(tmp_path, max_steps=6, guidance={"raise_at_step": 3})
    with pytest.raises(ValueError, match="on purpose") as info:
        run_experiment(cfg, "train")
    exc = info.value
    assert exc.ddpo3d_component == "guidance 'test-mse-guidance'"
    path = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    assert exc.ddpo3d_checkpoint == path
    assert torch.load(path, map_location="cpu", weights_only=False)["global_step"] == 3
    line = format_training_error(exc)
    assert line.startswith("guidance 'test-mse-guidance' raised ValueError: test guidance failed on purpose")
    assert f"resume={path}" in line


def test_checkpoints_with_nonfinite_tensors_are_refused():
    ckpt = {"state_dict": {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, "optimizer_states": []}
    assert nonfinite_tensors(ckpt) == ["state_dict.b"]
    with pytest.raises(NonFiniteError, match="state_dict.b"):
        TrainingGuard().on_save_checkpoint(None, None, ckpt)
    ckpt["state_dict"]["b"] = torch.zeros(2)
    ckpt["optimizer_states"] = [{"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}]
    assert nonfinite_tensors(ckpt) == ["optimizer_states[0].state.0.exp_avg"]


def test_extra_state_round_trips_generators_and_stat_trackers():
    from ddpo3d.objectives.stat_tracker import PerPromptStatTracker

    class Objective:
        def __init__(self):
            self.tracker = PerPromptStatTracker(4, 2)

    class Guidance:
        def __init__(self):
            self.generator = torch.Generator().manual_seed(0)
            self.objective = Objective()

    class System:
        def __init__(self):
            self.guidance = Guidance()

    a = System()
    torch.rand(3, generator=a.guidance.generator)
    a.guidance.objective.tracker.update(["p"] * 3, torch.tensor([1.0, 2.0, 3.0]))
    state = collect_extra_state(a)
    assert set(state) == {"guidance.generator", "guidance.objective.tracker"}
    b = System()
    assert restore_extra_state(b, state) == []
    assert torch.equal(torch.rand(2, generator=a.guidance.generator), torch.rand(2, generator=b.guidance.generator))
    assert b.guidance.objective.tracker.get_stats() == a.guidance.objective.tracker.get_stats()
