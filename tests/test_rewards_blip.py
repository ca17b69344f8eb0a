"""BLIP rewards (imagereward, reward3d): key layout, strict loading, gradients, view contract, constants.

Every checkpoint here is tiny and written by the test in the published key layout
(``ddpo3d.testing.tiny_blip``); nothing is downloaded.
"""

import pytest
import torch

from ddpo3d.rewards import WeightsNotFoundError, build_reward
from ddpo3d.rewards.blip import OPTIONAL_KEYS, BlipBackbone, blip_preprocess, load_blip_tokenizer, parse_blip_config
from ddpo3d.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD
from ddpo3d.testing.tiny_blip import (
    TINY_BLIP,
    TINY_VOCAB,
    tiny_reward_state_dict,
    write_tiny_blip_reward,
    write_tiny_vocab,
)

PROMPT = "a red cat, side view"


def _published_backbone_keys(depth: int, layers: int) -> set:
    """Backbone keys as BLIP_Pretrain (ImageReward / DreamReward ``models/BLIP``) names them, written out by hand."""
    keys = {"visual_encoder.cls_token", "visual_encoder.pos_embed"}
    keys |= {f"visual_encoder.patch_embed.proj.{p}" for p in ("weight", "bias")}
    keys |= {f"visual_encoder.norm.{p}" for p in ("weight", "bias")}
    for i in range(depth):
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"visual_encoder.blocks.{i}.{m}.{p}" for p in ("weight", "bias")}
    keys.add("text_encoder.embeddings.position_ids")
    for m in ("word_embeddings", "position_embeddings"):
        keys.add(f"text_encoder.embeddings.{m}.weight")
    keys |= {f"text_encoder.embeddings.LayerNorm.{p}" for p in ("weight", "bias")}
    for i in range(layers):
        for att in ("attention", "crossattention"):
            for m in ("self.query", "self.key", "self.value", "output.dense", "output.LayerNorm"):
                keys |= {f"text_encoder.encoder.layer.{i}.{att}.{m}.{p}" for p in ("weight", "bias")}
        for m in ("intermediate.dense", "output.dense", "output.LayerNorm"):
            keys |= {f"text_encoder.encoder.layer.{i}.{m}.{p}" for p in ("weight", "bias")}
    for m in ("vision_proj", "text_proj"):
        keys |= {f"{m}.{p}" for p in ("weight", "bias")}
    return keys


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("blip")
    return {
        "imagereward": write_tiny_blip_reward(str(d / "ir"), "imagereward"),
        "Reward3D_Scorer": write_tiny_blip_reward(str(d / "sc"), "reward3d", "Reward3D_Scorer"),
        "Reward3D_CrossViewFusion": write_tiny_blip_reward(str(d / "cv"), "reward3d", "Reward3D_CrossViewFusion"),
        "dir": d,
    }


def _images(n=4, seed=0, h=40, w=48):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


def test_backbone_keys_match_published_layout():
    model = BlipBackbone(parse_blip_config(TINY_BLIP, "t"))
    assert set(model.state_dict()) == _published_backbone_keys(TINY_BLIP["vision_depth"], TINY_BLIP["text_layers"])


def test_head_keys_match_published_layout():
    ir = tiny_reward_state_dict("imagereward")
    heads = {k for k in ir if not k.startswith("blip.")}
    assert heads == {f"mlp.layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    sc = {k for k in tiny_reward_state_dict("reward3d", "Reward3D_Scorer") if not k.startswith(("blip.", "mlp."))}
    assert sc == {f"Scorer.fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    cv = {
        k for k in tiny_reward_state_dict("reward3d", "Reward3D_CrossViewFusion") if not k.startswith(("blip.", "mlp."))
    }
    assert cv == {
        "cross_view_adapter.self_attn.in_proj_weight",
        "cross_view_adapter.self_attn.in_proj_bias",
        "cross_view_adapter.self_attn.out_proj.weight",
        "cross_view_adapter.self_attn.out_proj.bias",
        "cross_view_adapter.fusion_gate.0.weight",
        "cross_view_adapter.fusion_gate.0.bias",
    }


def test_published_sizes_are_the_defaults():
    """ViT-L/16 at 224 and BERT-base MED: the shapes a real ImageReward.pt holds."""
    cfg = parse_blip_config(None, "t")
    with torch.device("meta"):
        sd = BlipBackbone(cfg).state_dict()
    assert sd["visual_encoder.pos_embed"].shape == (1, 197, 1024)
    assert sd["visual_encoder.patch_embed.proj.weight"].shape == (1024, 3, 16, 16)
    assert len({k.split(".")[2] for k in sd if k.startswith("visual_encoder.blocks.")}) == 24
    assert sd["text_encoder.embeddings.word_embeddings.weight"].shape == (30524, 768)
    assert sd["text_encoder.encoder.layer.11.crossattention.self.key.weight"].shape == (768, 1024)
    assert sd["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape == (3072, 768)
    assert sd["vision_proj.weight"].shape == (256, 1024)


def test_vit_matches_timm_reference():
    """Our ViT loads strictly into timm's VisionTransformer (BLIP's base) and computes the same tokens."""
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ours = BlipBackbone(parse_blip_config(TINY_BLIP, "t")).visual_encoder
    ref = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=24, depth=2, num_heads=2, num_classes=0, qkv_bias=True
    )
    ref.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
        ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert timm.__version__
    torch.testing.assert_close(ours(x), ref.forward_features(x), atol=1e-5, rtol=1e-4)


def test_text_encoder_keys_match_transformers_bert_with_cross_attention():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=TINY_BLIP["vocab_size"],
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        is_decoder=True,
        add_cross_attention=True,
    )
    bert = {k for k in BertModel(cfg, add_pooling_layer=False).state_dict() if "token_type" not in k}
    sd = BlipBackbone(parse_blip_config(TINY_BLIP, "t")).state_dict()
    ours = {k[len("text_encoder.") :] for k in sd if k.startswith("text_encoder.")}
    assert ours - {"embeddings.position_ids"} == bert - {"embeddings.position_ids"}


@pytest.mark.parametrize("kind", ["imagereward", "Reward3D_Scorer", "Reward3D_CrossViewFusion"])
def test_round_trip_strict_load_and_gradients(files, kind):
    r = build_reward(files[kind])
    assert r.differentiable and r.filled_keys == []
    saved = torch.load(files[kind]["checkpoint"], weights_only=True)
    own = r.state_dict()
    assert set(own) == set(saved)
    for k in saved:
        torch.testing.assert_close(own[k], saved[k])
    x = _images(8).requires_grad_(True)
    s = r(x, [PROMPT] * 8)
    assert s.shape == (8,) and torch.isfinite(s).all()
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in r.parameters())


def test_imagereward_depends_on_prompt_and_image(files):
    r = build_reward(files["imagereward"])
    x = _images(2)
    a = r(x, ["a red cat", "a red cat"])
    b = r(x, ["a blue teapot", "a blue teapot"])
    assert not torch.allclose(a, b)
    assert not torch.allclose(a[0], a[1])


@pytest.mark.parametrize(
    "kind,mean,std",
    [
        ("imagereward", 0.16717362830052426, 1.0333394966054072),
        ("Reward3D_Scorer", 0.16717362830052426, 1.0333394966054072),
        ("Reward3D_CrossViewFusion", 0.16717362830052426, 5.0),
    ],
)
def test_normalisation_constants(files, kind, mean, std):
    """With the last linear layer set to output c, the reward is (c - mean) / std."""
    r = build_reward(files[kind])
    last = r.Scorer.fc3 if kind == "Reward3D_Scorer" else r.mlp.layers[7]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(2.5)
    s = r(_images(4), [PROMPT] * 4)
    torch.testing.assert_close(s, torch.full((4,), (2.5 - mean) / std))
    if kind == "imagereward":
        assert (IMAGEREWARD_MEAN, IMAGEREWARD_STD) == (mean, std)


def test_imagereward_max_length_35_and_reward3d_100(files):
    assert build_reward(files["imagereward"]).max_length == 35
    assert build_reward(files["Reward3D_Scorer"]).max_length == 100


def test_reward3d_view_contract(files):
    r = build_reward(files["Reward3D_Scorer"])
    for bad in (1, 3, 6):
        with pytest.raises(ValueError, match="objects of 4 views"):
            r(_images(bad), [PROMPT] * bad)
    x = _images(8)
    prompts = ["a red cat, side view", "a red cat, front view", "a red cat, side view", "a red cat, back view"] * 2
    s = r(x, prompts)
    assert torch.equal(s[:4], s[0].expand(4)) and torch.equal(s[4:], s[4].expand(4))
    swapped = r(torch.cat([x[4:], x[:4]]), prompts[4:] + prompts[:4])  # objects swap: scores swap
    torch.testing.assert_close(swapped, torch.cat([s[4:], s[:4]]))
    torch.testing.assert_close(r.object_scores(x, prompts), s[::4])


def test_scorer_uses_view_order_fusion_does_not(files):
    """The Scorer concatenates views in order; cross-view attention + mean is order-free."""
    x = _images(4, seed=3)
    perm = [2, 0, 3, 1]
    prompts = [PROMPT] * 4
    sc = build_reward(files["Reward3D_Scorer"])
    assert not torch.allclose(sc(x, prompts), sc(x[perm], prompts))
    cv = build_reward(files["Reward3D_CrossViewFusion"])
    torch.testing.assert_close(cv(x, prompts), cv(x[perm], prompts), atol=1e-5, rtol=1e-5)


def test_reward3d_per_view_prompts_matter(files):
    r = build_reward(files["Reward3D_Scorer"])
    x = _images(4)
    a = r(x, ["a red cat, front view"] * 4)
    b = r(x, ["a red cat, back view"] * 4)
    assert not torch.allclose(a, b)


def test_strict_loading_reports_bad_keys(files, tmp_path):
    block = dict(files["imagereward"])
    sd = torch.load(block["checkpoint"], weights_only=True)
    extra = dict(sd, **{"blip.itm_head.weight": torch.zeros(2, 24)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="unexpected keys.*blip.itm_head.weight"):
        build_reward(dict(block, checkpoint=str(tmp_path / "extra.pt")))
    missing = {k: v for k, v in sd.items() if k != "mlp.layers.7.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="missing keys.*mlp.layers.7.bias"):
        build_reward(dict(block, checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match="shape mismatches"):
        build_reward(dict(block, backbone=dict(TINY_BLIP, text_intermediate=32)))
    # a Reward3D file is not an ImageReward file
    with pytest.raises(ValueError, match="unexpected keys.*Scorer.fc1"):
        build_reward(dict(block, checkpoint=files["Reward3D_Scorer"]["checkpoint"]))


def test_optional_keys_are_filled_and_reported(files, tmp_path, caplog):
    block = dict(files["imagereward"])
    sd = torch.load(block["checkpoint"], weights_only=True)
    reference = build_reward(block)(_images(2), [PROMPT] * 2)
    slim = {k: v for k, v in sd.items() if k[len("blip.") :] not in OPTIONAL_KEYS}
    assert len(slim) == len(sd) - len(OPTIONAL_KEYS)
    torch.save({"state_dict": {"module." + k: v for k, v in slim.items()}}, tmp_path / "slim.pt")
    with caplog.at_level("WARNING"):
        r = build_reward(dict(block, checkpoint=str(tmp_path / "slim.pt")))
    assert sorted(r.filled_keys) == sorted("blip." + k for k in OPTIONAL_KEYS)
    assert "position_ids" in caplog.text
    torch.testing.assert_close(r(_images(2), [PROMPT] * 2), reference)


def test_missing_weights_and_tokenizer_errors(files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("DDPO3D_CACHE", str(tmp_path / "ddpo3d"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    block = dict(files["imagereward"], checkpoint=None)
    with pytest.raises(WeightsNotFoundError, match="ImageReward.pt") as err:
        build_reward(block)
    assert "THUDM/ImageReward" in str(err.value) and "checkpoint:" in str(err.value)
    block = dict(files["Reward3D_CrossViewFusion"], checkpoint=None)
    with pytest.raises(WeightsNotFoundError, match="Reward3D_CrossViewFusion.pt"):
        build_reward(block)
    with pytest.raises(WeightsNotFoundError, match="bert-base-uncased") as err:
        build_reward(dict(files["imagereward"], tokenizer=None))
    assert "models--google-bert--bert-base-uncased" in str(err.value)


def test_tokenizer_from_hf_cache_has_blip_tokens(tmp_path):
    from tests.helpers import fake_hf_file

    vocab = write_tiny_vocab(str(tmp_path / "v"))
    fake_hf_file(tmp_path / "hub", "google-bert/bert-base-uncased", "vocab.txt", open(vocab, "rb").read())
    tok = load_blip_tokenizer(None, cache_dir=str(tmp_path / "hub"))
    assert len(tok) == len(TINY_VOCAB) + 2
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(TINY_VOCAB), len(TINY_VOCAB) + 1]
    assert tok.bos_token == "[DEC]"
    ids = tok(["a red cat"], padding="max_length", truncation=True, max_length=6)["input_ids"][0]
    assert ids[0] == TINY_VOCAB.index("[CLS]") and ids[-1] == TINY_VOCAB.index("[PAD]")


def test_vocab_size_mismatch_is_clear(files):
    with pytest.raises(ValueError, match="vocab_size"):
        build_reward(dict(files["imagereward"], backbone=dict(TINY_BLIP, vocab_size=TINY_BLIP["vocab_size"] + 1)))


def test_unknown_keys_and_variant_are_errors(files):
    with pytest.raises(Exception, match="vision_widht"):
        build_reward(dict(files["imagereward"], backbone=dict(TINY_BLIP, vision_widht=3)))
    with pytest.raises(Exception, match="variant"):
        build_reward(dict(files["Reward3D_Scorer"], variant="scorer"))


def test_preprocess_matches_imagereward_transform_shape_and_stats():
    x = torch.full((1, 300, 400, 3), 0.5, requires_grad=True)
    y = blip_preprocess(x, 224)
    assert y.shape == (1, 3, 224, 224)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, ((0.5 - mean) / std).expand_as(y))
    y.sum().backward()
    assert x.grad.abs().sum() > 0
