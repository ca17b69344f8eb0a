"""dreamfusion-system on the built-in runtime with test-double models: a tiny end-to-end run
(checkpoint, validation grids, test video, CSV log), loss weights by name, the update hooks,
Ctrl-C checkpointing, mesh export and resuming."""

import csv
import glob
import math
import os
import signal

import imageio
import lite_doubles
import numpy as np
import pytest
import torch

from ddpo3d import lite
from ddpo3d.lite.experiment import load_config
from ddpo3d.lite.trainer import run_experiment
from ddpo3d.utils.config import ConfigError

# threestudio's exporter defaults (obj-mtl with UVs) need xatlas / nvdiffrast; the runtime writes plain OBJ
OBJ_EXPORT = ("system.exporter.fmt=obj", "system.exporter.save_uv=false")


def _cfg(tmp_path, max_steps=3, overrides=(), **system):
    return load_config(
        lite_doubles.experiment_yaml(str(tmp_path), max_steps=max_steps, **system),
        cli_args=list(overrides),
        from_string=True,
    )


def _metrics(trial_dir):
    path = glob.glob(os.path.join(trial_dir, "csv_logs", "version_*", "metrics.csv"))
    assert path, "no CSV log written"
    with open(path[0]) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the output tests (3 steps at 16x16, val every 2)."""
    root = tmp_path_factory.mktemp("run")
    cfg = load_config(lite_doubles.experiment_yaml(str(root), max_steps=3), from_string=True)
    result = run_experiment(cfg, "train")
    return cfg, result


def test_train_writes_threestudio_outputs(trained):
    cfg, _ = trained
    trial = cfg.trial_dir
    assert trial.endswith(os.path.join("tiny", "a_red_ball"))  # tag from ${rmspace:prompt,_}
    assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
    assert os.path.isfile(os.path.join(trial, "configs", "parsed.yaml"))
    for i in range(2):  # validation grid at step 2 (val_check_interval=2): rgb | normal | opacity
        img = imageio.imread(os.path.join(trial, "save", f"it2-{i}.png"))
        assert img.shape == (16, 48, 3)
    frames = sorted(glob.glob(os.path.join(trial, "save", "it3-test", "*.png")))
    assert [os.path.basename(f) for f in frames] == ["0.png", "1.png", "2.png"]
    video = imageio.mimread(os.path.join(trial, "save", "it3-test.mp4"))
    assert len(video) == 3 and video[0].shape[:2] == (16, 48)


def test_losses_logged_finite_and_weighted(trained):
    cfg, _ = trained
    rows = [r for r in _metrics(cfg.trial_dir) if r.get("train/loss")]
    assert len(rows) == 3
    for r in rows:
        total = float(r["train/loss"])
        assert math.isfinite(total)
        expected = float(r["train/loss_sds"]) * 1.0 + float(r["train/loss_sparsity"]) * 0.1
        if float(r["train_params/lambda_orient"]) > 0:  # orient is computed only when weighted
            expected += float(r["train/loss_orient"]) * float(r["train_params/lambda_orient"])
        else:
            assert r["train/loss_orient"] == ""
        assert total == pytest.approx(expected, rel=1e-5)
    # the lambda_orient schedule [0, 0.0, 1.0, 3] is evaluated at each step
    assert [float(r["train_params/lambda_orient"]) for r in rows] == pytest.approx([0.0, 1 / 3, 2 / 3])
    # the scalar diagnostics returned by the guidance are logged
    assert all(float(r["train/prompt_len"]) == len("a red ball") for r in rows)


def test_training_moves_the_parameters_and_updates_every_step(trained):
    _, result = trained
    system = result["system"]
    assert system.global_step == 3
    assert torch.count_nonzero(system.geometry.color.detach()) > 0
    # do_update_step reached the geometry before each train step (0, 1, 2) and before eval batches
    assert system.geometry.steps_seen[:3] == [0, 1, 2]
    assert system.guidance.calls == 3
    # optimiser groups as configured
    groups = {g["name"]: g["lr"] for g in system.trainer.optimizers[0].param_groups}
    assert groups == {"geometry": 0.05, "background": 0.01}


def test_resolution_milestones_apply_during_training(tmp_path):
    """The data module follows update_step; as in threestudio, Lightning collates a batch two
    steps ahead, so a milestone at step m shows from step m + 2."""
    cfg = _cfg(
        tmp_path,
        max_steps=5,
        overrides=[
            "data.width=[8,16]",
            "data.height=[8,12]",
            "data.batch_size=[2,1]",
            "data.resolution_milestones=[2]",
            "trainer.val_check_interval=100",
        ],
    )
    system = run_experiment(cfg, "train")["system"]
    assert system.guidance.shapes == [(2, 8, 8, 3)] * 4 + [(1, 12, 16, 3)]


def test_missing_lambda_for_a_returned_loss_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, max_steps=1, guidance={"return_extra_loss": True})
    with pytest.raises(ConfigError, match="lambda_extra"):
        run_experiment(cfg, "train")


def test_orient_without_normals_is_a_clear_error(tmp_path):
    cfg = _cfg(
        tmp_path,
        max_steps=1,
        renderer={"with_normals": False},
        loss={"lambda_sds": 1.0, "lambda_orient": 1.0, "lambda_sparsity": 0.0, "lambda_opaque": 0.0},
    )
    with pytest.raises(ConfigError, match="normal"):
        run_experiment(cfg, "train")


def test_unknown_system_key_names_it(tmp_path):
    cfg = _cfg(tmp_path, max_steps=1, geometry_typo="x")
    with pytest.raises(ConfigError, match="geometry_typo"):
        run_experiment(cfg, "train")


def test_unknown_model_type_lists_known_ones(tmp_path):
    cfg = _cfg(tmp_path, max_steps=1, renderer_type="no-such-renderer")
    with pytest.raises(KeyError, match="Known types:.*test-analytic-renderer"):
        run_experiment(cfg, "train")


def test_unknown_optimizer_is_an_error(tmp_path):
    cfg = _cfg(tmp_path, max_steps=1, optimizer={"name": "Adan", "args": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="Adan"):
        run_experiment(cfg, "train")


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, max_steps=10, guidance={"interrupt_at_step": 2})
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after KeyboardInterrupt
            run_experiment(cfg, "train")
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after an interrupt
    ckpt = torch.load(os.path.join(cfg.trial_dir, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert "geometry.color" in ckpt["state_dict"]


def test_export_writes_a_mesh_with_vertex_colours(trained, tmp_path):
    cfg, _ = trained
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    ecfg = _cfg(tmp_path, overrides=[f"resume={ckpt}", *OBJ_EXPORT])
    result = run_experiment(ecfg, "export")
    path = os.path.join(ecfg.trial_dir, "save", "it3-export", "model.obj")
    import trimesh

    mesh = trimesh.load(path, process=False)
    # a sphere of radius ~0.5: vertices at that radius, faces wound outwards
    radii = np.linalg.norm(mesh.vertices, axis=1)
    r = float(result["system"].geometry.sphere_radius.detach())
    assert np.allclose(radii, r, atol=0.05)
    assert mesh.volume > 0 and mesh.volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.1)
    lines = open(path).read().splitlines()
    assert len(lines[0].split()) == 7  # v x y z r g b


def test_export_ply_and_unsupported_formats(trained, tmp_path):
    cfg, _ = trained
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    ecfg = _cfg(tmp_path, overrides=[f"resume={ckpt}", "system.exporter.fmt=ply", "system.exporter.save_uv=false"])
    run_experiment(ecfg, "export")
    assert os.path.getsize(os.path.join(ecfg.trial_dir, "save", "it3-export", "model.ply")) > 0
    # threestudio's defaults (fmt obj-mtl, save_uv true) need xatlas / nvdiffrast: the error names the keys
    bad = _cfg(tmp_path / "bad", overrides=[f"resume={ckpt}"])
    with pytest.raises(ConfigError, match="obj-mtl.*system.exporter.fmt=obj system.exporter.save_uv=false"):
        run_experiment(bad, "export")
    uv = _cfg(tmp_path / "uv", overrides=[f"resume={ckpt}", "system.exporter.fmt=obj"])
    with pytest.raises(ConfigError, match="save_uv=false"):
        run_experiment(uv, "export")


def test_test_mode_reports_the_checkpoint_step(trained, tmp_path):
    cfg, _ = trained
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    tcfg = _cfg(tmp_path, overrides=[f"resume={ckpt}", "data.n_test_views=2"])
    run_experiment(tcfg, "test")
    assert os.path.isfile(os.path.join(tcfg.trial_dir, "save", "it3-test.mp4"))


def test_registry_lists_runtime_components():
    for name in ("dreamfusion-system", "random-camera-datamodule", "mesh-exporter", "dummy-exporter"):
        assert lite.find(name) is not None


def test_resume_training_continues_from_the_checkpoint(trained, tmp_path):
    cfg, _ = trained
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    rcfg = _cfg(tmp_path, max_steps=5, overrides=[f"resume={ckpt}", "data.n_test_views=1"])
    system = run_experiment(rcfg, "train")["system"]
    assert system.global_step == 5
    assert system.guidance.calls == 2  # steps 3 and 4 only
    assert system.geometry.steps_seen[0] == 3


def test_weights_initialise_the_system(trained, tmp_path):
    cfg, result = trained
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    system_cls = lite.find("dreamfusion-system")
    system = system_cls(lite_doubles.system_config(weights=ckpt, weights_ignore_modules=["background"]))
    trained_color = result["system"].geometry.color.detach()
    assert torch.allclose(system.geometry.color.detach(), trained_color)
    assert torch.allclose(system.background.env_color.detach(), torch.ones(3))  # ignored module keeps its init
    assert system.geometry.steps_seen == [3]  # do_update_step(on_load_weights=True) at the checkpoint's step


def test_validate_mode_renders_the_validation_views_at_the_checkpoint_step(trained, tmp_path):
    cfg, _ = trained
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    vcfg = _cfg(tmp_path, overrides=[f"resume={ckpt}", "data.n_val_views=3"])
    run_experiment(vcfg, "validate")
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(vcfg.trial_dir, "save", "*.png")))
    assert names == ["it3-0.png", "it3-1.png", "it3-2.png"]


def test_export_obj_with_normals(trained, tmp_path):
    cfg, _ = trained
    ckpt = os.path.join(cfg.trial_dir, "ckpts", "last.ckpt")
    ecfg = _cfg(
        tmp_path,
        overrides=[f"resume={ckpt}", *OBJ_EXPORT, "system.exporter.save_normal=true", "system.exporter.save_name=ball"],
    )
    run_experiment(ecfg, "export")
    text = open(os.path.join(ecfg.trial_dir, "save", "it3-export", "ball.obj")).read().splitlines()
    verts = [ln for ln in text if ln.startswith("v ")]
    normals = np.array([[float(x) for x in ln.split()[1:]] for ln in text if ln.startswith("vn ")])
    assert len(normals) == len(verts)
    positions = np.array([[float(x) for x in ln.split()[1:4]] for ln in verts])
    # outward normals on a sphere centred at the origin
    cos = (normals * positions).sum(1) / np.linalg.norm(positions, axis=1)
    assert (cos > 0.9).mean() > 0.95
    assert any("//" in ln for ln in text if ln.startswith("f "))
