"""Reward library: registry, input contract, JPEG rewards, python rewards, weighted sums (no CLIP)."""

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ddpo3d.rewards import (
    CompositeReward,
    RewardTargetImportError,
    UnknownRewardError,
    build_reward,
    list_rewards,
)
from ddpo3d.utils.config import ConfigError

PROMPTS = ["a red car", "a blue house", "a tree", "a cat"]


def _images(b=4, h=32, w=40, seed=0):
    """Deterministic mix of flat, smooth and noisy images (different JPEG sizes)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(b, h, w, 3, generator=g)
    imgs[0] = 0.5  # flat
    ramp = torch.linspace(0, 1, w).view(1, w, 1)
    imgs[1] = ramp.expand(h, w, 3)  # smooth gradient
    return imgs


def _independent_jpeg_kb(images, quality=95):
    """Independent byte count: numpy quantisation + PIL into a BytesIO."""
    arr = np.clip(np.round(images.detach().numpy().astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(len(buf.getvalue()) / 1000.0)
    return torch.tensor(sizes)


# --------------------------------------------------------------------------------------- registry
@pytest.mark.slow  # a fresh interpreter importing torch: seconds of CPU for an import-cost check
def test_import_is_light_and_threestudio_free():
    code = (
        "import sys; import ddpo3d.rewards as r; "
        "assert 'open_clip' not in sys.modules, 'open_clip imported at import time'; "
        "assert 'threestudio' not in sys.modules; print(','.join(r.list_rewards()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "aesthetic,brightness,clip-score,hpsv2,imagereward,jpeg-compressibility,jpeg-incompressibility,"
        "normal-consistency,pickscore,python,reward3d"
    )


def test_known_types():
    assert {"aesthetic", "clip-score", "jpeg-compressibility", "jpeg-incompressibility", "python"} <= set(
        list_rewards()
    )


def test_unknown_type_lists_known_types():
    with pytest.raises(UnknownRewardError) as err:
        build_reward({"type": "aesthetics"})
    msg = str(err.value)
    assert "'aesthetics'" in msg and "Did you mean 'aesthetic'" in msg
    for name in list_rewards():
        assert name in msg


def test_missing_type_and_malformed_blocks():
    with pytest.raises(ConfigError, match="no 'type' key"):
        build_reward({"weight": 1.0})
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_reward(["jpeg-compressibility"])
    with pytest.raises(ConfigError, match="'weight' must be a number"):
        build_reward({"type": "jpeg-compressibility", "weight": "big"})
    with pytest.raises(ConfigError, match="empty list"):
        build_reward([])
    with pytest.raises(ConfigError, match="No reward configured"):
        build_reward(None)


def test_unknown_option_key_names_key_and_type():
    with pytest.raises(ConfigError) as err:
        build_reward({"type": "jpeg-compressibility", "qualty": 90})
    msg = str(err.value)
    assert "'qualty'" in msg and "jpeg-compressibility" in msg and "quality" in msg


def test_invalid_option_value():
    with pytest.raises(ConfigError, match="quality must be in 1..100"):
        build_reward({"type": "jpeg-incompressibility", "quality": 0})
    with pytest.raises(ConfigError, match="Invalid config"):
        build_reward({"type": "jpeg-incompressibility", "quality": "high"})


def test_build_from_omegaconf_and_reward_passthrough():
    block = OmegaConf.create({"type": "jpeg-compressibility", "quality": 80})
    r = build_reward(block)
    assert r.name == "jpeg-compressibility" and r.cfg.quality == 80
    assert build_reward(r) is r
    lst = OmegaConf.create([{"type": "jpeg-compressibility"}, {"type": "jpeg-incompressibility", "weight": 0.5}])
    assert isinstance(build_reward(lst), CompositeReward)


# --------------------------------------------------------------------------------------- JPEG
@pytest.mark.parametrize("quality", [95, 50])
def test_jpeg_rewards_equal_independent_byte_count(quality):
    images = _images(h=48, w=56)
    expected = _independent_jpeg_kb(images, quality)
    inc = build_reward({"type": "jpeg-incompressibility", "quality": quality})
    comp = build_reward({"type": "jpeg-compressibility", "quality": quality})
    torch.testing.assert_close(inc(images, PROMPTS), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(comp(images, PROMPTS), -expected, rtol=0, atol=1e-6)
    # flat < gradient < noise in file size
    s = expected
    assert s[0] < s[1] < s[2]


def test_jpeg_quality_changes_size():
    images = _images()
    hi = build_reward({"type": "jpeg-incompressibility"})(images, PROMPTS)
    lo = build_reward({"type": "jpeg-incompressibility", "quality": 10})(images, PROMPTS)
    assert (lo[2:] < hi[2:]).all()


def test_jpeg_is_not_differentiable():
    images = _images().requires_grad_(True)
    for t in ("jpeg-compressibility", "jpeg-incompressibility"):
        r = build_reward({"type": t})
        assert r.differentiable is False
        out = r.evaluate(images, PROMPTS)
        assert not out.scores.requires_grad and out.scores.grad_fn is None
        assert out.scores.dtype == torch.float32 and out.scores.shape == (4,)
        assert set(out.terms) == {t}


# --------------------------------------------------------------------------------------- input contract
def _bad_inputs():
    good = _images()
    return [
        (good.permute(0, 3, 1, 2).contiguous(), PROMPTS, r"shape \[B, H, W, 3\].*channels-first"),
        (good[0], PROMPTS[:1], r"single image"),
        (good[..., :2], PROMPTS, r"shape \[B, H, W, 3\], got \[4, 32, 40, 2\]"),
        ((good * 255).to(torch.uint8), PROMPTS, r"floating-point.*uint8"),
        (good * 255, PROMPTS, r"\[0, 1\].*divide by 255"),
        (good - 0.5, PROMPTS, r"must lie in \[0, 1\].*-0.5"),
        (torch.full_like(good, float("nan")), PROMPTS, r"NaN"),
        (good, PROMPTS[:3], r"got 3 prompts for a batch of 4 images"),
        (good, "a red car", r"single string"),
        (good, ["a", "b", 3, "d"], r"prompts\[2\] must be a str"),
        (good.numpy(), PROMPTS, r"must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise_clear_value_errors(case):
    images, prompts, pattern = _bad_inputs()[case]
    for r in (
        build_reward({"type": "jpeg-compressibility"}),
        build_reward([{"type": "jpeg-compressibility"}, {"type": "jpeg-incompressibility"}]),
    ):
        with pytest.raises(ValueError, match=pattern):
            r(images, prompts)


def test_small_range_overshoot_is_tolerated():
    images = _images()
    images[0, 0, 0, 0] = 1.0005
    images[0, 0, 1, 0] = -0.0005
    r = build_reward({"type": "jpeg-compressibility"})
    assert r(images, PROMPTS).shape == (4,)
    # float64 and tuple prompts are fine too
    assert r(images.double(), tuple(PROMPTS)).shape == (4,)


# --------------------------------------------------------------------------------------- composite
def test_composite_weighted_sum_and_terms():
    images = _images()
    r = build_reward(
        [
            {"type": "jpeg-compressibility", "weight": 0.5},
            {"type": "jpeg-incompressibility", "weight": 2.0, "quality": 50},
        ]
    )
    out = r.evaluate(images, PROMPTS)
    a = _independent_jpeg_kb(images, 95)
    b = _independent_jpeg_kb(images, 50)
    torch.testing.assert_close(out.scores, 0.5 * -a + 2.0 * b, rtol=1e-6, atol=1e-6)
    assert set(out.terms) == {
        "jpeg-compressibility",
        "jpeg-compressibility_weighted",
        "jpeg-incompressibility",
        "jpeg-incompressibility_weighted",
    }
    torch.testing.assert_close(out.terms["jpeg-compressibility"], -a, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.terms["jpeg-incompressibility_weighted"], 2.0 * b, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.scores, sum(out.terms[f"{n}_weighted"] for n in r.term_names))
    assert r.differentiable is False and not out.scores.requires_grad
    torch.testing.assert_close(r(images, PROMPTS), out.scores)


def test_single_block_weight_is_applied():
    images = _images()
    plain = build_reward({"type": "jpeg-incompressibility"})
    assert not isinstance(plain, CompositeReward)
    scaled = build_reward({"type": "jpeg-incompressibility", "weight": 3.0})
    assert isinstance(scaled, CompositeReward)
    torch.testing.assert_close(scaled(images, PROMPTS), 3.0 * plain(images, PROMPTS))


def test_composite_names_must_be_unique_and_can_be_set():
    with pytest.raises(ConfigError, match="several terms named 'jpeg-compressibility'.*'name:'"):
        build_reward([{"type": "jpeg-compressibility"}, {"type": "jpeg-compressibility", "quality": 50}])
    r = build_reward(
        [{"type": "jpeg-compressibility"}, {"type": "jpeg-compressibility", "quality": 50, "name": "jpeg50"}]
    )
    assert r.term_names == ["jpeg-compressibility", "jpeg50"]
    assert "jpeg50_weighted" in r.evaluate(_images(), PROMPTS).terms


def test_rewards_stay_in_eval_mode():
    r = build_reward([{"type": "jpeg-compressibility"}, {"type": "jpeg-incompressibility"}])
    parent = torch.nn.Sequential(r)
    parent.train()
    assert not r.training and all(not m.training for m in r.modules())


# --------------------------------------------------------------------------------------- python
USER_MODULE = textwrap.dedent(
    """
    import numpy as np
    import torch

    def brightness(images, prompts, scale=1.0):
        return scale * images.mean(dim=(1, 2, 3))

    def prompt_length_list(images, prompts):
        return [float(len(p)) for p in prompts]

    def prompt_length_numpy(images, prompts):
        return np.array([len(p) for p in prompts], dtype=np.float64)

    def saw_grad(images, prompts):
        # records whether the function received a graph-attached tensor
        saw_grad.last = torch.is_grad_enabled() and images.requires_grad
        return images.mean(dim=(1, 2, 3))

    def wrong_shape(images, prompts):
        return images.mean(dim=(1, 2))

    def detached(images, prompts):
        return images.mean(dim=(1, 2, 3)).detach()

    def returns_string(images, prompts):
        return "nope"

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "h1_user_rewards.py").write_text(USER_MODULE)
    (tmp_path / "h1_broken.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in ("h1_user_rewards", "h1_broken"):
        sys.modules.pop(m, None)
    yield "h1_user_rewards"
    for m in ("h1_user_rewards", "h1_broken"):
        sys.modules.pop(m, None)


def test_python_reward_non_differentiable(user_module):
    images = _images().requires_grad_(True)
    r = build_reward({"type": "python", "target": f"{user_module}:saw_grad"})
    assert r.differentiable is False and r.name == "python"
    out = r(images, PROMPTS)
    torch.testing.assert_close(out, images.detach().mean(dim=(1, 2, 3)))
    assert not out.requires_grad
    assert sys.modules[user_module].saw_grad.last is False


def test_python_reward_differentiable_with_kwargs(user_module):
    images = _images().requires_grad_(True)
    r = build_reward(
        {"type": "python", "target": f"{user_module}:brightness", "differentiable": True, "kwargs": {"scale": 2.0}}
    )
    assert r.differentiable
    out = r(images, PROMPTS)
    out.sum().backward()
    n = images[0].numel()
    torch.testing.assert_close(images.grad, torch.full_like(images, 2.0 / n))


@pytest.mark.parametrize("fn", ["prompt_length_list", "prompt_length_numpy"])
def test_python_reward_converts_lists_and_arrays(user_module, fn):
    out = build_reward({"type": "python", "target": f"{user_module}:{fn}"})(_images(), PROMPTS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([float(len(p)) for p in PROMPTS]))


def test_python_reward_bad_outputs(user_module):
    with pytest.raises(ValueError, match=r"shape \[4, 3\].*expected \[4\]"):
        build_reward({"type": "python", "target": f"{user_module}:wrong_shape"})(_images(), PROMPTS)
    with pytest.raises(TypeError, match="returned str"):
        build_reward({"type": "python", "target": f"{user_module}:returns_string"})(_images(), PROMPTS)
    r = build_reward({"type": "python", "target": f"{user_module}:detached", "differentiable": True})
    with pytest.raises(ValueError, match="declared differentiable"):
        r(_images().requires_grad_(True), PROMPTS)


def test_python_target_errors(user_module):
    with pytest.raises(RewardTargetImportError, match="no_such_module_h1:f"):
        build_reward({"type": "python", "target": "no_such_module_h1:f"})
    with pytest.raises(RewardTargetImportError, match=f"no attribute 'missing'.*{user_module}:missing"):
        build_reward({"type": "python", "target": f"{user_module}:missing"})
    with pytest.raises(RewardTargetImportError, match="not a callable"):
        build_reward({"type": "python", "target": f"{user_module}:NOT_CALLABLE"})
    with pytest.raises(ConfigError, match="package.module:function"):
        build_reward({"type": "python", "target": "no_colon_here"})
    with pytest.raises(ConfigError, match="needs 'target"):
        build_reward({"type": "python"})
    # a module that raises while importing is reported with the target too
    with pytest.raises(RewardTargetImportError, match="h1_broken:f.*ZeroDivisionError"):
        build_reward({"type": "python", "target": "h1_broken:f"})


def test_brightness_is_mean_bt601_luma_and_differentiable():
    images = torch.rand(3, 5, 7, 3, requires_grad=True)
    reward = build_reward({"type": "brightness"})
    scores = reward(images, ["a", "b", "c"])
    expected = (0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]).mean(dim=(1, 2))
    assert reward.differentiable and torch.allclose(scores, expected)
    (grad,) = torch.autograd.grad(scores.sum(), images)
    assert torch.allclose(grad[0, 0, 0], torch.tensor([0.299, 0.587, 0.114]) / 35)
    assert float(reward(torch.ones(1, 2, 2, 3), ["x"])) == pytest.approx(1.0)
