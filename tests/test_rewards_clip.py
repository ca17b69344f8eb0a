"""CLIP-based rewards (clip-score, aesthetic) on the tiny seeded open_clip model, offline."""

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import fake_hf_file

from ddpo3d.rewards import CompositeReward, WeightsNotFoundError, build_reward
from ddpo3d.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, _find_pretrained_file, clip_preprocess
from ddpo3d.testing.tiny_clip import (
    TINY_CLIP_EMBED_DIM,
    TINY_CLIP_NAME,
    build_tiny_clip,
    register_tiny_clip,
    tiny_clip_options,
    write_tiny_clip_checkpoint,
)
from ddpo3d.utils.config import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _tiny_clip_registered():
    """The product does not know the tiny CLIP: this module registers it with open_clip."""
    register_tiny_clip()


PROMPTS = ["a red car", "a blue house", "a red car", "a tree"]
PUBLISHED_HEAD_KEYS = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


def _images(b=4, h=48, w=80, seed=1):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


class _PublishedHeadLayout(nn.Module):
    """Written independently from the library: the layout of the published head file
    (christophschuhmann/improved-aesthetic-predictor, simple_inference.py: MLP.layers)."""

    def __init__(self, d):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(d, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    torch.manual_seed(123)
    state = _PublishedHeadLayout(TINY_CLIP_EMBED_DIM).state_dict()
    assert sorted(state) == sorted(PUBLISHED_HEAD_KEYS)
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, path)
    return str(path), state


def _manual_embed(images, seed=0):
    """Image embedding computed directly with open_clip + the preprocessing formula."""
    model = build_tiny_clip(seed)
    x = clip_preprocess(images, 64, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return F.normalize(model.encode_image(x), dim=-1), model


# --------------------------------------------------------------------------------------- preprocessing
def test_clip_preprocess_matches_torchvision_resize_crop_normalize():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    images = _images(h=48, w=80)
    ours = clip_preprocess(images, 64, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    x = images.permute(0, 3, 1, 2)
    x = TF.resize(x, 64, interpolation=InterpolationMode.BICUBIC, antialias=False)
    assert x.shape[-2:] == (64, 106)
    x = TF.center_crop(x, [64, 64])
    x = TF.normalize(x, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert ours.shape == (4, 3, 64, 64)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    # portrait input and already-square input (no resize) too
    tall = _images(h=70, w=64)
    ref = TF.normalize(TF.center_crop(tall.permute(0, 3, 1, 2), [64, 64]), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    torch.testing.assert_close(clip_preprocess(tall, 64), ref)


def test_clip_preprocess_is_differentiable():
    images = _images(h=20, w=30).requires_grad_(True)
    clip_preprocess(images, 64).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------- clip-score
def test_clip_score_matches_manual_cosine_and_has_gradients():
    images = _images().requires_grad_(True)
    r = build_reward({"type": "clip-score", **tiny_clip_options(seed=0)})
    assert r.differentiable and r.name == "clip-score"
    out = r.evaluate(images, PROMPTS)
    img, model = _manual_embed(images.detach(), seed=0)
    import open_clip

    txt = F.normalize(model.encode_text(open_clip.get_tokenizer(TINY_CLIP_NAME)(PROMPTS)), dim=-1)
    expected = (img * txt).sum(-1)
    torch.testing.assert_close(out.scores.detach(), expected, rtol=1e-4, atol=1e-5)
    assert out.scores[0].item() != pytest.approx(out.scores[1].item())
    out.scores.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    # frozen: no parameter gets a gradient
    assert all(not p.requires_grad and p.grad is None for p in r.parameters())


def test_clipscore_form():
    images = _images()
    cos = build_reward({"type": "clip-score", **tiny_clip_options()})(images, PROMPTS)
    cs = build_reward({"type": "clip-score", "clipscore": True, **tiny_clip_options()})(images, PROMPTS)
    torch.testing.assert_close(cs, 100.0 * cos.clamp(min=0))
    w25 = build_reward({"type": "clip-score", "clipscore": True, "clipscore_scale": 2.5, **tiny_clip_options()})(
        images, PROMPTS
    )
    torch.testing.assert_close(w25, 2.5 * cos.clamp(min=0))


def test_text_embeddings_are_cached_and_order_preserved():
    r = build_reward({"type": "clip-score", **tiny_clip_options()})
    a = r.clip.encode_text(["x", "y", "x"])
    b = r.clip.encode_text(["y", "x"])
    torch.testing.assert_close(a[0], a[2])
    torch.testing.assert_close(a[1], b[0])
    torch.testing.assert_close(a[0], b[1])
    assert set(r.clip._text_cache) >= {"x", "y"}


def test_backbones_are_shared_and_frozen():
    a = build_reward({"type": "clip-score", **tiny_clip_options(seed=5)})
    b = build_reward({"type": "clip-score", "clipscore": True, **tiny_clip_options(seed=5)})
    c = build_reward({"type": "clip-score", **tiny_clip_options(seed=6)})
    assert a.clip is b.clip and a.clip is not c.clip
    a.train()
    assert not a.clip.model.training
    assert all(not p.requires_grad for p in a.parameters())


def test_random_init_needs_explicit_opt_in():
    with pytest.raises(ConfigError, match="allow_random_init: true"):
        build_reward({"type": "clip-score", "clip_model": TINY_CLIP_NAME, "clip_pretrained": None})


def test_checkpoint_file_loads_and_matches_seeded_model(tmp_path):
    path = write_tiny_clip_checkpoint(str(tmp_path / "tiny.pt"), seed=3)
    images = _images()
    from_file = build_reward(
        {"type": "clip-score", "clip_model": TINY_CLIP_NAME, "clip_pretrained": None, "clip_checkpoint": path}
    )
    assert path in from_file.clip.description
    seeded3 = build_reward({"type": "clip-score", **tiny_clip_options(seed=3)})
    seeded0 = build_reward({"type": "clip-score", **tiny_clip_options(seed=0)})
    torch.testing.assert_close(from_file(images, PROMPTS), seeded3(images, PROMPTS))
    assert not torch.allclose(from_file(images, PROMPTS), seeded0(images, PROMPTS))


def test_checkpoint_of_wrong_model_is_rejected(tmp_path):
    path = str(tmp_path / "other.pt")
    sd = build_tiny_clip(0).state_dict()
    sd.pop("logit_scale")
    torch.save(sd, path)
    with pytest.raises(ValueError, match="does not fit the configured model"):
        build_reward(
            {"type": "clip-score", "clip_model": TINY_CLIP_NAME, "clip_pretrained": None, "clip_checkpoint": path}
        )


def test_missing_checkpoint_file_names_model_and_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "clip.bin")
    with pytest.raises(WeightsNotFoundError) as err:
        build_reward({"type": "clip-score", "clip_model": TINY_CLIP_NAME, "clip_checkpoint": missing})
    msg = str(err.value)
    assert TINY_CLIP_NAME in msg and missing in msg and "clip_checkpoint" in msg


def test_unknown_model_and_tag():
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-L-15'.*ViT-L-14"):
        build_reward({"type": "clip-score", "clip_model": "ViT-L-15"})
    with pytest.raises(ConfigError, match="not an open_clip pretrained tag.*openai"):
        build_reward({"type": "clip-score", "clip_model": "ViT-L-14", "clip_pretrained": "opanai"})


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DDPO3D_CACHE", str(tmp_path / "ddpo3d"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_missing_pretrained_weights_message(empty_caches):
    """Default clip-score config on a machine without ViT-L-14: one clear error, no download."""
    with pytest.raises(WeightsNotFoundError) as err:
        build_reward({"type": "clip-score"})
    msg = str(err.value)
    assert "ViT-L-14" in msg and "openai" in msg
    assert os.path.join(str(empty_caches / "hf"), "models--timm--vit_large_patch14_clip_224.openai") in msg
    assert os.path.join(str(empty_caches / "home"), ".cache", "clip", "ViT-L-14.pt") in msg
    assert "clip_checkpoint" in msg and "create_model('ViT-L-14', pretrained='openai')" in msg
    assert err.value.model.startswith("open_clip ViT-L-14")


def test_missing_aesthetic_head_message(empty_caches):
    with pytest.raises(WeightsNotFoundError) as err:
        build_reward({"type": "aesthetic", **tiny_clip_options()})
    msg = str(err.value)
    assert "sac+logos+ava1-l14-linearMSE.pth" in msg
    assert str(empty_caches / "ddpo3d" / "sac+logos+ava1-l14-linearMSE.pth") in msg
    assert str(empty_caches / "torch" / "hub" / "checkpoints") in msg
    assert "head_path" in msg and "wget" in msg


def test_pretrained_tag_is_found_in_hf_cache_without_download(empty_caches):
    import open_clip

    expected = fake_hf_file(
        empty_caches / "hf", "timm/vit_large_patch14_clip_224.openai", "open_clip_pytorch_model.bin"
    )
    path, pcfg = _find_pretrained_file(open_clip, "ViT-L-14", "openai", None, "test")
    assert path == expected and pcfg["quick_gelu"] is True
    # an extra cache folder given in the config is searched too (open_clip URL layout)
    extra = empty_caches / "extra"
    extra.mkdir()
    (extra / "ViT-B-32.pt").write_bytes(b"x")
    path, _ = _find_pretrained_file(open_clip, "ViT-B-32", "openai", str(extra), "test")
    assert path == str(extra / "ViT-B-32.pt")


# --------------------------------------------------------------------------------------- aesthetic
def test_aesthetic_matches_manual_mlp_on_normalised_embedding(head_file):
    path, state = head_file
    images = _images()
    r = build_reward({"type": "aesthetic", "head_path": path, **tiny_clip_options(seed=0)})
    assert r.differentiable and r.head_file == path
    scores = r(images, PROMPTS)
    emb, _ = _manual_embed(images, seed=0)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4))
    h = emb
    for i in (0, 2, 4, 6, 7):  # linear layers only; dropouts are identity at eval
        h = h @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    torch.testing.assert_close(scores, h.squeeze(-1), rtol=1e-4, atol=1e-5)
    assert scores.std() > 0


def test_aesthetic_gradients_reach_images(head_file):
    images = _images(h=40, w=40).requires_grad_(True)
    r = build_reward({"type": "aesthetic", "head_path": head_file[0], **tiny_clip_options()})
    r.train()  # dropout must stay off: two calls agree
    s1 = r(images, PROMPTS)
    s2 = r(images, PROMPTS)
    torch.testing.assert_close(s1, s2)
    s1.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_aesthetic_head_layout_errors(tmp_path, head_file):
    bad = {k.replace("layers.", "mlp."): v for k, v in head_file[1].items()}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad.pth.*missing keys \['layers.0.bias'"):
        build_reward({"type": "aesthetic", "head_path": str(tmp_path / "bad.pth"), **tiny_clip_options()})
    torch.save(_PublishedHeadLayout(768).state_dict(), tmp_path / "vitl.pth")
    with pytest.raises(ValueError, match="expects 768-d embeddings.*produces 16-d"):
        build_reward({"type": "aesthetic", "head_path": str(tmp_path / "vitl.pth"), **tiny_clip_options()})
    # wrapped state dicts ({"state_dict": ...}, DataParallel "module." prefix) are accepted
    torch.save({"state_dict": {"module." + k: v for k, v in head_file[1].items()}}, tmp_path / "wrapped.pth")
    r = build_reward({"type": "aesthetic", "head_path": str(tmp_path / "wrapped.pth"), **tiny_clip_options()})
    ref = build_reward({"type": "aesthetic", "head_path": head_file[0], **tiny_clip_options()})
    torch.testing.assert_close(r(_images(), PROMPTS), ref(_images(), PROMPTS))


def test_aesthetic_head_from_hf_cache_reference(tmp_path, monkeypatch, head_file):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    payload = open(head_file[0], "rb").read()
    fake_hf_file(tmp_path / "hf", "someone/aesthetic", "sac+logos+ava1-l14-linearMSE.pth", payload)
    r = build_reward(
        {"type": "aesthetic", "head_path": "someone/aesthetic/sac+logos+ava1-l14-linearMSE.pth", **tiny_clip_options()}
    )
    assert "models--someone--aesthetic" in r.head_file


# --------------------------------------------------------------------------------------- composites
def test_composite_of_differentiable_rewards_sums_gradients(head_file):
    images = _images()
    blocks = [
        {"type": "aesthetic", "weight": 0.7, "head_path": head_file[0], **tiny_clip_options()},
        {"type": "clip-score", "weight": 3.0, "clipscore": True, **tiny_clip_options()},
    ]
    comp = build_reward(blocks)
    assert isinstance(comp, CompositeReward) and comp.differentiable
    x = images.clone().requires_grad_(True)
    out = comp.evaluate(x, PROMPTS)
    out.scores.sum().backward()
    grads = []
    for block in blocks:
        single = build_reward({k: v for k, v in block.items() if k != "weight"})
        xi = images.clone().requires_grad_(True)
        (block["weight"] * single(xi, PROMPTS)).sum().backward()
        grads.append(xi.grad)
        torch.testing.assert_close(out.terms[single.name], single(images, PROMPTS).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, grads[0] + grads[1], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        out.scores, 0.7 * out.terms["aesthetic"] + 3.0 * out.terms["clip-score"], rtol=1e-6, atol=1e-6
    )


def test_mixed_composite_is_not_differentiable(head_file):
    comp = build_reward(
        [{"type": "clip-score", **tiny_clip_options()}, {"type": "jpeg-incompressibility", "weight": 0.1}]
    )
    assert comp.differentiable is False
    out = comp.evaluate(_images().requires_grad_(True), PROMPTS)
    assert not out.scores.requires_grad
    assert out.terms["clip-score"].requires_grad  # the differentiable term keeps its graph
    assert not out.terms["jpeg-incompressibility"].requires_grad


@pytest.mark.filterwarnings("ignore")
def test_torchscript_checkpoint_loads(tmp_path):
    """OpenAI's original ViT-*.pt files are TorchScript archives; they load too."""
    path = str(tmp_path / "tiny_jit.pt")
    torch.jit.script(build_tiny_clip(7)).save(path)
    images = _images()
    r = build_reward(
        {"type": "clip-score", "clip_model": TINY_CLIP_NAME, "clip_pretrained": None, "clip_checkpoint": path}
    )
    ref = build_reward({"type": "clip-score", **tiny_clip_options(seed=7)})
    torch.testing.assert_close(r(images, PROMPTS), ref(images, PROMPTS))
