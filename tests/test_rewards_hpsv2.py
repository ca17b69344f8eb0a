"""hpsv2 on the tiny seeded open_clip model, offline: preprocessing, score, gradients, loading."""

import io
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import fake_hf_file

from ddpo3d.rewards import WeightsNotFoundError, build_reward
from ddpo3d.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ddpo3d.rewards.hpsv2 import longest_side_preprocess
from ddpo3d.testing.tiny_clip import TINY_CLIP_NAME, build_tiny_clip
from ddpo3d.utils.config import ConfigError

PROMPTS = ["a red car", "a blue house", "a tree"]


def _images(b=3, h=48, w=80, seed=1):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _checkpoint_bytes(seed=7, prefix=""):
    """HPSv2's file layout: torch.save({"state_dict": <open_clip CLIP state dict>})."""
    state = {prefix + k: v for k, v in build_tiny_clip(seed).state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state}, buf)
    return buf.getvalue()


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("h,w", [(48, 80), (80, 48), (64, 64), (33, 100)])
def test_longest_side_preprocess_matches_torchvision_resize_max_size(h, w):
    """Reference written with torchvision ops: ResizeMaxSize(64, fill=0) then Normalize."""
    import torchvision.transforms.functional as TF

    images = _images(2, h, w)
    x = images.permute(0, 3, 1, 2)
    scale = 64 / max(h, w)
    new = [round(h * scale), round(w * scale)]
    ref = TF.resize(x, new, interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
    ph, pw = 64 - new[0], 64 - new[1]
    ref = TF.pad(ref, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    ref = TF.normalize(ref, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    out = longest_side_preprocess(images, 64)
    assert out.shape == (2, 3, 64, 64)
    assert torch.allclose(out, ref, atol=1e-5)


def test_score_is_the_raw_cosine_and_has_gradients(tmp_path):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    path.write_bytes(_checkpoint_bytes(seed=7, prefix="module."))  # a DDP prefix is tolerated
    reward = build_reward({"type": "hpsv2", "checkpoint": str(path), "clip_model": TINY_CLIP_NAME})
    images = _images().requires_grad_(True)
    scores = reward(images, PROMPTS)
    model = build_tiny_clip(7)
    img = F.normalize(model.encode_image(longest_side_preprocess(images.detach(), 64)), dim=-1)
    import open_clip

    txt = F.normalize(model.encode_text(open_clip.get_tokenizer(TINY_CLIP_NAME)(PROMPTS)), dim=-1)
    assert torch.allclose(scores.detach(), (img * txt).sum(-1), atol=1e-5)
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_loads_from_the_hub_cache_and_names_missing_files(empty_caches):
    with pytest.raises(WeightsNotFoundError) as err:
        build_reward({"type": "hpsv2", "clip_model": TINY_CLIP_NAME})
    msg = str(err.value)
    assert "xswu/HPSv2" in msg and "HPS_v2.1_compressed.pt" in msg and "models--xswu--HPSv2" in msg
    assert "checkpoint:" in msg and "huggingface-cli download" in msg
    with pytest.raises(WeightsNotFoundError, match="HPS_v2_compressed.pt"):
        build_reward({"type": "hpsv2", "version": "v2.0", "clip_model": TINY_CLIP_NAME})
    fake_hf_file(empty_caches / "hf", "xswu/HPSv2", "HPS_v2_compressed.pt", _checkpoint_bytes(seed=3))
    reward = build_reward({"type": "hpsv2", "version": "v2.0", "clip_model": TINY_CLIP_NAME})
    assert "HPS_v2_compressed.pt" in reward.clip.description
    assert reward(_images(), PROMPTS).shape == (3,)


def test_config_and_layout_errors(tmp_path):
    with pytest.raises(ConfigError, match="version"):
        build_reward({"type": "hpsv2", "version": "v3", "allow_random_init": True, "clip_model": TINY_CLIP_NAME})
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        build_reward({"type": "hpsv2", "clip_model": "ViT-H-15", "allow_random_init": True})
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, bad)
    with pytest.raises(ValueError, match="does not fit"):
        build_reward({"type": "hpsv2", "checkpoint": str(bad), "clip_model": TINY_CLIP_NAME})
    assert os.path.exists(bad)  # nothing deleted
    rnd = build_reward({"type": "hpsv2", "allow_random_init": True, "clip_model": TINY_CLIP_NAME})
    assert "RANDOM" in rnd.clip.description
