"""stable-diffusion-guidance on the tiny offline pipeline."""

import pytest
import torch
from helpers import tiny_sd  # noqa: F401  (fixture)

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.guidance.stable_diffusion_guidance import StableDiffusionGuidance
from ddpo3d.lite.models.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor
from ddpo3d.lite.utils.base import NotSupportedByLiteError
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


def test_latent_input_encode_decode(prompt_utils, guidance):
    latents = torch.randn(1, 16, 16, 4, device=guidance.device, requires_grad=True)
    out = guidance(latents, prompt_utils, *cams(1, guidance.device), rgb_as_latents=True)
    out["loss_sds"].backward()
    assert latents.grad.abs().sum() > 0
    imgs = guidance.decode_latents(torch.randn(1, 4, 8, 8, device=guidance.device))
    assert imgs.shape == (1, 3, 64, 64) and imgs.min() >= 0 and imgs.max() <= 1


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_sds_matches_the_formula_written_out(tiny_sd, prompt_utils, weighting):
    """DreamFusion eq. 3 recomputed by hand from the pipeline's parts (threestudio's
    ``compute_grad_sds`` path) with the same t, posterior sample and noise."""
    g = StableDiffusionGuidance(
        {"pretrained_model_name_or_path": tiny_sd, "guidance_scale": 7.5, "weighting_strategy": weighting}
    )
    cam = cams(1)
    rgb = torch.rand(1, 40, 40, 3, requires_grad=True)
    torch.manual_seed(3)
    out = g(rgb, prompt_utils, *cam)
    out["loss_sds"].backward()

    torch.manual_seed(3)
    xr = rgb.detach().clone().requires_grad_(True)
    x512 = torch.nn.functional.interpolate(xr.permute(0, 3, 1, 2), (64, 64), mode="bilinear", align_corners=False)
    latents = g.vae.encode(x512 * 2 - 1).latent_dist.sample() * g.vae.config.scaling_factor
    t = torch.randint(g.min_step, g.max_step + 1, [1], dtype=torch.long)
    noise = torch.randn_like(latents)
    a = g.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
        text = prompt_utils.get_text_embeddings(*cam)
        eps = g.unet(torch.cat([x_t] * 2), torch.cat([t] * 2), encoder_hidden_states=text).sample
    eps_c, eps_u = eps.chunk(2)
    eps = eps_c + 7.5 * (eps_c - eps_u)
    w = {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia3d": a.sqrt() * (1 - a)}[weighting]
    grad = w * (eps - noise)
    torch.testing.assert_close(out["grad_norm"], grad.norm(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["loss_sds"], 0.5 * (grad**2).sum(), rtol=1e-4, atol=1e-4)
    (latents * grad).sum().backward()  # d loss / d latents = grad (B = 1), on through VAE and resize
    torch.testing.assert_close(rgb.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_unimplemented_threestudio_options_are_one_clear_error(tiny_sd, prompt_utils, guidance):
    for key, value in [
        ("use_img_loss", True),
        ("use_sjc", True),
        ("sqrt_anneal", True),
        ("token_merging", True),
        ("token_merging_params", {"ratio": 0.5}),
    ]:
        with pytest.raises(NotSupportedByLiteError) as err:
            StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, key: value})
        assert f"{key}={value!r} is not supported by the built-in runtime ddpo3d.lite; run with threestudio" in str(
            err.value
        )
    with pytest.raises(NotSupportedByLiteError, match="guidance_eval=True"):
        guidance(torch.rand(1, 16, 16, 3), prompt_utils, *cams(1), guidance_eval=True)
    # keys that only act through those features parse and are inert, as in threestudio
    StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, "var_red": False, "max_items_eval": 2})


def test_config_errors(tiny_sd, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="guidance_scal"):
        StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, "guidance_scal": 7.5})
    with pytest.raises(ValueError, match="weighting"):
        StableDiffusionGuidance({"pretrained_model_name_or_path": tiny_sd, "weighting_strategy": "foo"})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match="stabilityai/stable-diffusion-2-1-base"):
        StableDiffusionGuidance({"pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1-base"})
