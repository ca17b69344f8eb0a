"""Rewards with the real published weights (CLIP ViT-L/14 'openai', LAION aesthetic head).

Marked ``weights``; skipped unless the weights are already on this machine (open_clip / HF
caches, ``$DDPO3D_CACHE``, torch hub). Nothing is downloaded.
"""

import pytest
import torch

from ddpo3d.rewards import WeightsNotFoundError, build_reward

pytestmark = pytest.mark.weights


def _have_vit_l14():
    import open_clip

    from ddpo3d.rewards.clip import _find_pretrained_file

    try:
        _find_pretrained_file(open_clip, "ViT-L-14", "openai", None, "probe")
        return True
    except WeightsNotFoundError:
        return False


def _have_aesthetic_head():
    import os

    from ddpo3d.rewards.aesthetic import AESTHETIC_HEAD_FILE
    from ddpo3d.weights import ddpo3d_cache_dir, torch_hub_checkpoint_dir

    return any(
        os.path.isfile(os.path.join(d, AESTHETIC_HEAD_FILE)) for d in (ddpo3d_cache_dir(), torch_hub_checkpoint_dir())
    )


needs_clip = pytest.mark.skipif(not _have_vit_l14(), reason="CLIP ViT-L-14 (openai) weights not in the caches")
needs_head = pytest.mark.skipif(not _have_aesthetic_head(), reason="sac+logos+ava1-l14-linearMSE.pth not found")


def _colour_images(size=224):
    red = torch.zeros(size, size, 3)
    red[..., 0] = 0.9
    blue = torch.zeros(size, size, 3)
    blue[..., 2] = 0.9
    return torch.stack([red, blue])


@needs_clip
def test_clip_score_prefers_matching_prompt():
    r = build_reward({"type": "clip-score"})
    images = _colour_images()
    match = r(images, ["a plain red square", "a plain blue square"])
    swap = r(images, ["a plain blue square", "a plain red square"])
    assert (match > swap).all()
    assert ((match > 0.1) & (match < 0.5)).all()  # ViT-L/14 cosines of matching pairs sit around 0.2-0.3


@needs_clip
@needs_head
def test_aesthetic_scores_are_ratings_and_differentiable():
    r = build_reward({"type": "aesthetic"})
    g = torch.Generator().manual_seed(0)
    images = torch.cat([_colour_images(), torch.rand(2, 224, 224, 3, generator=g)]).requires_grad_(True)
    scores = r(images, ["x"] * 4)
    assert ((scores > 1.0) & (scores < 10.0)).all(), scores
    scores.sum().backward()
    assert images.grad.abs().sum() > 0
