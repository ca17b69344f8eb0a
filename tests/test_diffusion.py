"""Noise predictors: the analytic prior's closed forms, the diffusers UNet adapter (latent / pixel,
ε / v prediction), CFG convention, schedules."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

torch.set_num_threads(1)

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: E402

from ddpo3d.diffusion import (  # noqa: E402
    AnalyticGaussianPrior,
    UNetNoisePredictor,
    add_noise,
    cfg_combine,
    ddim_step_with_logprob,
    make_alphas_cumprod,
)


def tiny_unet(in_channels=4, out_channels=4, seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    ).eval()


def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    ).eval()


def sd_scheduler(**kw):
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        **kw,
    )


# ---------------------------------------------------------------- schedules
def test_default_schedule_matches_stable_diffusion_scheduler():
    ours = make_alphas_cumprod()
    theirs = sd_scheduler().alphas_cumprod
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(
        make_alphas_cumprod(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
        DDIMScheduler(beta_schedule="linear").alphas_cumprod,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="beta_schedule"):
        make_alphas_cumprod(beta_schedule="cosine-ish")


def test_add_noise_matches_diffusers():
    sch = sd_scheduler()
    x0, eps = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    t = torch.tensor([0, 400, 999])
    assert torch.allclose(add_noise(sch.alphas_cumprod, x0, eps, t), sch.add_noise(x0, eps, t), atol=1e-6)


# ---------------------------------------------------------------- analytic prior
def test_analytic_eps_is_tweedie_of_the_exact_log_density():
    """ε̂ = -sqrt(1-ᾱ) ∇ log p_t, with log p_t differentiated by autograd (independent path)."""
    prior = AnalyticGaussianPrior(sigma_data=0.3)
    means = torch.randn(4, 3, 3, 2, 2)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    t = torch.tensor([1, 250, 600, 999])
    (g,) = torch.autograd.grad(prior.log_density(x, t, means).sum(), x)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(prior.predict_eps(x, t, means), -(1 - ab).sqrt() * g, atol=1e-5)


def test_analytic_log_density_is_normalised_gaussian_for_one_component():
    prior = AnalyticGaussianPrior(sigma_data=0.5)
    mu = torch.randn(2, 1, 3, 1, 2)
    x = torch.randn(2, 3, 1, 2)
    t = torch.tensor([300, 700])
    ab = prior.alphas_cumprod[t]
    var = ab * 0.25 + (1 - ab)
    ref = (
        torch.distributions.Normal(ab.sqrt().view(-1, 1, 1, 1) * mu[:, 0], var.sqrt().view(-1, 1, 1, 1))
        .log_prob(x)
        .flatten(1)
        .sum(1)
    )
    assert torch.allclose(prior.log_density(x, t, mu), ref, atol=1e-5)


def test_analytic_eps_is_the_posterior_mean_of_the_noise_by_monte_carlo():
    """E[ε | x_t] by self-normalised importance sampling over x_0 ~ mixture, 1-D."""
    prior = AnalyticGaussianPrior(sigma_data=0.2)
    means = torch.tensor([-0.8, 0.6]).view(1, 2, 1, 1, 1)
    t = torch.tensor([400])
    ab = float(prior.alphas_cumprod[400])
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    x_t = torch.tensor(0.3).view(1, 1, 1, 1)
    gen = torch.Generator().manual_seed(1)
    n = 400_000
    comp = torch.randint(0, 2, (n,), generator=gen)
    x0 = means.flatten()[comp] + 0.2 * torch.randn(n, generator=gen)
    eps = (x_t.flatten() - a * x0) / b  # the noise that maps this x0 to x_t
    logw = -0.5 * eps**2  # likelihood p(x_t | x0) ∝ N(eps; 0, 1)
    w = torch.softmax(logw, 0)
    mc = float((w * eps).sum())
    se = float(((w**2) * (eps - mc) ** 2).sum().sqrt())
    exact = float(prior.predict_eps(x_t, t, means))
    assert abs(mc - exact) < 3 * se + 1e-4, (mc, exact, se)


def test_analytic_prior_cfg_encode_decode_and_errors():
    prior = AnalyticGaussianPrior(sigma_data=0.1, clamp_decode=False)
    img = torch.rand(2, 4, 5, 3)
    x0 = prior.encode(img)
    assert x0.shape == (2, 3, 4, 5) and torch.allclose(x0, img.permute(0, 3, 1, 2) * 2 - 1)
    assert torch.allclose(prior.decode(x0), img, atol=1e-6)
    assert AnalyticGaussianPrior().decode(torch.full((1, 3, 2, 2), 3.0)).max() == 1.0
    cond, uncond = torch.randn(2, 1, 3, 4, 5), torch.randn(2, 3, 3, 4, 5)
    x, t = torch.randn(2, 3, 4, 5), torch.tensor([10, 900])
    eps_c, eps_u = prior.predict_eps_pair(x, t, cond, uncond)
    assert torch.allclose(prior.predict_eps(x, t, cond, uncond, 7.5), eps_c + 7.5 * (eps_c - eps_u))
    assert torch.allclose(prior.predict_eps(x, t, cond, None, 7.5), eps_c)
    with pytest.raises(ValueError, match="component means"):
        prior.predict_eps(x, t, torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="do not match"):
        prior.predict_eps(x, t, torch.randn(2, 1, 3, 4, 4))


def test_cfg_combine_is_threestudio_convention():
    c, u = torch.tensor([1.0]), torch.tensor([0.25])
    assert float(cfg_combine(c, u, 100.0)) == pytest.approx(1.0 + 100.0 * 0.75)
    assert float(cfg_combine(c, None, 100.0)) == 1.0


# ---------------------------------------------------------------- UNet adapter
def test_latent_unet_adapter_shapes_grad_and_cfg():
    unet, vae = tiny_unet(), tiny_vae()
    sch = sd_scheduler()
    pred = UNetNoisePredictor(unet, vae, sch.alphas_cumprod, sample_latents=False)
    assert pred.latent_mode and pred.num_train_timesteps == 1000
    assert pred.vae_scaling_factor == pytest.approx(vae.config.scaling_factor)
    assert len(list(pred.parameters())) == 0  # wrapped weights are not registered
    img = torch.rand(2, 16, 16, 3, requires_grad=True)
    x0 = pred.encode(img)
    assert x0.shape == (2, 4, 8, 8)
    x0.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    ref = vae.encode(img.detach().permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(x0.detach(), ref, atol=1e-5)
    out = pred.decode(x0.detach())
    assert out.shape == (2, 16, 16, 3) and out.min() >= 0 and out.max() <= 1

    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    cond, uncond = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        e_c = unet(x_t, t, encoder_hidden_states=cond).sample
        e_u = unet(x_t, t, encoder_hidden_states=uncond).sample
        eps = pred.predict_eps(x_t, t, cond, uncond, 100.0)
    assert torch.allclose(eps, e_c + 100.0 * (e_c - e_u), atol=1e-4)
    assert torch.allclose(pred.predict_eps(x_t, t, cond).detach(), e_c, atol=1e-5)
    # differentiable w.r.t. x_t (the unet_jacobian path)
    x_req = x_t.clone().requires_grad_(True)
    pred.predict_eps(x_req, t, cond, uncond, 5.0).square().sum().backward()
    assert x_req.grad.abs().sum() > 0


def test_pixel_unet_adapter_deepfloyd_six_channels():
    unet = tiny_unet(in_channels=3, out_channels=6)
    pred = UNetNoisePredictor(unet, None, sd_scheduler().alphas_cumprod, resolution=8)
    assert not pred.latent_mode
    img = torch.rand(2, 16, 16, 3)
    x0 = pred.encode(img)
    assert x0.shape == (2, 3, 8, 8) and x0.min() >= -1 and x0.max() <= 1
    t, cond = torch.tensor([5, 900]), torch.randn(2, 3, 8)
    with torch.no_grad():
        raw = unet(x0, t, encoder_hidden_states=cond).sample
        eps = pred.predict_eps(x0, t, cond)
    assert raw.shape[1] == 6 and eps.shape == (2, 3, 8, 8)
    assert torch.allclose(eps, raw[:, :3], atol=1e-6)
    assert pred.decode(x0).shape == (2, 8, 8, 3)


def test_v_prediction_conversion_against_diffusers_ddim():
    """ε from v (ours) stepped as ε must equal diffusers stepping the raw v output."""
    unet = tiny_unet()
    sch_v = sd_scheduler(prediction_type="v_prediction")
    sch_v.set_timesteps(50)
    pred = UNetNoisePredictor(unet, None, sch_v.alphas_cumprod, prediction_type="v_prediction")
    x_t, cond = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8)
    t = 501
    with torch.no_grad():
        v = unet(x_t, torch.tensor([t]), encoder_hidden_states=cond).sample
        eps = pred.predict_eps(x_t, torch.tensor([t]), cond)
    ab = sch_v.alphas_cumprod[t]
    assert torch.allclose(eps, ab.sqrt() * v + (1 - ab).sqrt() * x_t, atol=1e-5)
    z = torch.randn(1, 4, 8, 8)
    theirs = sch_v.step(v, t, x_t, eta=1.0, variance_noise=z).prev_sample
    ours = ddim_step_with_logprob(
        sch_v.alphas_cumprod,
        eps,
        t,
        x_t,
        1.0,
        prev_timestep=t - 20,
        variance_noise=z,
        final_alpha_cumprod=float(sch_v.final_alpha_cumprod),
    )
    assert torch.allclose(ours.prev_sample, theirs, atol=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        UNetNoisePredictor(unet, None, sch_v.alphas_cumprod, prediction_type="sample")


def test_from_guidance_wraps_threestudio_attributes():
    unet, vae, sch = tiny_unet(), tiny_vae(), sd_scheduler()
    guidance = SimpleNamespace(
        unet=unet, vae=vae, alphas=sch.alphas_cumprod, scheduler=sch, weights_dtype=torch.float32
    )
    pred = UNetNoisePredictor.from_guidance(guidance)
    assert pred.unet is unet and pred.vae is vae and pred.prediction_type == "epsilon"
    assert pred.final_alpha_cumprod == pytest.approx(float(sch.alphas_cumprod[0]))
    no_vae = UNetNoisePredictor.from_guidance(SimpleNamespace(unet=unet, alphas=sch.alphas_cumprod, scheduler=sch))
    assert not no_vae.latent_mode


def test_decode_at_reward_size():
    """Latents are resized to size / 8-ish before the decoder; in pixel space it is an image resize."""
    import torch.nn.functional as F

    unet, vae, sch = tiny_unet(), tiny_vae(), sd_scheduler()
    pred = UNetNoisePredictor(unet, vae, sch.alphas_cumprod)
    factor = pred.pixels_per_unit
    assert factor == 2 ** (len(vae.config.block_out_channels) - 1)
    x0 = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert pred.decode_at(x0, None).shape == (2, 16 * factor, 16 * factor, 3)
        assert pred.decode_at(x0, 8 * factor).shape == (2, 8 * factor, 8 * factor, 3)
    prior = AnalyticGaussianPrior(clamp_decode=False)
    x = torch.randn(1, 3, 16, 16)
    resized = F.interpolate(x, (8, 8), mode="bilinear", antialias=True, align_corners=False)
    assert prior.pixels_per_unit == 1
    assert torch.allclose(prior.decode_at(x, 8), prior.decode(resized))


def test_tiny_reward_decoder_loads_offline_and_errors_once(tmp_path):
    """A seeded tiny TAESD twin stands in for TAESD; a missing one is one clear error."""
    from ddpo3d.diffusion.tiny_decoder import TinyLatentDecoder
    from ddpo3d.objectives import DDPO3D
    from ddpo3d.testing.tiny_taesd import write_tiny_taesd
    from ddpo3d.weights import WeightsNotFoundError

    folder = write_tiny_taesd(str(tmp_path / "taesd-twin"))
    dec = TinyLatentDecoder(folder)
    x0 = torch.randn(2, 4, 8, 8)
    img = dec.decode(x0)
    factor = dec.model.upsampling
    assert factor == 2
    assert img.shape == (2, 8 * factor, 8 * factor, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    unet, vae, sch = tiny_unet(), tiny_vae(), sd_scheduler()
    pred = UNetNoisePredictor(unet, vae, sch.alphas_cumprod)
    obj = DDPO3D({"reward_decoder": str(tmp_path / "taesd-twin"), "reward_resolution": 4 * factor})
    assert obj.decode(pred, x0).shape == (2, 4 * factor, 4 * factor, 3)
    with pytest.raises(WeightsNotFoundError, match="reward_decoder") as err:
        TinyLatentDecoder(str(tmp_path / "nowhere"))
    assert "huggingface-cli download madebyollin/taesd" in str(err.value)


def test_tiny_reward_decoder_matches_diffusers_autoencoder_tiny(tmp_path):
    """Our TAESD decoder reads diffusers' AutoencoderTiny folders and decodes exactly as it does."""
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "AutoencoderTiny"):
        pytest.skip(f"diffusers {diffusers.__version__} has no AutoencoderTiny (added in 0.20)")
    from ddpo3d.diffusion.tiny_decoder import TinyLatentDecoder

    torch.manual_seed(0)
    ref = diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        num_encoder_blocks=(1, 2, 1),
        num_decoder_blocks=(2, 1, 1),
        latent_channels=4,
    )
    ref.save_pretrained(tmp_path / "ref")
    ours = TinyLatentDecoder(str(tmp_path / "ref"))
    x0 = 2.0 * torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        want = ((ref.decode(x0).sample + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)
    assert torch.allclose(ours.decode(x0), want, atol=1e-6)
    cfg_path = tmp_path / "ref" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_decoder_blocks"] = [3, 1, 1]  # one block more than the weights hold
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not fit its config.json"):
        TinyLatentDecoder(str(tmp_path / "ref"))
