"""MVDream guidance: the ε-prediction adapter's contracts, the CPU twin, the lite mirror and the DDPO3D
subclass checked against threestudio-mvdream's own ``guidance/mvdream_guidance.py`` (run on the twin with
CPU placeholders for ``threestudio`` and ``mvdream``), and the DreamReward configs trained reduced."""

import importlib.util
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ddpo3d.diffusion.mvdream import MVDreamPredictor, mvdream_to_threestudio_scale, normalize_camera
from ddpo3d.objectives.dreamfl import predict_x0, rescale_x0
from ddpo3d.objectives.mvdream_sds import MVDreamSDS
from ddpo3d.testing.tiny_mvdream import TINY_MVDREAM_NAME, build_tiny_mvdream, register_tiny_mvdream

ROOT = Path(__file__).resolve().parents[1]
MVDREAM_SRC = Path(os.environ.get("DDPO3D_THREESTUDIO_MVDREAM_SRC", "/work/ext/threestudio-mvdream"))
D = 16  # context width (the tiny SD prompt processor's)

register_tiny_mvdream()  # model_name: ddpo3d-tiny-mvdream builds the CPU twin


def _cameras(n=4):
    from ddpo3d.lite.data.uncond import look_at_c2w, spherical_to_cartesian

    az = torch.deg2rad(torch.arange(n) * 360.0 / 4 % 360)
    pos = spherical_to_cartesian(torch.full((n,), 0.2), az, torch.full((n,), 2.5))
    return look_at_c2w(pos, torch.zeros(n, 3), torch.tensor([[0.0, 0.0, 1.0]]).repeat(n, 1))


class Recorder(torch.nn.Module):
    """MVDream-interface model that records apply_model's inputs (delegates to the twin)."""

    def __init__(self):
        super().__init__()
        self.twin = build_tiny_mvdream(D)
        self.alphas_cumprod = self.twin.alphas_cumprod
        self.calls = []

    def apply_model(self, x, t, cond):
        self.calls.append(
            (x.clone(), t.clone(), {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cond.items()})
        )
        return self.twin.apply_model(x, t, cond)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.twin, name)


def test_predictor_one_call_with_halves_cond_then_uncond():
    model = Recorder()
    pred = MVDreamPredictor(model, n_view=4, image_size=32)
    x_t = torch.randn(8, 4, 4, 4)
    t = torch.full((8,), 300)
    cam = normalize_camera(torch.cat([_cameras(), _cameras()]))
    cond = {"context": torch.randn(8, 5, D), "camera": cam}
    uncond = {"context": torch.zeros(8, 5, D), "camera": cam}
    eps_c, eps_u = pred.predict_eps_pair(x_t, t, cond, uncond)
    assert len(model.calls) == 1
    x, tt, c = model.calls[0]
    torch.testing.assert_close(x, torch.cat([x_t, x_t]))
    torch.testing.assert_close(c["context"], torch.cat([cond["context"], uncond["context"]]))
    torch.testing.assert_close(c["camera"], cam.repeat(2, 1))
    assert c["num_frames"] == 4 and tt.tolist() == [300] * 16
    full = model.twin.apply_model(x, tt, c)
    torch.testing.assert_close(eps_c, full[:8])
    torch.testing.assert_close(eps_u, full[8:])
    torch.testing.assert_close(pred.last_pair[0], eps_c)


def test_predictor_contracts():
    pred = MVDreamPredictor(build_tiny_mvdream(D), n_view=4, image_size=32)
    cond = {"context": torch.randn(6, 5, D), "camera": normalize_camera(torch.eye(4).repeat(6, 1, 1))}
    with pytest.raises(ValueError, match="n_view=4"):
        pred.predict_eps_pair(torch.randn(6, 4, 4, 4), torch.full((6,), 10), cond, None)
    cond = {"context": torch.randn(4, 5, D), "camera": normalize_camera(_cameras())}
    with pytest.raises(ValueError, match="one timestep per batch"):
        pred.predict_eps_pair(torch.randn(4, 4, 4, 4), torch.tensor([10, 10, 20, 10]), cond, None)


def test_normalize_camera_does_not_write_into_c2w():
    c2w = _cameras()
    before = c2w.clone()
    cam = normalize_camera(c2w)
    torch.testing.assert_close(c2w, before)
    assert cam.shape == (4, 16)
    torch.testing.assert_close(cam.view(4, 4, 4)[:, :3, 3].norm(dim=1), torch.ones(4))


def test_predictor_round_trip_and_gradients():
    pred = MVDreamPredictor(build_tiny_mvdream(D), n_view=4, image_size=32)
    images = torch.rand(4, 24, 24, 3, requires_grad=True)
    x0 = pred.encode(images)
    assert x0.shape == (4, 4, 4, 4)
    x0.sum().backward()
    assert images.grad.abs().sum() > 0
    out = pred.decode(x0.detach())
    assert out.shape == (4, 32, 32, 3) and out.min() >= 0 and out.max() <= 1
    # ᾱ and q_sample agree with the twin's buffers
    t = torch.full((4,), 700)
    noise = torch.randn_like(x0)
    torch.testing.assert_close(pred.add_noise(x0.detach(), noise, t), pred.model.q_sample(x0.detach(), t[:1], noise))


def test_mvdream_sds_recon_loss_by_hand():
    pred = MVDreamPredictor(build_tiny_mvdream(D), n_view=4, image_size=32)
    sds = MVDreamSDS({"guidance_scale": 49.0}, recon_loss=True, recon_std_rescale=0.5, n_view=4)
    t = sds.sample_timesteps(8)
    assert t.shape == (8,) and len(set(t.tolist())) == 1
    x0 = torch.randn(8, 4, 4, 4, requires_grad=True)
    noise = torch.randn_like(x0)
    x_t = pred.add_noise(x0.detach(), noise, t)
    cam = normalize_camera(torch.cat([_cameras(), _cameras()]))
    cond, uncond = {"context": torch.randn(8, 5, D), "camera": cam}, {"context": torch.zeros(8, 5, D), "camera": cam}
    eps_c, eps_u = pred.predict_eps_pair(x_t, t, cond, uncond)
    eps = eps_u + 50.0 * (eps_c - eps_u)  # MVDream's CFG, s = 50
    torch.testing.assert_close(eps, eps_c + mvdream_to_threestudio_scale(50.0) * (eps_c - eps_u))
    out = sds(x0, pred, cond, uncond, t=t, noise=noise, eps_pred=eps)
    x0_hat = predict_x0(x_t, eps, pred.alphas_cumprod, t)
    x0_txt = predict_x0(x_t, eps_c, pred.alphas_cumprod, t)
    target = rescale_x0(x0_hat, x0_txt, 0.5, 4)
    torch.testing.assert_close(out.loss_sds, 0.5 * ((x0 - target) ** 2).sum() / 8)
    (g,) = torch.autograd.grad(out.loss_sds, x0)
    torch.testing.assert_close(g, (x0 - target).detach() / 8)


# -- threestudio-mvdream's own source on the twin ---------------------------------------------------------
def _fake_normalize_camera(camera_matrix):
    """mvdream.camera_utils.normalize_camera as MVDream writes it (in place on the tensor)."""
    camera_matrix = camera_matrix.reshape(-1, 4, 4)
    translation = camera_matrix[:, :3, 3]
    translation = translation / (torch.norm(translation, dim=1, keepdim=True) + 1e-8)
    camera_matrix[:, :3, 3] = translation
    return camera_matrix.reshape(-1, 16)


@pytest.fixture(scope="module")
def real_mvdream_class():
    """threestudio-mvdream's MultiviewDiffusionGuidance, loaded from its source with CPU placeholders."""
    src = MVDREAM_SRC / "guidance" / "mvdream_guidance.py"
    if not src.is_file():
        pytest.skip(f"threestudio-mvdream source not found at {MVDREAM_SRC} (set DDPO3D_THREESTUDIO_MVDREAM_SRC)")
    import ddpo3d.lite.utils.base as lite_base
    import ddpo3d.lite.utils.misc as lite_misc
    import ddpo3d.utils.typing as our_typing

    ts = types.ModuleType("threestudio")
    ts.register = lambda name: lambda cls: cls
    ts.info = lambda *a, **k: None
    mods = {
        "threestudio": ts,
        "threestudio.models": types.ModuleType("threestudio.models"),
        "threestudio.models.prompt_processors": types.ModuleType("threestudio.models.prompt_processors"),
        "threestudio.models.prompt_processors.base": types.ModuleType("threestudio.models.prompt_processors.base"),
        "threestudio.utils": types.ModuleType("threestudio.utils"),
        "threestudio.utils.base": lite_base,
        "threestudio.utils.misc": types.ModuleType("threestudio.utils.misc"),
        "threestudio.utils.typing": our_typing,
        "mvdream": types.ModuleType("mvdream"),
        "mvdream.camera_utils": types.ModuleType("mvdream.camera_utils"),
        "mvdream.model_zoo": types.ModuleType("mvdream.model_zoo"),
    }
    mods["threestudio.models.prompt_processors.base"].PromptProcessorOutput = object
    misc = mods["threestudio.utils.misc"]
    misc.C, misc.cleanup, misc.parse_version = lite_misc.C, lite_misc.cleanup, lambda v: v
    mods["mvdream.camera_utils"].normalize_camera = _fake_normalize_camera
    mods["mvdream.camera_utils"].convert_opengl_to_blender = lambda c: c
    mods["mvdream.model_zoo"].build_model = lambda name, ckpt_path=None: build_tiny_mvdream(D)
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        spec = importlib.util.spec_from_file_location("ts_mvdream_guidance_under_test", src)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module.MultiviewDiffusionGuidance


def _ext():
    """The extension's guidance module, loaded the way launch.py loads extensions."""
    from ddpo3d.host import find, threestudio
    from launch import default_custom_dirs, load_custom_modules

    if "ddpo3d-mvdream-guidance" not in threestudio.__modules__:
        load_custom_modules(default_custom_dirs())
    return sys.modules[find("ddpo3d-mvdream-guidance").__module__]


class FakePromptUtils:
    def __init__(self, n=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(2 * n, 6, D, generator=g)
        self.prompt = "a red cup"
        # threestudio's view-dependent prompt API: later directions override earlier ones
        odd = lambda ele, azi, dis: torch.arange(len(ele)) % 2 == 1
        self.directions = [
            SimpleNamespace(name="front", condition=lambda ele, azi, dis: torch.ones(len(ele), dtype=torch.bool)),
            SimpleNamespace(name="side", condition=odd),
        ]
        self.direction2idx = {"front": 0, "side": 1}
        self.prompts_vd = [f"{self.prompt}, front view", f"{self.prompt}, side view"]

    def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting=True):
        return self.emb


BASE_CFG = {"model_name": "sd-v2.1-base-4view", "image_size": 32, "guidance_scale": 50.0}


def _call(guidance, rgb, seed=0, c2w=None):
    n = rgb.shape[0]
    torch.manual_seed(seed)
    c2w = _cameras(n) if c2w is None else c2w
    z = torch.zeros(n)
    return guidance(rgb, FakePromptUtils(n), z, z, z + 2.5, c2w)


@pytest.mark.parametrize("recon", [True, False])
def test_loss_sds_matches_threestudio_mvdream(real_mvdream_class, recon):
    """Same global seed: threestudio-mvdream's guidance, our lite mirror and ddpo3d-mvdream-guidance over
    threestudio-mvdream's class (objective none) give the same loss_sds and gradient on the renders."""
    from ddpo3d.lite import find

    ext = _ext()
    cfg = {**BASE_CFG, "recon_loss": recon}
    real = real_mvdream_class(cfg)
    if not recon:  # threestudio-mvdream's SDS branch reads self.alphas_cumprod, which it never sets
        real.alphas_cumprod = real.model.alphas_cumprod
    mirror = find("mvdream-multiview-diffusion-guidance")({**cfg, "model_name": TINY_MVDREAM_NAME, "context_dim": D})
    ours = ext.make_mvdream_guidance(real_mvdream_class)({**cfg, "objective": {"type": "none"}})
    assert issubclass(type(ours), real_mvdream_class)
    rgb0 = torch.rand(4, 20, 20, 3)
    results = []
    for g in (real, mirror, ours):
        rgb = rgb0.clone().requires_grad_(True)
        c2w = _cameras()
        c2w_before = c2w.clone()
        out = _call(g, rgb, seed=3, c2w=c2w)
        (grad,) = torch.autograd.grad(out["loss_sds"], rgb)
        results.append((out["loss_sds"].detach(), grad, torch.equal(c2w, c2w_before)))
    for loss, grad, _ in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-3, atol=1e-7)
    assert results[0][2] is False  # threestudio-mvdream normalises the batch's c2w in place ...
    assert results[1][2] and results[2][2]  # ... ours work on a clone


def test_subclass_config_keys_and_contracts(real_mvdream_class, tmp_path):
    from ddpo3d.testing.tiny_blip import write_tiny_blip_reward

    ext = _ext()
    cls = ext.make_mvdream_guidance(real_mvdream_class)
    base_keys = set(real_mvdream_class.Config.__dataclass_fields__)
    assert base_keys | {"reward", "objective", "reward_prompts", "seed"} == set(cls.Config.__dataclass_fields__)
    reward = write_tiny_blip_reward(str(tmp_path), "reward3d", "Reward3D_Scorer")
    g = cls({**BASE_CFG, "reward": reward, "objective": {"type": "dreamfl", "start_step": 0, "x0_t_max": 1000}})
    rgb = torch.rand(4, 20, 20, 3, requires_grad=True)
    out = _call(g, rgb)
    assert {"loss_sds", "loss_dreamfl", "dreamfl_weight", "reward_mean"} <= set(out)
    assert out["dreamfl_x0_frac"] == 1.0
    (grad,) = torch.autograd.grad(out["loss_dreamfl"], rgb)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of n_view"):
        _call(g, torch.rand(3, 20, 20, 3))
    with pytest.raises(Exception, match="num_samples must be 1"):
        cls({**BASE_CFG, "reward": reward, "objective": {"type": "ddpo3d", "num_samples": 4}})


def test_reward_prompts_are_view_dependent_even_without_vd_embeddings(real_mvdream_class, tmp_path):
    ext = _ext()
    g = ext.make_mvdream_guidance(real_mvdream_class)({**BASE_CFG, "objective": {"type": "none"}})
    assert g.cfg.view_dependent_prompting is False
    z = torch.zeros(4)
    assert g.reward_prompts_for(FakePromptUtils(), z, z, z)[1] == "a red cup, side view"


def test_lite_mirror_without_mvdream_names_package_and_weights():
    from ddpo3d.lite import find

    if importlib.util.find_spec("mvdream") is not None:
        pytest.skip("mvdream is installed")
    with pytest.raises(ImportError, match="mvdream.*MVDream/MVDream.*ddpo3d-tiny-mvdream"):
        find("mvdream-multiview-diffusion-guidance")({"model_name": "sd-v2.1-base-4view"})


def test_multiview_datamodule_groups_views():
    from ddpo3d.lite import find

    dm = find("mvdream-random-multiview-camera-datamodule")(
        {
            "batch_size": 8,
            "n_view": 4,
            "width": 8,
            "height": 8,
            "fovy_range": [15, 60],
            "camera_distance_range": [0.8, 1.0],
        }
    )
    dm.setup("fit")
    b = dm.train_dataset.collate(None)
    az = b["azimuth"].view(2, 4)
    torch.testing.assert_close(az.diff(dim=1), torch.full((2, 3), 90.0), atol=1e-4, rtol=0)
    for key in ("elevation", "camera_distances", "fovy"):
        v = b[key].view(2, 4)
        assert torch.equal(v, v[:, :1].expand(2, 4)), key
    # relative radius: distance = d / tan(fovy / 2) with d in [0.8, 1.0]
    d = b["camera_distances"] * torch.tan(0.5 * b["fovy"])
    assert bool(((d >= 0.8 - 1e-5) & (d <= 1.0 + 1e-5)).all())
    with pytest.raises(Exception, match="multiple of data.n_view"):
        bad = find("mvdream-random-multiview-camera-datamodule")({"batch_size": 6, "n_view": 4})
        bad.setup("fit")
        bad.train_dataset.collate(None)


# -- the DreamReward configs, reduced, on the CPU twin ----------------------------------------------------
from tests.helpers import tiny_sd  # noqa: E402,F401  (fixture)

DREAMREWARD_CONFIGS = sorted((ROOT / "custom" / "threestudio-ddpo3d" / "configs").glob("dreamreward-*.yaml"))


def _reduced(tiny_sd_path, reward, root):
    over = [
        "system.prompt_processor.prompt=a red cup",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.guidance.model_name={TINY_MVDREAM_NAME}",
        f"system.guidance.context_dim={D}",
        "system.guidance.image_size=32",
        f"system.guidance.reward.checkpoint={reward['checkpoint']}",
        f"system.guidance.reward.tokenizer={reward['tokenizer']}",
        "data.batch_size=4",
        "data.width=32",
        "data.height=32",
        "data.resolution_milestones=[]",
        "data.eval_width=32",
        "data.eval_height=32",
        "data.n_val_views=1",
        "data.n_test_views=2",
        "system.geometry.pos_encoding_config.n_levels=4",
        "system.geometry.pos_encoding_config.log2_hashmap_size=12",
        "system.renderer.num_samples_per_ray=16",
        "trainer.max_steps=3",
        "trainer.val_check_interval=2",
        "trainer.precision=32",
        "trainer.enable_progress_bar=false",
        f"exp_root_dir={root}",
        "use_timestamp=false",
        "tag=reduced",
    ]
    over += [f"system.guidance.reward.backbone.{k}={v}" for k, v in reward["backbone"].items()]
    return over


@pytest.mark.slow
@pytest.mark.parametrize("config", DREAMREWARD_CONFIGS, ids=[c.stem for c in DREAMREWARD_CONFIGS])
def test_dreamreward_config_trains_reduced_on_the_twin(config, tiny_sd, tmp_path):
    import csv
    import math

    from ddpo3d.testing.tiny_blip import write_tiny_blip_reward
    from launch import main

    reward = write_tiny_blip_reward(str(tmp_path / "reward"), "reward3d", "Reward3D_Scorer")
    extra = []
    if "dreamfl" in config.stem:  # reach the reward term, the x̂0 branch and the reward-only tail in 3 steps
        extra = [
            "system.guidance.objective.start_step=0",
            "system.guidance.objective.x0_t_max=1000",
            "system.guidance.objective.tail_step=1",
        ]
    assert main(["--config", str(config), "--train", *_reduced(tiny_sd, reward, tmp_path), *extra]) == 0
    trial = next(tmp_path.glob("*/reduced"))
    assert (trial / "ckpts" / "last.ckpt").is_file()
    rows = {}
    with open(next(trial.glob("csv_logs/*/metrics.csv"))) as f:
        for r in csv.DictReader(f):
            for k, v in r.items():
                if v not in ("", None):
                    rows.setdefault(k, []).append(float(v))
    term = "train/loss_dreamfl" if "dreamfl" in config.stem else "train/loss_ddpo"
    for key in ("train/loss_sds", term, "train/reward_mean"):
        assert key in rows and all(math.isfinite(v) for v in rows[key]), sorted(rows)
    if "dreamfl" in config.stem:
        assert rows["train/dreamfl_tail"][-1] == 1.0 and rows["train/loss_sds"][-1] == 0.0


def test_lazy_registration_explains_what_is_missing(monkeypatch):
    """On a threestudio host without threestudio-mvdream the registered class says what to install."""
    ext = _ext()
    monkeypatch.setattr(ext, "mvdream_base", lambda: None)
    with pytest.raises(ImportError, match="threestudio-mvdream.*mvdream.*sd-v2.1-base-4view"):
        ext.LazyMVDreamGuidance({})
