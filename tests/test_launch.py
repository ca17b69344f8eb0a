"""launch.py: error paths (one `error:` line, non-zero exit), overrides, resolvers, extensions,
and a tiny --train run through the command line with an extension folder."""

import os
import subprocess
import sys
import textwrap

import lite_doubles
import pytest
from omegaconf import OmegaConf

import launch
from ddpo3d.lite.experiment import RESOLVERS, load_config, parse_overrides, register_resolvers
from ddpo3d.utils.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _run(argv, capsys, custom_dirs=()):
    rc = launch.main(argv, custom_dirs=list(custom_dirs))
    err = capsys.readouterr().err
    return rc, err


def _error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_missing_config_file(tmp_path, capsys):
    rc, err = _run(["--config", str(tmp_path / "nope.yaml"), "--train"], capsys)
    assert rc == 1
    assert "nope.yaml" in _error_line(err)


def test_unknown_top_level_key_is_named(tmp_path, capsys):
    path = _write(tmp_path, lite_doubles.experiment_yaml(str(tmp_path)) + "trainr: {}\n")
    rc, err = _run(["--config", path, "--train"], capsys)
    assert rc == 1
    line = _error_line(err)
    assert "trainr" in line and "trainer" in line  # suggestion


def test_unknown_key_from_an_override_is_named(tmp_path, capsys):
    path = _write(tmp_path, lite_doubles.experiment_yaml(str(tmp_path)))
    rc, err = _run(["--config", path, "--train", "data.widht=32"], capsys)
    assert rc == 1
    assert "widht" in _error_line(err)


@pytest.mark.parametrize(
    "override,named", [("trainer.max_step=3", "max_step"), ("checkpoint.save_lst=true", "save_lst")]
)
def test_unknown_trainer_or_checkpoint_argument_is_named(tmp_path, capsys, override, named):
    path = _write(tmp_path, lite_doubles.experiment_yaml(str(tmp_path)))
    rc, err = _run(["--config", path, "--train", override], capsys)
    assert rc == 1
    line = _error_line(err)
    assert named in line and "Did you mean" in line


def test_unknown_type_lists_known_types(tmp_path, capsys):
    path = _write(tmp_path, lite_doubles.experiment_yaml(str(tmp_path)))
    rc, err = _run(["--config", path, "--train", "system_type=dreamfusion-sytem"], capsys)
    assert rc == 1
    line = _error_line(err)
    assert "dreamfusion-sytem" in line and "Known types:" in line and "dreamfusion-system" in line


@pytest.mark.parametrize("bad", ["system.loss", "data.width=[1,2", "a..b=3", "=3"])
def test_bad_override_syntax(tmp_path, capsys, bad):
    path = _write(tmp_path, lite_doubles.experiment_yaml(str(tmp_path)))
    rc, err = _run(["--config", path, "--train", bad], capsys)
    assert rc == 1
    assert "Bad override" in _error_line(err) and bad in _error_line(err)


def test_missing_required_value_is_named(tmp_path, capsys):
    text = lite_doubles.experiment_yaml(str(tmp_path)).replace("prompt: a red ball", "prompt: ???")
    path = _write(tmp_path, text)
    rc, err = _run(["--config", path, "--train"], capsys)
    assert rc == 1
    assert "system.prompt_processor.prompt" in _error_line(err)


def test_verbose_shows_the_traceback(tmp_path, capsys):
    rc, err = _run(["--config", str(tmp_path / "nope.yaml"), "--train", "--verbose"], capsys)
    assert rc == 1 and "Traceback" in err


def test_broken_extension_is_named_not_swallowed(tmp_path, capsys):
    ext = tmp_path / "custom" / "my-broken-ext"
    ext.mkdir(parents=True)
    (ext / "__init__.py").write_text("import no_such_module_xyz\n")
    path = _write(tmp_path, lite_doubles.experiment_yaml(str(tmp_path)))
    rc, err = _run(["--config", path, "--train"], capsys, custom_dirs=[str(tmp_path / "custom")])
    assert rc == 1
    line = _error_line(err)
    assert "my-broken-ext" in line and "no_such_module_xyz" in line


def test_extension_folders_are_loaded(tmp_path):
    root = tmp_path / "custom"
    (root / "good-ext").mkdir(parents=True)
    (root / "good-ext" / "__init__.py").write_text("from . import sub\nLOADED = sub.VALUE\n")
    (root / "good-ext" / "sub.py").write_text("VALUE = 42\n")
    (root / "off_disabled").mkdir()
    (root / "off_disabled" / "__init__.py").write_text("raise RuntimeError('must not load')\n")
    (root / "notes").mkdir()  # no __init__.py: not an extension
    assert launch.load_custom_modules([str(root)]) == ["good-ext"]
    assert sys.modules["good-ext"].LOADED == 42


def test_overrides_merge_and_resolvers():
    register_resolvers()
    register_resolvers()  # idempotent
    assert set(RESOLVERS) >= {
        "rmspace",
        "add",
        "sub",
        "mul",
        "div",
        "idiv",
        "basename",
        "tuple2",
        "gt0",
        "cmaxgt0",
        "not",
        "cmaxgt0orcmaxgt0",
        "calc_exp_lr_decay_rate",
    }
    cfg = OmegaConf.create(
        {
            "a": "${rmspace:'a b c',_}",
            "b": "${add:1,2}",
            "c": "${idiv:7,2}",
            "d": "${basename:/x/y.ckpt}",
            "e": "${tuple2:0.5}",
            "f": "${cmaxgt0:[0, 0.0, 1.0, 10]}",
            "g": "${not:true}",
            "h": "${calc_exp_lr_decay_rate:0.1,2}",
            "i": "${cmaxgt0orcmaxgt0:0,0}",
        }
    )
    assert OmegaConf.to_container(cfg, resolve=True) == {
        "a": "a_b_c",
        "b": 3,
        "c": 3,
        "d": "y.ckpt",
        "e": [0.5, 0.5],
        "f": True,
        "g": False,
        "h": pytest.approx(0.1**0.5),
        "i": False,
    }
    over = parse_overrides(["system.prompt_processor.prompt=a hamburger", "trainer.max_steps=5", "resume=/x.ckpt"])
    assert (
        over.system.prompt_processor.prompt == "a hamburger"
        and over.trainer.max_steps == 5
        and over.resume == "/x.ckpt"
    )


def test_stock_config_parses_with_prompt(tmp_path):
    cfg = load_config(
        os.path.join(ROOT, "configs", "dreamfusion-sd.yaml"),
        cli_args=["system.prompt_processor.prompt=a delicious hamburger", f"exp_root_dir={tmp_path}"],
    )
    assert cfg.tag == "a_delicious_hamburger"
    assert cfg.trial_dir.startswith(os.path.join(str(tmp_path), "dreamfusion-sd", "a_delicious_hamburger@"))
    assert cfg.system.renderer.radius == 2.0  # ${system.geometry.radius}
    assert cfg.checkpoint.every_n_train_steps == 10000  # ${trainer.max_steps}
    assert cfg.trainer.precision == "16-mixed"
    with pytest.raises(ConfigError, match="system.prompt_processor.prompt"):
        load_config(os.path.join(ROOT, "configs", "dreamfusion-sd.yaml"), cli_args=[f"exp_root_dir={tmp_path}"])


def test_train_through_main_with_an_extension(tmp_path, capsys, monkeypatch):
    """--train through main(): an extension folder registers the test doubles' guidance under
    a new name, the run trains, tests, writes parsed.yaml and a checkpoint; --gpu is a notice."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # restored after
    ext = tmp_path / "custom" / "h3-ext"
    ext.mkdir(parents=True)
    (ext / "__init__.py").write_text(
        textwrap.dedent("""
        from ddpo3d import host
        import lite_doubles
        if "h3-ext-guidance" not in host.threestudio.__modules__:
            host.register("h3-ext-guidance")(type("ExtGuidance", (lite_doubles.MSEGuidance,), {}))
    """)
    )
    path = _write(tmp_path, lite_doubles.experiment_yaml(str(tmp_path), max_steps=2))
    rc = launch.main(
        [
            "--config",
            path,
            "--train",
            "--gpu",
            "0",
            "system.guidance_type=h3-ext-guidance",
            "system.prompt_processor.prompt=a blue ball",
            "data.n_test_views=2",
        ],
        custom_dirs=[str(tmp_path / "custom")],
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    trial = tmp_path / "tiny" / "a_blue_ball"
    parsed = OmegaConf.load(trial / "configs" / "parsed.yaml")
    assert parsed.system.guidance_type == "h3-ext-guidance"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (trial / "save" / "it2-test.mp4").is_file()
    if not __import__("torch").cuda.is_available():
        assert "--gpu 0 ignored" in err
        assert "precision '16-mixed' needs CUDA; running in 32-true on CPU" in err


def test_command_line_exit_status_and_single_error_line(tmp_path):
    env = dict(os.environ, DDPO3D_HOST="lite", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch.py"),
            "--config",
            str(tmp_path / "missing.yaml"),
            "--test",
            "--typecheck",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Config file not found")
    assert "Traceback" not in proc.stderr
