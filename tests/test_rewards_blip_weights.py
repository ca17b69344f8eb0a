"""ImageReward / Reward3D with the published weights (marked ``weights``; skipped when absent).

Nothing is downloaded: the files must already be in the Hugging Face cache (``THUDM/ImageReward``,
``yejunliang23/Reward3D``, ``google-bert/bert-base-uncased``) or in ``$DDPO3D_CACHE``.
"""

import pytest
import torch

from ddpo3d.rewards import WeightsNotFoundError, build_reward

pytestmark = [pytest.mark.weights, pytest.mark.slow]


def _build_or_skip(block):
    try:
        return build_reward(block)
    except WeightsNotFoundError as exc:
        pytest.skip(f"weights not on this machine: {exc.model}")


def _colour_images(n, size=224):
    red = torch.zeros(size, size, 3)
    red[..., 0] = 0.9
    blue = torch.zeros(size, size, 3)
    blue[..., 2] = 0.9
    return torch.stack([red, blue] * (n // 2))


def test_imagereward_real_weights_load_strictly_and_prefer_matching_prompt():
    r = _build_or_skip({"type": "imagereward"})
    assert r.filled_keys == [] or set(r.filled_keys) <= {"blip.text_encoder.embeddings.position_ids"}
    x = _colour_images(2)
    match = r(x, ["a plain red square", "a plain blue square"])
    swap = r(x, ["a plain blue square", "a plain red square"])
    assert (match > swap).all()
    assert (match.abs() < 5).all()  # normalised to about N(0, 1)


@pytest.mark.parametrize("variant", ["Reward3D_Scorer", "Reward3D_CrossViewFusion"])
def test_reward3d_real_weights_load_and_have_gradients(variant):
    r = _build_or_skip({"type": "reward3d", "variant": variant})
    x = _colour_images(4).requires_grad_(True)
    prompts = [f"a red cup, {v} view" for v in ("front", "side", "back", "side")]
    s = r(x, prompts)
    assert torch.isfinite(s).all()
    s.sum().backward()
    assert x.grad.abs().sum() > 0
