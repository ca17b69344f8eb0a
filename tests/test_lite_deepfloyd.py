"""DeepFloyd IF on the built-in runtime: the tiny offline IF pipeline, deep-floyd-prompt-processor
and deep-floyd-guidance (pixel-space SDS), all without downloads."""

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import cache_dir, tiny_if_path  # noqa: F401  (fixtures)

import ddpo3d.lite as threestudio
from ddpo3d.diffusion import UNetNoisePredictor
from ddpo3d.lite.models.guidance.deep_floyd_guidance import DeepFloydGuidance
from ddpo3d.lite.models.prompt_processors.base import hash_prompt
from ddpo3d.lite.models.prompt_processors.deepfloyd_prompt_processor import DeepFloydPromptProcessor
from ddpo3d.lite.utils.base import NotSupportedByLiteError
from ddpo3d.testing import tiny_if
from ddpo3d.testing.tiny_if import build_t5_tokenizer, build_tiny_if_pipeline
from ddpo3d.utils.config import ConfigError
from ddpo3d.weights import WeightsNotFoundError


def make_pp(path, **kw):
    cfg = {"prompt": "a hamburger", "pretrained_model_name_or_path": path, "spawn": False}
    cfg.update(kw)
    return DeepFloydPromptProcessor(cfg)


def make_guidance(path, **kw):
    cfg = {"pretrained_model_name_or_path": path, "guidance_scale": 20.0}
    cfg.update(kw)
    return DeepFloydGuidance(cfg)


CAMS = dict(
    elevation=torch.tensor([10.0, 70.0]),
    azimuth=torch.tensor([0.0, 180.0]),
    camera_distances=torch.tensor([2.0, 2.0]),
)


# ---------------------------------------------------------------- tiny pipeline
def test_tokenizer_offline_t5_conventions():
    tok = build_t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    enc = tok(
        ["a delicious hamburger, front view", "Qx!"],
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    )
    assert enc.input_ids.shape == (2, 77)
    # </s> closes each prompt, then padding; every ASCII character is covered (no <unk>)
    for row, mask in zip(enc.input_ids, enc.attention_mask):
        n = int(mask.sum())
        assert row[n - 1] == 1 and (row[n:] == 0).all() and not (row[:n] == 2).any()
    # words from the built-in corpus are single pieces, unseen words fall back to pieces
    assert len(tok.tokenize("hamburger")) < len(tok.tokenize("xqzvw"))
    assert tok.decode(enc.input_ids[0], skip_special_tokens=True) == "a delicious hamburger, front view"


def test_pipeline_round_trips_offline(tiny_if_path, tmp_path):
    from diffusers import IFPipeline

    pipe = IFPipeline.from_pretrained(tiny_if_path, local_files_only=True)
    unet = pipe.unet
    assert (unet.config.in_channels, unet.config.out_channels) == (3, 6)
    assert unet.config.addition_embed_type == "text" and unet.config.encoder_hid_dim == tiny_if.TEXT_EMBED_DIM
    assert pipe.scheduler.config.variance_type == "learned_range"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert pipe.watermarker is None and pipe.safety_checker is None
    emb, neg = pipe.encode_prompt("a hamburger", device="cpu")
    assert emb.shape == neg.shape == (1, 77, tiny_if.TEXT_EMBED_DIM)
    # a second build with the same seed gives identical weights; an existing folder is reused
    again = build_tiny_if_pipeline(str(tmp_path / "again"), seed=0)
    pipe2 = IFPipeline.from_pretrained(again, local_files_only=True, text_encoder=None)
    for (n1, p1), (n2, p2) in zip(unet.state_dict().items(), pipe2.unet.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    mtime = os.path.getmtime(os.path.join(again, "model_index.json"))
    assert build_tiny_if_pipeline(again) == again
    assert os.path.getmtime(os.path.join(again, "model_index.json")) == mtime
    # the UNet runs on its native size with T5 embeddings
    x = torch.randn(2, 3, tiny_if.SAMPLE_SIZE, tiny_if.SAMPLE_SIZE)
    out = unet(x, torch.tensor([10, 900]), encoder_hidden_states=torch.cat([emb, neg])).sample
    assert out.shape == (2, 6, tiny_if.SAMPLE_SIZE, tiny_if.SAMPLE_SIZE)


# ---------------------------------------------------------------- prompt processor
def test_prompt_processor_embeddings_and_cache(tiny_if_path, cache_dir):
    pp = make_pp(tiny_if_path)
    assert pp.n_prompts_encoded == 6  # prompt, "", 4 view prompts (the negatives are all "")
    out = pp()
    d = tiny_if.TEXT_EMBED_DIM
    assert out.text_embeddings.shape == (1, 77, d)
    assert out.text_embeddings_vd.shape == out.uncond_text_embeddings_vd.shape == (4, 77, d)
    emb = out.get_text_embeddings(**CAMS)
    assert emb.shape == (4, 77, d)
    # cond rows first: camera 0 is front, camera 1 overhead
    torch.testing.assert_close(emb[0], out.text_embeddings_vd[out.direction2idx["front"]])
    torch.testing.assert_close(emb[1], out.text_embeddings_vd[out.direction2idx["overhead"]])
    assert not torch.allclose(emb[0], emb[1])
    # the cached file is the T5 encoding of the prompt (independent computation)
    from transformers import T5EncoderModel, T5Tokenizer

    tok = T5Tokenizer.from_pretrained(tiny_if_path, subfolder="tokenizer", local_files_only=True)
    enc = T5EncoderModel.from_pretrained(tiny_if_path, subfolder="text_encoder", local_files_only=True).eval()
    ids = tok(["a hamburger"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(ids.input_ids, attention_mask=ids.attention_mask)[0][0]
    cached = torch.load(cache_dir / f"{hash_prompt(tiny_if_path, 'a hamburger')}.pt", weights_only=True)
    torch.testing.assert_close(cached, ref)
    torch.testing.assert_close(out.text_embeddings[0], ref)
    # a second processor reads everything from the cache
    assert make_pp(tiny_if_path).n_prompts_encoded == 0
    assert make_pp(tiny_if_path, use_cache=False).n_prompts_encoded == 6


def test_prompt_processor_debug_encoder_matches_cache(tiny_if_path, cache_dir):
    pp = make_pp(tiny_if_path)
    pp.configure_text_encoder()
    emb, uncond = pp.get_text_embeddings(["a hamburger"], "")
    torch.testing.assert_close(emb, pp.text_embeddings)
    torch.testing.assert_close(uncond, pp.uncond_text_embeddings)
    pp.destroy_text_encoder()
    assert not hasattr(pp, "text_encoder")


def test_prompt_processor_missing_weights_and_bad_key(tmp_path, cache_dir):
    missing = tmp_path / "no_such_if"
    with pytest.raises(WeightsNotFoundError) as err:
        make_pp(str(missing))
    msg = str(err.value)
    assert "DeepFloyd IF T5 text encoder" in msg and str(missing) in msg and "huggingface-cli download" in msg
    with pytest.raises(WeightsNotFoundError) as err:
        make_pp("DeepFloyd/IF-I-XL-v1.0")  # not in the (offline) HF cache here
    assert "models--DeepFloyd--IF-I-XL-v1.0" in str(err.value)
    with pytest.raises(ConfigError, match="promt"):
        make_pp(str(missing), promt="typo")


def test_registry_names():
    assert threestudio.find("deep-floyd-guidance") is DeepFloydGuidance
    assert threestudio.find("deep-floyd-prompt-processor") is DeepFloydPromptProcessor
    from ddpo3d import host

    if host.HOST == "lite":
        assert host.DeepFloydGuidance is DeepFloydGuidance


# ---------------------------------------------------------------- guidance
@pytest.fixture(scope="module")
def guidance(tiny_if_path):
    return make_guidance(tiny_if_path)


@pytest.fixture
def prompt_utils(tiny_if_path, cache_dir):
    return make_pp(tiny_if_path)()


def test_guidance_attributes_like_threestudio(guidance):
    g = guidance
    assert g.pipe.text_encoder is None and g.unet is g.pipe.unet and g.scheduler is g.pipe.scheduler
    assert g.num_train_timesteps == 1000 and g.alphas.shape == (1000,)
    assert (g.min_step, g.max_step) == (20, 980)
    assert g.weights_dtype == torch.float32  # half_precision_weights falls back on CPU
    assert g.resolution == tiny_if.SAMPLE_SIZE and g.grad_clip_val is None
    assert not any(p.requires_grad for p in g.unet.parameters())
    x = torch.randn(2, 3, 32, 32)
    emb = torch.randn(2, 77, tiny_if.TEXT_EMBED_DIM)
    assert g.forward_unet(x, torch.tensor([5, 500]), emb).shape == (2, 6, 32, 32)


def test_guidance_sds_loss_and_gradient_reach_rgb(guidance, prompt_utils):
    rgb = torch.rand(2, 48, 40, 3, requires_grad=True)
    out = guidance(rgb, prompt_utils, **CAMS)
    assert set(out) == {"loss_sds", "grad_norm", "min_step", "max_step"}
    assert out["loss_sds"].dim() == 0 and torch.isfinite(out["loss_sds"])
    out["loss_sds"].backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    # loss = 0.5/B ||grad||^2 with the target trick, so loss and grad_norm agree
    torch.testing.assert_close(out["loss_sds"], 0.5 * out["grad_norm"] ** 2 / 2)


def test_guidance_sds_matches_threestudio_formula(guidance, prompt_utils):
    """Recompute SDS by hand (threestudio's inline code path) with the same t and noise."""
    rgb = torch.rand(1, 40, 40, 3, requires_grad=True)
    torch.manual_seed(3)
    out = guidance(rgb, prompt_utils, **{k: v[:1] for k, v in CAMS.items()})
    out["loss_sds"].backward()
    torch.manual_seed(3)
    t = torch.randint(guidance.min_step, guidance.max_step + 1, [1], dtype=torch.long)
    x = F.interpolate(rgb.detach().permute(0, 3, 1, 2) * 2 - 1, (32, 32), mode="bilinear", align_corners=False)
    noise = torch.randn_like(x)  # as SDS and threestudio draw it (follows x's strides)
    text = prompt_utils.get_text_embeddings(**{k: v[:1] for k, v in CAMS.items()})
    with torch.no_grad():
        x_t = guidance.scheduler.add_noise(x, noise, t)
        pred = guidance.forward_unet(torch.cat([x_t] * 2), torch.cat([t] * 2), encoder_hidden_states=text)
    eps_c, eps_u = pred.chunk(2)
    eps_c, eps_u = eps_c[:, :3], eps_u[:, :3]
    eps = eps_c + 20.0 * (eps_c - eps_u)
    grad = (1 - guidance.alphas[t]).view(-1, 1, 1, 1) * (eps - noise)
    torch.testing.assert_close(out["grad_norm"], grad.norm(), rtol=1e-4, atol=1e-4)
    # d loss / d x = grad (B = 1); through the bilinear resize to rgb
    xr = rgb.detach().clone().requires_grad_(True)
    xx = F.interpolate(xr.permute(0, 3, 1, 2) * 2 - 1, (32, 32), mode="bilinear", align_corners=False)
    (xx * grad).sum().backward()
    torch.testing.assert_close(rgb.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_guidance_schedules_grad_clip_and_errors(tiny_if_path, prompt_utils):
    g = make_guidance(
        tiny_if_path,
        grad_clip=[0, 0.01, 0.02, 10],
        min_step_percent=0.3,  # a float, as threestudio types it (our ddpo3d- guidance takes schedules)
        max_step_percent=0.6,
        weighting_strategy="uniform",
    )
    g.update_step(0, 5)
    assert g.grad_clip_val == pytest.approx(0.015)
    assert (g.min_step, g.max_step) == (300, 600)
    out = g(torch.rand(1, 32, 32, 3, requires_grad=True), prompt_utils, **{k: v[:1] for k, v in CAMS.items()})
    assert out["min_step"] == 300 and out["max_step"] == 600
    # every element of the clipped gradient is within ±0.015: ||grad|| <= 0.015 sqrt(3·32·32)
    assert float(out["grad_norm"]) <= 0.015 * (3 * 32 * 32) ** 0.5 + 1e-6
    with pytest.raises(ValueError, match="latent"):
        g(torch.rand(1, 32, 32, 3), prompt_utils, **{k: v[:1] for k, v in CAMS.items()}, rgb_as_latents=True)
    with pytest.raises(ValueError, match="weighting"):
        make_guidance(tiny_if_path, weighting_strategy="nope")
    with pytest.raises(ConfigError, match="guidance_scal"):
        make_guidance(tiny_if_path, guidance_scal=3.0)
    with pytest.raises(ConfigError, match="min_step_percent"):
        make_guidance(tiny_if_path, min_step_percent=[0, 0.5, 0.1, 10])


def test_guidance_missing_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        make_guidance(str(tmp_path / "nowhere"))
    assert "DeepFloyd IF pipeline" in str(err.value) and "nowhere" in str(err.value)


def test_guidance_eval_is_one_clear_error(guidance, prompt_utils):
    with pytest.raises(NotSupportedByLiteError, match="guidance_eval=True is not supported by the built-in runtime"):
        guidance(torch.rand(2, 32, 32, 3), prompt_utils, **CAMS, guidance_eval=True)


def test_predictor_wraps_guidance_in_pixel_mode(guidance):
    pred = UNetNoisePredictor.from_guidance(guidance)
    assert isinstance(pred, UNetNoisePredictor) and not pred.latent_mode
    rgb = torch.rand(1, 32, 32, 3)
    torch.testing.assert_close(pred.encode(rgb), rgb.permute(0, 3, 1, 2) * 2 - 1)


# ---------------------------------------------------------------- real weights (skipped here)
def _have_if_weights() -> bool:
    from ddpo3d.weights import resolve_pretrained

    try:
        resolve_pretrained("DeepFloyd/IF-I-XL-v1.0", "IF-I-XL", required_file=os.path.join("unet", "config.json"))
        return True
    except WeightsNotFoundError:
        return False


@pytest.mark.weights
@pytest.mark.skipif(not _have_if_weights(), reason="DeepFloyd/IF-I-XL-v1.0 not in the Hugging Face cache")
def test_real_if_guidance_one_step(cache_dir):
    pp = DeepFloydPromptProcessor({"prompt": "a hamburger", "spawn": False})
    g = DeepFloydGuidance({})
    assert g.resolution == 64 and g.unet.config.out_channels == 6
    rgb = torch.rand(1, 64, 64, 3, device=g.device, requires_grad=True)
    out = g(rgb, pp(), **{k: v[:1].to(g.device) for k, v in CAMS.items()})
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and torch.isfinite(rgb.grad).all()
    assert pp.text_embeddings.shape == (1, 77, 4096)
