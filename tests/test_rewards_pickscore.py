"""pickscore on a tiny transformers CLIPModel built from a config (real key layout), offline."""

from pathlib import Path

import pytest
import torch
from helpers import fake_hf_file

from ddpo3d.rewards import WeightsNotFoundError, build_reward
from ddpo3d.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess
from ddpo3d.testing.tiny_pickscore import build_tiny_pickscore, write_tiny_pickscore

PROMPTS = ["a red car", "a blue house and a long garden path", "a tree"]


def tiny_clip_model(seed=0):
    return build_tiny_pickscore(seed)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return Path(write_tiny_pickscore(str(tmp_path_factory.mktemp("pickscore")), seed=3))


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_score_is_logit_scale_times_cosine_and_matches_clipmodel_forward(model_dir, empty_caches):
    reward = build_reward({"type": "pickscore", "model": str(model_dir)})
    images = torch.rand(3, 48, 80, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    scores = reward(images, PROMPTS)
    # reference: CLIPModel.forward's logits_per_image (logit_scale.exp() · cos), its diagonal
    ref_model = tiny_clip_model(3)
    tok = reward.tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    pixels = clip_preprocess(images.detach(), 64, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    with torch.no_grad():
        logits = ref_model(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pixels
        ).logits_per_image
    assert torch.allclose(scores.detach(), logits.diagonal(), atol=1e-4)
    assert float(reward.model.logit_scale.detach().exp()) == pytest.approx(float(ref_model.logit_scale.detach().exp()))
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # the fallback tokenizer (open_clip's bundled BPE) gives open_clip's token ids
    import open_clip

    ids = reward.tokenizer(["a red car"])["input_ids"][0]
    assert ids == open_clip.get_tokenizer("ViT-B-32")(["a red car"])[0][: len(ids)].tolist()


def test_loads_from_the_hub_cache_and_names_missing_weights(model_dir, empty_caches):
    with pytest.raises(WeightsNotFoundError) as err:
        build_reward({"type": "pickscore"})
    msg = str(err.value)
    assert "yuvalkirstain/PickScore_v1" in msg and "models--yuvalkirstain--PickScore_v1" in msg
    assert "huggingface-cli download" in msg and "model:" in msg
    for f in sorted(model_dir.iterdir()):
        fake_hf_file(empty_caches / "hf", "yuvalkirstain/PickScore_v1", f.name, f.read_bytes())
    reward = build_reward({"type": "pickscore"})
    assert reward(torch.rand(2, 32, 32, 3), PROMPTS[:2]).shape == (2,)
    with pytest.raises(WeightsNotFoundError, match="tokenizer"):
        build_reward({"type": "pickscore", "tokenizer": str(empty_caches / "nowhere")})
