"""stable-diffusion-prompt-processor on the tiny offline pipeline: directions, cache, errors."""

import os

import pytest
import torch
from helpers import cache_dir, tiny_sd  # noqa: F401  (fixtures)

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.prompt_processors.base import hash_prompt, shift_azimuth_deg
from ddpo3d.lite.models.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor
from ddpo3d.utils.config import ConfigError
from ddpo3d.weights import WeightsNotFoundError


def make(tiny_sd, **kw):
    cfg = {"prompt": "a hamburger", "pretrained_model_name_or_path": tiny_sd, "spawn": False}
    cfg.update(kw)
    return StableDiffusionPromptProcessor(cfg)


def test_view_dependent_directions_and_prompts(tiny_sd, cache_dir):
    out = make(tiny_sd)()
    assert out.prompts_vd == [
        "a hamburger, side view",
        "a hamburger, front view",
        "a hamburger, back view",
        "a hamburger, overhead view",
    ]
    # front |azi| < 45, back |azi| > 135, overhead ele > 60 (overrides), else side
    ele = torch.tensor([0.0, 10.0, 20.0, 70.0, 0.0, 0.0, 30.0])
    azi = torch.tensor([10.0, 180.0, 90.0, 0.0, -170.0, 350.0, -90.0])
    dist = torch.full((7,), 2.0)
    expected = ["front", "back", "side", "overhead", "back", "front", "side"]
    emb = out.get_text_embeddings(ele, azi, dist)
    assert emb.shape == (14, 77, 16)
    for i, name in enumerate(expected):  # each camera's row is its direction's embedding
        torch.testing.assert_close(emb[i], out.text_embeddings_vd[out.direction2idx[name]])
    # cond rows are the direction's embedding, uncond rows the negative prompt's
    torch.testing.assert_close(emb[1], out.text_embeddings_vd[out.direction2idx["back"]])
    torch.testing.assert_close(emb[7 + 3], out.uncond_text_embeddings_vd[out.direction2idx["overhead"]])
    assert not torch.allclose(emb[0], emb[1])
    flat = out.get_text_embeddings(ele, azi, dist, view_dependent_prompting=False)
    torch.testing.assert_close(flat[:7], out.text_embeddings.expand(7, -1, -1))
    torch.testing.assert_close(shift_azimuth_deg(torch.tensor([190.0, -190.0])), torch.tensor([-170.0, 170.0]))


def test_prompt_front_style_and_manual_prompts(tiny_sd, cache_dir):
    pp = make(tiny_sd, view_dependent_prompt_front=True, prompt_back="the back of a bun", front_threshold=30.0)
    assert pp.prompts_vd == [
        "side view of a hamburger",
        "front view of a hamburger",
        "the back of a bun",
        "overhead view of a hamburger",
    ]
    out = pp()
    # front_threshold 30: azimuth 40 is a side view, 20 a front view
    emb = out.get_text_embeddings(torch.zeros(2), torch.tensor([40.0, 20.0]), torch.ones(2))
    torch.testing.assert_close(emb[0], out.text_embeddings_vd[out.direction2idx["side"]])
    torch.testing.assert_close(emb[1], out.text_embeddings_vd[out.direction2idx["front"]])


def test_embedding_cache_hit_and_key(tiny_sd, cache_dir):
    first = make(tiny_sd, negative_prompt="blurry")
    assert first.n_prompts_encoded == 6  # prompt, "blurry", 4 view prompts (the 4 view negatives are "blurry")
    path = cache_dir / f"{hash_prompt(tiny_sd, 'a hamburger, front view')}.pt"
    assert path.is_file()
    second = make(tiny_sd, negative_prompt="blurry")
    assert second.n_prompts_encoded == 0
    torch.testing.assert_close(first.text_embeddings_vd, second.text_embeddings_vd)
    # use_cache=false recomputes everything
    assert make(tiny_sd, negative_prompt="blurry", use_cache=False).n_prompts_encoded == 6
    # different prompts give different embeddings; the encoder is deterministic
    torch.testing.assert_close(
        torch.load(path, weights_only=True), first.text_embeddings_vd[first.direction2idx["front"]]
    )


def test_missing_weights_error_names_model_and_places(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    with pytest.raises(WeightsNotFoundError) as err:
        StableDiffusionPromptProcessor({"prompt": "x", "pretrained_model_name_or_path": "someorg/no-such-sd"})
    msg = str(err.value)
    assert "someorg/no-such-sd" in msg and "models--someorg--no-such-sd" in msg and "How to provide" in msg
    with pytest.raises(WeightsNotFoundError, match="local directory"):
        StableDiffusionPromptProcessor({"prompt": "x", "pretrained_model_name_or_path": str(tmp_path / "nope")})


def test_config_errors_and_unsupported_options(tiny_sd, cache_dir):
    with pytest.raises(ConfigError, match="negative_promt"):
        make(tiny_sd, negative_promt="x")
    with pytest.raises(NotImplementedError, match="use_perp_neg"):
        make(tiny_sd, use_perp_neg=True)
    with pytest.raises(NotImplementedError, match="use_prompt_debiasing"):
        make(tiny_sd, use_prompt_debiasing=True)
    assert threestudio.__modules__["stable-diffusion-prompt-processor"] is StableDiffusionPromptProcessor


def test_spawn_true_runs_in_process(tiny_sd, cache_dir, caplog):
    caplog.set_level("INFO", logger="ddpo3d")
    pp = make(tiny_sd, prompt="a teapot", spawn=True)
    assert pp.n_prompts_encoded > 0
    assert any("in-process" in r.message for r in caplog.records)
    assert os.path.isdir(cache_dir)
