"""stable-diffusion-guidance on the tiny offline pipeline."""

import pytest
import torch
from helpers import tiny_sd  # noqa: F401  (fixture)

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.guidance.stable_diffusion_guidance import StableDiffusionGuidance
from ddpo3d.lite.models.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor
from ddpo3d.testing.tiny_sd import NATIVE_RESOLUTION
from ddpo3d.utils.config import ConfigError
from ddpo3d.weights import WeightsNotFoundError


@pytest.fixture(scope="module")
def prompt_utils(tiny_sd, tmp_path_factory):
    import os

    old = os.environ.get("DDPO3D_TEXT_EMBEDDING_CACHE")
    os.environ["DDPO3D_TEXT_EMBEDDING_CACHE"] = str(tmp_path_factory.mktemp("emb"))
    try:
        pp = StableDiffusionPromptProcessor(
            {"prompt": "a hamburger", "pretrained_model_name_or_path": tiny_sd, "spawn": False}
        )
    finally:
        if old is None:
            os.environ.pop("DDPO3D_TEXT_EMBEDDING_CACHE")
        else:
            os.environ["DDPO3D_TEXT_EMBEDDING_CACHE"] = old
    return pp()


@pytest.fixture(scope="module")
def guidance(tiny_sd):
    return StableDiffusionGuidance(
        {"pretrained_model_name_or_path": tiny_sd, "guidance_scale": 100.0, "grad_clip": [0, 0.5, 2.0, 100]}
    )


def cams(b, device="cpu"):
    return (
        torch.zeros(b, device=device),
        torch.linspace(-180, 170, b, device=device),
        torch.full((b,), 2.0, device=device),
    )


def test_guidance_attributes_match_threestudio(guidance):
    for name in (
        "pipe",
        "vae",
        "unet",
        "scheduler",
        "alphas",
        "num_train_timesteps",
        "min_step",
        "max_step",
        "weights_dtype",
        "grad_clip_val",
    ):
        assert hasattr(guidance, name), name
    assert guidance.resolution == NATIVE_RESOLUTION == 64
    assert guidance.weights_dtype == torch.float32  # fp16 is CUDA-only
    assert guidance.alphas.shape == (guidance.num_train_timesteps,)
    assert (guidance.min_step, guidance.max_step) == (20, 980)
    assert not any(p.requires_grad for p in guidance.unet.parameters())
    assert threestudio.__modules__["stable-diffusion-guidance"] is StableDiffusionGuidance


def test_sds_loss_is_finite_and_gradient_reaches_rgb(guidance, prompt_utils):
    rgb = torch.rand(2, 24, 24, 3, device=guidance.device, requires_grad=True)
    out = guidance(rgb, prompt_utils, *cams(2, guidance.device))
    assert set(out) == {"loss_sds", "grad_norm", "min_step", "max_step"}
    assert torch.isfinite(out["loss_sds"]) and out["loss_sds"] > 0
    out["loss_sds"].backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_update_step_schedules_and_grad_clip(guidance, prompt_utils):
    guidance.update_step(0, 50)
    assert guidance.grad_clip_val == pytest.approx(1.25)
    torch.manual_seed(0)
    out = guidance(torch.rand(1, 16, 16, 3, device=guidance.device), prompt_utils, *cams(1, guidance.device))
    # per-element clipping bounds the SDS gradient: |grad| <= clip  =>  ||grad|| <= clip * sqrt(numel)
    numel = 4 * 32 * 32
    assert out["grad_norm"] <= 1.25 * numel**0.5 + 1e-4
    # a number, as threestudio types it (the ddpo3d- guidances widen it to a schedule)
    with pytest.raises(Exception, match="min_step_percent"):
        guidance.cfg.min_step_percent = [0, 0.5, 0.25, 100]
    guidance.cfg.min_step_percent = 0.25
    guidance.update_step(0, 100)
    assert guidance.min_step == 250
    guidance.cfg.min_step_percent = 0.02
    guidance.update_step(0, 0)


def test_latent_input_encode_decode_and_img_loss(tiny_sd, prompt_utils, guidance):
    latents = torch.randn(1, 16, 16, 4, device=guidance.device, requires_grad=True)
    out = guidance(latents, prompt_utils, *cams(1, guidance.device), rgb_as_latents=True)
    out["loss_sds"].backward()
    assert latents.grad.abs().sum() > 0
    imgs = guidance.decode_latents(torch.randn(1, 4, 8, 8, device=guidance.device))
    assert imgs.shape == (1, 3, 64, 64) and imgs.min() >= 0 and imgs.max() <= 1
    g2 = StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, "use_img_loss": True})
    out = g2(torch.rand(1, 16, 16, 3, device=g2.device), prompt_utils, *cams(1, g2.device))
    assert torch.isfinite(out["loss_sds_img"])


def test_guidance_eval_previews(guidance, prompt_utils):
    out = guidance(
        torch.rand(1, 16, 16, 3, device=guidance.device), prompt_utils, *cams(1, guidance.device), guidance_eval=True
    )
    ev = out["eval"]
    assert ev["imgs_final"].shape == (1, 64, 64, 3) and len(ev["texts"]) == 1


def test_config_errors(tiny_sd, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="guidance_scal"):
        StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, "guidance_scal": 7.5})
    with pytest.raises(NotImplementedError, match="use_sjc"):
        StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, "use_sjc": True})
    with pytest.raises(ValueError, match="weighting"):
        StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, "weighting_strategy": "foo"})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match="stabilityai/stable-diffusion-2-1-base"):
        StableDiffusionGuidance({"pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1-base"})
