"""The toy world's procedural objects and their exact renders."""

import math

import pytest
import torch

from ddpo3d.toy import COLORS, parse_toy_prompt, render_toy_object


def _rays(h=24, w=24, dist=2.5, elev=20.0, azim=30.0, fovy=40.0):
    el, az = math.radians(elev), math.radians(azim)
    cam = torch.tensor([dist * math.cos(el) * math.cos(az), dist * math.cos(el) * math.sin(az), dist * math.sin(el)])
    look = -cam / cam.norm()
    right = torch.linalg.cross(look, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, look)
    f = 0.5 * h / math.tan(math.radians(fovy) / 2)
    j, i = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    dirs = torch.stack([(i - w / 2) / f, -(j - h / 2) / f, -torch.ones_like(i)], -1)
    rd = dirs @ torch.stack([right, up, -look], -1).T
    rd = rd / rd.norm(dim=-1, keepdim=True)
    return cam.expand_as(rd)[None], rd[None]


@pytest.mark.parametrize("prompt", ["a red sphere", "a blue cube", "a green torus", "a yellow cone"])
def test_render_shows_object_colour_at_centre_and_background_at_corner(prompt):
    obj = parse_toy_prompt(prompt)
    ro, rd = _rays()
    rgb, opacity = render_toy_object(obj, ro, rd)
    assert rgb.shape == (1, 24, 24, 3) and opacity.shape == (1, 24, 24, 1)
    assert torch.allclose(rgb[0, 0, 0], torch.ones(3), atol=1e-3)  # white background
    centre = rgb[0, 10:14, 10:14].reshape(-1, 3)
    if obj.shape != "torus":  # the torus has a hole in the middle
        assert torch.allclose(centre.mean(0), torch.tensor(COLORS[obj.color_name]), atol=0.05)
    assert 0.05 < opacity.mean() < 0.9


def test_sdf_signs():
    for shape in ["sphere", "cube", "cone"]:
        obj = parse_toy_prompt(f"a red {shape}")
        assert obj.sdf(torch.zeros(1, 3)) < 0
        assert obj.sdf(torch.tensor([[0.0, 0.0, 0.95]])) > 0
    torus = parse_toy_prompt("a green torus")
    assert torus.sdf(torch.zeros(1, 3)) > 0 and torus.sdf(torch.tensor([[0.45, 0.0, 0.0]])) < 0


def test_parse_errors_list_known_words():
    assert parse_toy_prompt("A Photo of a BLUE Cube, 4k").prompt == "a blue cube"
    with pytest.raises(ValueError, match="known shapes: sphere, cube, torus, cone"):
        parse_toy_prompt("a red hamburger")
    with pytest.raises(ValueError, match="no known colour"):
        parse_toy_prompt("a sphere")
