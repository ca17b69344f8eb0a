"""``python -m ddpo3d.configs.merge``: reward blocks applied for threestudio's one-``--config`` launcher."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ddpo3d.configs.merge import MergeError, main, merge_files, write_merged
from ddpo3d.lite.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]
STOCK = ROOT / "configs" / "dreamfusion-sd.yaml"
BLOCKS = ROOT / "custom" / "threestudio-ddpo3d" / "configs" / "rewards"


def _parsed(*paths, overrides=()):
    cfg = load_config(*map(str, paths), cli_args=["use_timestamp=false", *overrides], makedirs=False)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("objective,reward", [("ddpo3d-sd", "aesthetic"), ("reward-backprop-sd", "clip-score")])
def test_merged_file_equals_repeated_configs(tmp_path, objective, reward):
    """One merged file loads to exactly what launch.py's repeated --config gives."""
    paths = [STOCK, BLOCKS / f"{objective}.yaml", BLOCKS / f"{reward}.yaml"]
    out = tmp_path / "merged.yaml"
    assert main([*map(str, paths), "system.prompt_processor.prompt=a red apple", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Written by `python -m ddpo3d.configs.merge`")
    assert str(BLOCKS / f"{reward}.yaml") in text
    merged = _parsed(out)
    expected = _parsed(*paths, overrides=["system.prompt_processor.prompt=a red apple"])
    assert merged == expected
    assert merged["system"]["guidance_type"] == "ddpo3d-stable-diffusion-guidance"
    assert merged["system"]["prompt_processor"]["prompt"] == "a red apple"
    # interpolations stay for the launcher: the tag is still threestudio's ${rmspace:...}
    assert "${rmspace:" in OmegaConf.to_container(OmegaConf.load(out))["tag"]


def test_later_files_win_and_lists_are_replaced(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("x: {k: 1, keep: 2}\nl: [1, 2, 3]\n")
    b.write_text("x: {k: 5}\nl: [9]\n")
    cfg = merge_files([str(a), str(b)], ["x.new=7"])
    assert OmegaConf.to_container(cfg) == {"x": {"k": 5, "keep": 2, "new": 7}, "l": [9]}


def test_errors_name_the_problem_and_keep_existing_files(tmp_path, capsys):
    out = tmp_path / "out.yaml"
    out.write_text("precious: true\n")
    with pytest.raises(MergeError, match="exists"):
        write_merged([str(STOCK)], str(out))
    assert out.read_text() == "precious: true\n"
    with pytest.raises(MergeError, match="not found: .*nope.yaml"):
        write_merged([str(tmp_path / "nope.yaml")], str(tmp_path / "o.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: ${does.not.exist}\n")
    with pytest.raises(MergeError, match="does not resolve"):
        write_merged([str(bad)], str(tmp_path / "o2.yaml"))
    assert not (tmp_path / "o2.yaml").exists()
    with pytest.raises(MergeError, match="one of the inputs"):
        write_merged([str(out)], str(out), force=True)
    assert main([str(STOCK), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([str(STOCK), "-o", str(out), "--force"]) == 0
    assert "precious" not in out.read_text()
