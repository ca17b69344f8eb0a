"""Our BLIP backbone and Reward3D heads against the published model code, numerically.

Skipped unless checkouts are named: ``DDPO3D_IMAGEREWARD_SRC`` (a THUDM/ImageReward checkout:
``ImageReward/models/BLIP/{med,vit}.py``) and ``DDPO3D_DREAMREWARD_SRC`` (a liuff19/DreamReward
checkout: ``Reward3D/Reward3D.py``). Their modules run with CPU placeholders for what today's
packages no longer have (fairscale's checkpoint wrapper, transformers 4.x helpers); our state
dicts load into them with ``strict=True`` and the outputs must agree.
"""

import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ddpo3d.rewards.blip import BlipBackbone, parse_blip_config
from ddpo3d.rewards.imagereward import ImageRewardMLP
from ddpo3d.rewards.reward3d import CrossViewFusion, Reward3DScorerHead
from ddpo3d.testing.tiny_blip import TINY_BLIP

IR_SRC = os.environ.get("DDPO3D_IMAGEREWARD_SRC")
DR_SRC = os.environ.get("DDPO3D_DREAMREWARD_SRC")


def _load(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def blip_reference(monkeypatch):
    if not IR_SRC:
        pytest.skip("set DDPO3D_IMAGEREWARD_SRC to a THUDM/ImageReward checkout")
    root = Path(IR_SRC) / "ImageReward" / "models" / "BLIP"
    cka = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
    cka.checkpoint_wrapper = lambda m: m
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "fairscale.nn.checkpoint.checkpoint_activations", cka)
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for n in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(mu, n):
            monkeypatch.setattr(mu, n, getattr(pu, n, None) or (lambda *a, **k: None), raising=False)
    med = _load(root / "med.py", "ir_reference_med")
    vit = _load(root / "vit.py", "ir_reference_vit")
    # transformers 5 dropped these PreTrainedModel helpers that MED's BertModel calls
    monkeypatch.setattr(med.BertModel, "init_weights", lambda self: None, raising=False)
    monkeypatch.setattr(med.BertModel, "post_init", lambda self: None, raising=False)
    monkeypatch.setattr(
        med.BertModel,
        "invert_attention_mask",
        lambda self, m: (1.0 - m[:, None, None, :].float()) * torch.finfo(torch.float32).min,
        raising=False,
    )
    monkeypatch.setattr(med.BertModel, "get_head_mask", lambda self, hm, n, *a, **k: [None] * n, raising=False)
    return med, vit


def test_backbone_matches_imagereward_med_and_vit(blip_reference):
    med, vit = blip_reference
    from transformers.models.bert.configuration_bert import BertConfig

    torch.manual_seed(0)
    ours = BlipBackbone(parse_blip_config(TINY_BLIP, "t")).eval()
    for p in ours.parameters():
        nn.init.normal_(p, std=0.2)
    ref_vit = vit.VisionTransformer(img_size=32, patch_size=16, embed_dim=24, depth=2, num_heads=2).eval()
    cfg = BertConfig(
        vocab_size=TINY_BLIP["vocab_size"],
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        pad_token_id=0,
        add_cross_attention=True,
    )
    cfg.encoder_width = 24
    ref_txt = med.BertModel(cfg, add_pooling_layer=False).eval()
    sd = ours.state_dict()
    ref_vit.load_state_dict({k[15:]: v for k, v in sd.items() if k.startswith("visual_encoder.")}, strict=True)
    ref_txt.load_state_dict({k[13:]: v for k, v in sd.items() if k.startswith("text_encoder.")}, strict=True)
    x = torch.randn(3, 3, 32, 32)
    ids = torch.randint(5, TINY_BLIP["vocab_size"], (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:], ids[1, 5:] = 0, 0
    with torch.no_grad():
        img_o, img_r = ours.visual_encoder(x), ref_vit(x)
        txt_o = ours.text_encoder(ids, mask, img_o)
        txt_r = ref_txt(
            ids,
            attention_mask=mask,
            encoder_hidden_states=img_r,
            encoder_attention_mask=torch.ones(img_r.shape[:-1], dtype=torch.long),
            return_dict=True,
        ).last_hidden_state
    torch.testing.assert_close(img_o, img_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt_o, txt_r, atol=1e-5, rtol=1e-5)


def test_reward3d_heads_match_dreamreward():
    if not DR_SRC:
        pytest.skip("set DDPO3D_DREAMREWARD_SRC to a liuff19/DreamReward checkout")
    src = (Path(DR_SRC) / "Reward3D" / "Reward3D.py").read_text()
    src = src.replace("from .models.BLIP.blip_pretrain import BLIP_Pretrain", "BLIP_Pretrain = None")
    ns: dict = {}
    exec(compile(src, "Reward3D.py", "exec"), ns)
    torch.manual_seed(0)
    ref_mlp, ref_sc, ref_cv = ns["MLP"](768).eval(), ns["Scorer"]().eval(), ns["CrossViewFusion"](768, 4).eval()
    for m in (ref_mlp, ref_sc, ref_cv):
        for p in m.parameters():
            nn.init.normal_(p, std=0.05)
    mlp, sc, cv = ImageRewardMLP(768).eval(), Reward3DScorerHead().eval(), CrossViewFusion(768, 12, 4).eval()
    mlp.load_state_dict(ref_mlp.state_dict(), strict=True)
    sc.load_state_dict(ref_sc.state_dict(), strict=True)
    cv.load_state_dict(ref_cv.state_dict(), strict=True)
    f = torch.randn(8, 768)
    with torch.no_grad():
        g = ref_mlp(f, get_feature=128).view(2, 4, 128)
        ref = ref_sc(torch.cat([g[:, i, :] for i in range(4)], dim=1))
        torch.testing.assert_close(sc(mlp.features_128(f).reshape(2, 512)), ref)
        torch.testing.assert_close(mlp(cv(f)), ref_mlp(ref_cv(f)), atol=1e-6, rtol=1e-5)
