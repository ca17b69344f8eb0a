"""The threestudio extension on the built-in runtime: every shipped config trains (reduced) on CPU,
the DDPO3D guidance reduces to plain SDS, and config mistakes are named."""

import csv
import math
import os
from pathlib import Path

import pytest
import torch

from ddpo3d.testing.tiny_clip import TINY_CLIP_NAME, register_tiny_clip, write_aesthetic_head
from ddpo3d.testing.tiny_if import build_tiny_if_pipeline
from ddpo3d.testing.tiny_sd import build_tiny_sd_pipeline
from ddpo3d.testing.tiny_taesd import write_tiny_taesd

ROOT = Path(__file__).resolve().parents[1]
# the MVDream (DreamReward) configs need the CPU twin and tiny reward files: tests/test_mvdream.py runs them
EXT_CONFIGS = sorted(
    c
    for c in (ROOT / "custom" / "threestudio-ddpo3d" / "configs").glob("*.yaml")
    if not c.stem.startswith("dreamreward")
)
REWARD_BLOCKS = ROOT / "custom" / "threestudio-ddpo3d" / "configs" / "rewards"
#: the loss term each shipped config's objective returns (by the config's name; default loss_ddpo)
SHIPPED_TERMS = {
    "reward-backprop": "loss_reward",
    "reward-tilted": "loss_tilt",
    "reward-sds": "loss_rsds",
    "dreamdpo": "loss_dpo",
}


class _TinyModels(dict):
    """The tiny local models, each built on first use (the IF pipeline only for IF configs)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, key: str) -> str:
        builders = {
            "sd": lambda: build_tiny_sd_pipeline(str(self.root / "tiny-sd")),
            "if": lambda: build_tiny_if_pipeline(str(self.root / "tiny-if")),
            "head": lambda: write_aesthetic_head(str(self.root / "head.pth")),
            "taesd": lambda: write_tiny_taesd(str(self.root / "tiny-taesd")),
        }
        self[key] = builders[key]()
        return self[key]


# Slow tier only here: the Gaussian configs (their reduced runs, with densification checks, are in
# test_gaussian_configs.py's quick tier) and the SDS-family objectives' configs (their toy configs run
# reduced in test_objectives_sds_terms_runs.py's quick tier; 25-50 s each here)
SDS_FAMILY = ("reward-tilted", "reward-sds", "dreamdpo")
EXT_PARAMS = [
    pytest.param(
        c,
        id=c.stem,
        marks=[pytest.mark.slow]
        if "ddpo3d-gaussian-splat" in c.read_text() or any(k in c.stem for k in SDS_FAMILY)
        else [],
    )
    for c in EXT_CONFIGS
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    register_tiny_clip()
    return _TinyModels(tmp_path_factory.mktemp("tiny"))


def taesd_override(tiny) -> str:
    """The override that puts the tiny TAESD twin in place of ``madebyollin/taesd``."""
    return f"system.guidance.objective.reward_decoder={tiny['taesd']}"


def reduced_overrides(tiny, config: Path, out: Path) -> list:
    """threestudio's usual keys reduced, tiny local models for the diffusion prior and the reward."""
    text = config.read_text()
    pipe = tiny["if"] if "deep-floyd" in text else tiny["sd"]
    progressive = ["system.geometry.pos_encoding_config.start_level=2"] if "ProgressiveBandHashGrid" in text else []
    if "ddpo3d-gaussian-splat" in text:  # Gaussian splats: fewer points instead of the NeRF keys
        geometry = ["system.geometry.num_points=500"]
    else:
        geometry = [
            "system.renderer.num_samples_per_ray=16",
            "system.geometry.pos_encoding_config.n_levels=4",
            "system.geometry.pos_encoding_config.log2_hashmap_size=10",
        ]
    # RewardSDS: 4 noise candidates instead of the authors' 7 (min-max needs n_max + n_min = 4)
    objective = ["system.guidance.objective.num_candidates=4"] if "type: reward-sds" in text else []
    # a tiny reward decoder where the config names TAESD (madebyollin/taesd is not on test machines)
    decoder = [taesd_override(tiny)] if "reward_decoder: madebyollin/taesd" in text else []
    return (
        progressive
        + geometry
        + objective
        + decoder
        + [
            f"exp_root_dir={out}",
            "use_timestamp=false",
            "tag=reduced",
            "system.prompt_processor.prompt=a hamburger",
            f"system.prompt_processor.pretrained_model_name_or_path={pipe}",
            f"system.guidance.pretrained_model_name_or_path={pipe}",
            "system.guidance.half_precision_weights=false",
            f"system.guidance.reward.clip_model={TINY_CLIP_NAME}",
            "system.guidance.reward.clip_pretrained=null",
            "system.guidance.reward.allow_random_init=true",
            f"system.guidance.reward.head_path={tiny['head']}",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "data.width=32",
            "data.height=32",
            "data.batch_size=1",  # one stage: height, width and batch_size must have as many entries
            "data.eval_width=32",
            "data.eval_height=32",
            "data.n_val_views=1",
            "data.n_test_views=2",
        ]
    )


def read_metrics(path: Path) -> dict:
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.setdefault((r["split"], r["name"]), []).append(float(r["value"]))
    return rows


def read_lightning_csv(path: Path) -> dict:
    out = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            for k, v in r.items():
                if v not in ("", None):
                    out.setdefault(k, []).append(float(v))
    return out


@pytest.mark.parametrize("config", EXT_PARAMS)
def test_shipped_config_trains_reduced_on_cpu(config, tiny, tmp_path):
    from launch import main

    rc = main(["--config", str(config), "--train", "--gpu", "0", *reduced_overrides(tiny, config, tmp_path)])
    assert rc == 0
    trial = next(tmp_path.glob("*/reduced"))
    save = trial / "save"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (save / "it2-test.mp4").is_file()
    term = next((t for key, t in SHIPPED_TERMS.items() if key in config.stem), "loss_ddpo")
    if "ddpo3d-system" not in config.read_text():
        # magic3d-system is the host's own: the guidance's terms reach its Lightning logs
        logged = read_lightning_csv(next(trial.glob("csv_logs/*/metrics.csv")))
        for key in ["train/loss_sds", f"train/{term}"]:
            assert key in logged and all(math.isfinite(v) for v in logged[key]), sorted(logged)
        return
    assert sorted(p.name for p in (save / "it2-test-rgb").glob("*.png")) == ["0.png", "1.png"]
    if "diffuse-with-point-light-material" in config.read_text():  # shades with normals: normal maps saved
        assert sorted(p.name for p in (save / "it2-test-normal").glob("*.png")) == ["0.png", "1.png"]
    metrics = read_metrics(save / "metrics.csv")
    for key in [("train", "loss_sds"), ("train", term), ("train", "loss"), ("val", "reward"), ("test", "reward")]:
        assert key in metrics, f"{key} not logged; logged: {sorted(metrics)}"
        assert all(math.isfinite(v) for v in metrics[key])
    assert (save / "curves.png").is_file()


def _guidance(kind, tiny, objective, seed=None):
    from ddpo3d.host import find

    cfg = {"pretrained_model_name_or_path": tiny["sd"], "half_precision_weights": False, "guidance_scale": 7.5}
    if kind != "stable-diffusion-guidance":
        cfg.update(reward={"type": "jpeg-compressibility"}, objective=objective)
    return find(kind)(cfg)


def _prompt_utils(tiny):
    from ddpo3d.host import find

    return find("stable-diffusion-prompt-processor")(
        {"prompt": "a hamburger", "pretrained_model_name_or_path": tiny["sd"], "use_cache": False}
    )()


def _load_extension():
    from ddpo3d.host import threestudio
    from launch import default_custom_dirs, load_custom_modules

    if "ddpo3d-system" not in threestudio.__modules__:
        load_custom_modules(default_custom_dirs())


def test_guidance_sds_part_is_plain_sds(tiny):
    _load_extension()
    plain = _guidance("stable-diffusion-guidance", tiny, None)
    ours = _guidance("ddpo3d-stable-diffusion-guidance", tiny, {"type": "ddpo3d", "num_samples": 2})
    pu = _prompt_utils(tiny)
    cams = dict(
        elevation=torch.tensor([10.0, 30.0]),
        azimuth=torch.tensor([0.0, 90.0]),
        camera_distances=torch.tensor([2.0, 2.0]),
    )
    rgb = torch.rand(2, 32, 32, 3)
    results = []
    for guidance in (plain, ours):
        x = rgb.clone().requires_grad_(True)
        torch.manual_seed(123)
        out = guidance(x, pu, **cams)
        out["loss_sds"].backward()
        results.append((out, x.grad))
    (p_out, p_grad), (o_out, o_grad) = results
    assert torch.allclose(p_out["loss_sds"], o_out["loss_sds"], rtol=1e-5, atol=1e-6)
    assert torch.allclose(p_grad, o_grad, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(o_out["loss_ddpo"])  # the alignment branch ran beside the unchanged SDS


def test_guidance_ddpo_gradient_reaches_render(tiny):
    _load_extension()
    ours = _guidance(
        "ddpo3d-stable-diffusion-guidance", tiny, {"type": "ddpo3d", "num_samples": 2, "advantage": "batch"}
    )
    x = torch.rand(2, 32, 32, 3, requires_grad=True)
    out = ours(
        x,
        _prompt_utils(tiny),
        elevation=torch.tensor([10.0, 30.0]),
        azimuth=torch.tensor([0.0, 90.0]),
        camera_distances=torch.tensor([2.0, 2.0]),
    )
    assert torch.isfinite(out["loss_ddpo"])
    (grad,) = torch.autograd.grad(out["loss_ddpo"], x)
    assert grad.abs().sum() > 0
    assert math.isfinite(out["reward_mean"])


def test_objective_draws_t_from_the_host_schedule(tiny):
    """One t schedule: the host guidance's [min_step, max_step], not the objective's own."""
    _load_extension()
    ours = _guidance("ddpo3d-stable-diffusion-guidance", tiny, {"type": "none"})
    ours.cfg.min_step_percent = [0, 0.25, 0.75, 10]  # the host resolves this schedule in update_step
    ours.cfg.max_step_percent = [0, 0.25, 0.75, 10]
    ours.update_step(0, 5)
    assert (ours.min_step, ours.max_step) == (500, 500)
    ours.set_min_max_steps(0.25, 0.25)  # the host's state alone moves: the objective's schedule still says 500
    out = ours(
        torch.rand(1, 32, 32, 3),
        _prompt_utils(tiny),
        elevation=torch.tensor([10.0]),
        azimuth=torch.tensor([0.0]),
        camera_distances=torch.tensor([2.0]),
    )
    assert out["t_mean"] == 250.0 and (out["min_step"], out["max_step"]) == (250, 250)


@pytest.mark.parametrize("key", ["use_img_loss", "use_sjc"])
def test_unhonoured_host_keys_are_rejected_before_loading(key, tmp_path):
    _load_extension()
    from ddpo3d.host import find
    from ddpo3d.utils.config import ConfigError

    cfg = {"pretrained_model_name_or_path": str(tmp_path / "not-loaded"), key: True, "reward": None}
    with pytest.raises(ConfigError, match=f"guidance.{key}=True is not supported by DDPO3DStableDiffusionGuidance"):
        find("ddpo3d-stable-diffusion-guidance")(cfg)


def test_typo_in_reward_block_is_named(tiny, tmp_path, capsys):
    from launch import main

    config = ROOT / "custom" / "threestudio-ddpo3d" / "configs" / "dreamfusion-ddpo.yaml"
    args = reduced_overrides(tiny, config, tmp_path) + ["system.guidance.reward.head_pth=/nowhere.pth"]
    assert main(["--config", str(config), "--train", *args]) != 0
    err = capsys.readouterr().err
    assert "head_pth" in err and "aesthetic" in err


def test_objective_without_reward_is_an_error(tiny):
    _load_extension()
    from ddpo3d.host import find
    from ddpo3d.utils.config import ConfigError

    with pytest.raises(ConfigError, match="guidance.reward is not set"):
        find("ddpo3d-stable-diffusion-guidance")(
            {
                "pretrained_model_name_or_path": tiny["sd"],
                "half_precision_weights": False,
                "objective": {"type": "ddpo3d"},
            }
        )


def test_missing_weights_message_names_model(tmp_path, capsys, monkeypatch):
    from launch import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = ROOT / "custom" / "threestudio-ddpo3d" / "configs" / "dreamfusion-ddpo.yaml"
    rc = main(
        [
            "--config",
            str(config),
            "--train",
            f"exp_root_dir={tmp_path}",
            "trainer.max_steps=1",
            "system.prompt_processor.prompt=a hamburger",
        ]
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert "stabilityai/stable-diffusion-2-1-base" in err


@pytest.mark.slow
def test_toy_run_passes_runtime_type_checks(tmp_path):
    """``--typecheck`` instruments every ddpo3d module (jaxtyping + typeguard): a fresh process."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        str(ROOT / "launch.py"),
        "--config",
        str(ROOT / "configs/toy/ddpo-brightness.yaml"),
        "--train",
        "--typecheck",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "data.n_test_views=2",
        "data.n_val_views=1",
        "data.width=16",
        "data.height=16",
        "data.eval_width=16",
        "data.eval_height=16",
        f"exp_root_dir={tmp_path}",
        "use_timestamp=false",
        "tag=tc",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "toy-ddpo-brightness" / "tc" / "save" / "it2-test.mp4").is_file()


def test_reward_blocks_merge_into_the_stock_config(tiny, tmp_path):
    """The reward blocks turn threestudio's stock dreamfusion-sd.yaml into an aligned run."""
    from launch import main

    stock = ROOT / "configs" / "dreamfusion-sd.yaml"
    blocks = [REWARD_BLOCKS / "ddpo3d-sd.yaml", REWARD_BLOCKS / "jpeg.yaml"]
    overrides = [o for o in reduced_overrides(tiny, stock, tmp_path) if ".reward." not in o]
    overrides.append(taesd_override(tiny))  # ddpo3d-sd.yaml decodes reward targets with TAESD
    argv = ["--config", str(stock)]
    for b in blocks:
        argv += ["--config", str(b)]
    assert main([*argv, "--train", *overrides]) == 0
    parsed = next(tmp_path.glob("*/reduced/configs/parsed.yaml")).read_text()
    assert "ddpo3d-stable-diffusion-guidance" in parsed and "jpeg-compressibility" in parsed
    metrics = read_metrics(next(tmp_path.glob("*/reduced/save/metrics.csv")))
    assert all(math.isfinite(v) for v in metrics[("train", "loss_ddpo")])
    assert ("test", "reward") in metrics


@pytest.mark.parametrize("block", sorted(REWARD_BLOCKS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_reward_block_builds(block, tiny, tmp_path):
    """Each block's reward section builds (CLIP-based ones on the tiny CLIP, as the real ones need weights)."""
    from omegaconf import OmegaConf

    from ddpo3d.objectives.combined import OBJECTIVES
    from ddpo3d.rewards import build_reward

    reward = OmegaConf.select(OmegaConf.load(block), "system.guidance.reward")
    if reward is None:  # an objective block: it must carry an objective and its loss weight
        cfg = OmegaConf.load(block)
        assert cfg.system.guidance.objective.type in OBJECTIVES and cfg.system.guidance.objective.type != "none"
        assert any(k.startswith("lambda_") for k in cfg.system.loss)
        return
    terms = (
        OmegaConf.to_container(reward)
        if isinstance(OmegaConf.to_container(reward), list)
        else [OmegaConf.to_container(reward)]
    )
    batch = 2
    for term in terms:
        if term["type"] in ("imagereward", "reward3d"):  # the tiny BLIP files in the published key layout
            from ddpo3d.testing.tiny_blip import write_tiny_blip_reward

            tiny_blip = write_tiny_blip_reward(str(tmp_path), term["type"], term.get("variant", "Reward3D_Scorer"))
            term.update({k: v for k, v in tiny_blip.items() if k != "type"})
            batch = 4  # reward3d scores objects of 4 views
        if term["type"] in ("aesthetic", "clip-score"):
            term.update(clip_model=TINY_CLIP_NAME, clip_pretrained=None, allow_random_init=True)
            if term["type"] == "aesthetic":
                term["head_path"] = tiny["head"]
        elif term["type"] == "hpsv2":
            term.update(clip_model=TINY_CLIP_NAME, allow_random_init=True)
        elif term["type"] == "pickscore":
            from ddpo3d.testing.tiny_pickscore import write_tiny_pickscore

            term["model"] = write_tiny_pickscore(str(Path(tiny["head"]).parent / "tiny-pickscore"))
    r = build_reward(terms if len(terms) > 1 else terms[0])
    scores = r(torch.rand(batch, 32, 32, 3), ["a hamburger"] * batch)
    assert scores.shape == (batch,) and torch.isfinite(scores).all()


def _real_weights_available() -> bool:
    from ddpo3d.weights import WeightsNotFoundError, resolve_pretrained

    try:
        resolve_pretrained("stabilityai/stable-diffusion-2-1-base", "Stable Diffusion 2.1 base")
        from ddpo3d.rewards import build_reward

        build_reward({"type": "aesthetic"})
        from ddpo3d.diffusion.tiny_decoder import resolve_tiny_decoder

        resolve_tiny_decoder("madebyollin/taesd")  # the config's reward decoder
        return True
    except (WeightsNotFoundError, FileNotFoundError):
        return False


@pytest.mark.weights
@pytest.mark.slow
def test_dreamfusion_ddpo_with_real_weights(tmp_path):
    """SD 2.1 base + CLIP ViT-L/14 + the aesthetic head, when they are on disk: a short real run."""
    if not _real_weights_available():
        pytest.skip("SD 2.1 base, CLIP ViT-L-14 (openai), the aesthetic head or TAESD is not on disk")
    from launch import main

    config = ROOT / "custom" / "threestudio-ddpo3d" / "configs" / "dreamfusion-ddpo.yaml"
    rc = main(
        [
            "--config",
            str(config),
            "--train",
            f"exp_root_dir={tmp_path}",
            "use_timestamp=false",
            "tag=real",
            "system.prompt_processor.prompt=a delicious hamburger",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "data.n_val_views=1",
            "data.n_test_views=2",
        ]
    )
    assert rc == 0
    metrics = read_metrics(next(tmp_path.glob("*/real/save/metrics.csv")))
    assert all(math.isfinite(v) for v in metrics[("train", "loss_ddpo")])
    assert ("test", "reward") in metrics
