"""Built-in runtime models: encodings, MLPs, implicit volume, materials, backgrounds, renderer."""

import math

import pytest
import torch

import ddpo3d.lite as threestudio
from ddpo3d.lite.models.background.neural_environment_map_background import NeuralEnvironmentMapBackground
from ddpo3d.lite.models.background.solid_color_background import SolidColorBackground
from ddpo3d.lite.models.geometry.implicit_volume import ImplicitVolume
from ddpo3d.lite.models.materials.diffuse_with_point_light_material import DiffuseWithPointLightMaterial
from ddpo3d.lite.models.materials.no_material import NoMaterial
from ddpo3d.lite.models.networks import (
    HashGrid,
    ProgressiveBandFrequency,
    get_encoding,
    get_mlp,
    hash_grid_level_layout,
)
from ddpo3d.lite.models.renderers.nerf_volume_renderer import NeRFVolumeRenderer
from ddpo3d.lite.models.renderers.volume_rendering import render_weights_from_density, sample_pdf
from ddpo3d.utils.config import ConfigError

SMALL_GRID = {
    "otype": "HashGrid",
    "n_levels": 4,
    "n_features_per_level": 2,
    "log2_hashmap_size": 10,
    "base_resolution": 4,
    "per_level_scale": 2.0,
}
MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16, "n_hidden_layers": 1}


def small_volume(**overrides):
    cfg = {"radius": 2.0, "pos_encoding_config": dict(SMALL_GRID), "mlp_network_config": dict(MLP)}
    cfg.update(overrides)
    return ImplicitVolume(cfg)


# ----------------------------------------------------------------------------- encodings
def naive_hash_grid(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Reference: loops over points, levels and the 8 corners with Python integers."""
    _, resolutions, sizes, hashed = hash_grid_level_layout(
        3, grid.n_levels, grid.log2_hashmap_size, grid.base_resolution, grid.per_level_scale
    )
    primes = (1, 2654435761, 805459861)
    rows = []
    for p in x:
        feats = []
        offset = 0
        for level in range(grid.n_levels):
            scale = grid.base_resolution * grid.per_level_scale**level - 1.0
            pos = [float(p[d]) * scale + 0.5 for d in range(3)]
            base = [math.floor(v) for v in pos]
            frac = [pos[d] - base[d] for d in range(3)]
            acc = torch.zeros(grid.n_features_per_level, dtype=torch.float64)
            for c in range(8):
                bits = [(c >> d) & 1 for d in range(3)]
                coord = [base[d] + bits[d] for d in range(3)]
                w = 1.0
                for d in range(3):
                    w *= frac[d] if bits[d] else 1.0 - frac[d]
                if hashed[level]:
                    h = 0
                    for d in range(3):
                        h ^= (coord[d] * primes[d]) & 0xFFFFFFFF
                    idx = h % sizes[level]
                else:
                    idx = (coord[0] + coord[1] * resolutions[level] + coord[2] * resolutions[level] ** 2) % sizes[level]
                acc += w * grid.params[offset + idx].double()
            feats.append(acc)
            offset += sizes[level]
        rows.append(torch.cat(feats))
    return torch.stack(rows)


def test_hash_grid_matches_naive_reference_on_dense_and_hashed_levels():
    grid = HashGrid(3, SMALL_GRID)
    _, _, _, hashed = hash_grid_level_layout(3, 4, 10, 4, 2.0)
    assert not hashed[0] and hashed[-1]  # both index kinds are exercised
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    x = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.5, 0.01], [0.33, 0.77, 0.5], [0.0, 1.0, 0.5]])
    out = grid(x)
    assert out.shape == (4, grid.n_output_dims) == (4, 8)
    torch.testing.assert_close(out.double(), naive_hash_grid(grid, x), atol=1e-5, rtol=1e-5)


def test_hash_grid_gradients_reach_table_and_points():
    grid = HashGrid(3, SMALL_GRID)
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    x = torch.rand(64, 3, requires_grad=True)
    y = grid(x)
    gx, gp = torch.autograd.grad(y.square().sum(), [x, grid.params])
    assert gx.abs().sum() > 0 and torch.isfinite(gx).all()
    assert (gp.abs().sum(-1) > 0).sum() > 0
    # d-linear interpolation is piecewise linear in x: check dy/dx with a finite difference
    x0 = torch.tensor([[0.31, 0.52, 0.47]], dtype=torch.float32)
    eps = 1e-3
    d = torch.tensor([[1.0, 0.0, 0.0]])
    fd = (grid(x0 + eps * d) - grid(x0 - eps * d)) / (2 * eps)
    jac = torch.autograd.functional.jacobian(lambda z: grid(z), x0)[0, :, 0, 0]
    torch.testing.assert_close(fd[0], jac, atol=2e-2, rtol=2e-2)


def test_progressive_band_hash_grid_masks_fine_levels():
    cfg = dict(SMALL_GRID, otype="ProgressiveBandHashGrid", start_level=1, start_step=10, update_steps=5)
    enc = get_encoding(3, cfg)
    with torch.no_grad():
        enc.encoding.params.uniform_(-1, 1)
    x = torch.rand(16, 3)
    out = enc(x)
    assert out[:, :2].abs().sum() > 0 and out[:, 2:].abs().sum() == 0
    enc.encoding.do_update_step(0, 10 + 5)  # one more level after update_steps
    out = enc(x)
    assert out[:, :4].abs().sum() > 0 and out[:, 4:].abs().sum() == 0
    enc.encoding.do_update_step(0, 1000)
    assert (enc(x)[:, 6:].abs().sum(0) > 0).all()
    assert enc.encoding.current_level == 4


def test_progressive_grid_equals_masked_full_grid():
    """Skipping the masked levels is exact: same values and gradients as grid(x) * mask."""
    cfg = dict(SMALL_GRID, otype="ProgressiveBandHashGrid", start_level=2, start_step=0, update_steps=100)
    prog = get_encoding(3, cfg).encoding
    full = HashGrid(3, SMALL_GRID)
    with torch.no_grad():
        prog.params.uniform_(-1, 1)
        full.params.copy_(prog.params)
    x = torch.rand(32, 3)
    a = prog(x)
    b = full(x) * prog.mask
    torch.testing.assert_close(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(prog.params.grad, full.params.grad)
    freq = get_encoding(2, {"otype": "Frequency", "n_frequencies": 3})
    y = freq(torch.tensor([[0.25, 0.5]]))
    # tcnn layout: per input dim, per frequency k: sin(2^k pi x), cos(2^k pi x)
    torch.testing.assert_close(y[0, :2], torch.tensor([math.sin(math.pi / 4), math.cos(math.pi / 4)]))
    torch.testing.assert_close(
        y[0, 6:8], torch.tensor([math.sin(math.pi / 2), math.cos(math.pi / 2)]), atol=1e-6, rtol=0
    )


def test_progressive_band_frequency_mask_and_layout():
    enc = ProgressiveBandFrequency(3, {"n_frequencies": 4, "n_masking_step": 100})
    assert enc.n_output_dims == 3 * 2 * 4
    enc.update_step(0, 50)  # step/n_masking * K = 2: bands 0, 1 on, band 2 off
    torch.testing.assert_close(enc.mask, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    x = torch.rand(5, 3)
    out = enc(x)
    torch.testing.assert_close(out[:, :3], torch.sin(x))
    torch.testing.assert_close(out[:, 3:6], torch.cos(x))
    assert out[:, 12:].abs().sum() == 0


def test_spherical_harmonics_values():
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 3})
    assert enc.n_output_dims == 9
    up = torch.tensor([[0.5, 0.5, 1.0]])  # direction +z in [0, 1] coordinates
    y = enc(up)[0]
    torch.testing.assert_close(y[0], torch.tensor(0.28209479))
    torch.testing.assert_close(y[2], torch.tensor(0.48860251))  # Y_1^0 = c z
    torch.testing.assert_close(y[6], torch.tensor(0.94617470 - 0.31539157))  # Y_2^0 at z = 1


def test_encoding_and_mlp_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="'Foo'"):
        get_encoding(3, {"otype": "Foo"})
    with pytest.raises(ConfigError, match="n_levls"):
        get_encoding(3, dict(SMALL_GRID, n_levls=3))
    with pytest.raises(ConfigError, match="SphereInitVanillaMLP"):
        get_mlp(4, 1, {"otype": "SphereInitVanillaMLP", "n_neurons": 8, "n_hidden_layers": 1})
    mlp = get_mlp(
        4,
        2,
        {
            "otype": "FullyFusedMLP",
            "activation": "ReLU",
            "output_activation": "sigmoid",
            "n_neurons": 8,
            "n_hidden_layers": 2,
        },
    )
    y = mlp(torch.randn(3, 4))
    assert y.shape == (3, 2) and ((y > 0) & (y < 1)).all()
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp.modules()) == 3


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("bias,act", [("blob_magic3d", "softplus"), ("blob_dreamfusion", "exp")])
def test_density_blob_is_highest_at_centre(bias, act):
    geo = small_volume(density_bias=bias, density_activation=act)
    r = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.9])
    pts = torch.stack([r, torch.zeros_like(r), torch.zeros_like(r)], -1)
    dens = geo.forward_density(pts)[:, 0]
    assert (dens[:-1] > dens[1:]).all(), dens


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference", "finite_difference_laplacian", "pred"])
def test_implicit_volume_outputs_and_normals(normal_type):
    geo = small_volume(normal_type=normal_type)
    pts = torch.randn(2, 50, 3).clamp(-1.5, 1.5) * 0.5 + 0.05
    out = geo(pts, output_normal=True)
    assert out["density"].shape == (2, 50, 1) and out["features"].shape == (2, 50, 3)
    assert (out["density"] >= 0).all()
    torch.testing.assert_close(out["normal"].norm(dim=-1), torch.ones(2, 50), atol=1e-4, rtol=0)
    if normal_type != "pred":
        # the blob dominates the tiny random field: normals point away from the centre
        cos = (out["normal"] * torch.nn.functional.normalize(pts, dim=-1)).sum(-1)
        assert (cos > 0.9).float().mean() > 0.9
    loss = out["density"].sum() + out["features"].sum() + out["normal"].sum()
    loss.backward()
    assert geo.encoding.encoding.params.grad.abs().sum() > 0


def test_analytic_normals_under_no_grad_are_detached():
    geo = small_volume(normal_type="analytic")
    with torch.no_grad():
        out = geo(torch.randn(10, 3) * 0.3, output_normal=True)
    assert not out["normal"].requires_grad and not out["density"].requires_grad
    assert torch.is_grad_enabled()  # the grad mode is restored


def test_isosurface_of_blob_is_a_sphere_with_outward_faces():
    geo = small_volume(isosurface_method="mc-cpu", isosurface_resolution=40, isosurface_threshold=5.0)
    mesh = geo.isosurface()
    assert mesh.v_pos.shape[0] > 100 and mesh.t_pos_idx.shape[1] == 3
    # softplus(10 (1 - r / 0.5)) = 5  =>  r ~= 0.25
    radii = mesh.v_pos.norm(dim=-1)
    assert abs(radii.mean().item() - 0.25) < 0.03
    tri = mesh.v_pos[mesh.t_pos_idx]
    normals = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    assert ((normals * tri.mean(1)).sum(-1) > 0).float().mean() > 0.95


def test_isosurface_reports_empty_field():
    geo = small_volume(isosurface_method="mc-cpu", isosurface_resolution=16, isosurface_threshold=1e6)
    with pytest.raises(ValueError, match="isosurface_threshold"):
        geo.isosurface()


def test_geometry_config_errors():
    with pytest.raises(ConfigError, match="radus"):
        ImplicitVolume({"radus": 1.0})
    with pytest.raises(ValueError, match="density_bias"):
        small_volume(density_bias="blob_unknown")
    assert threestudio.__modules__["implicit-volume"] is ImplicitVolume


# ----------------------------------------------------------------------------- materials / backgrounds
def test_diffuse_material_shading_modes():
    mat = DiffuseWithPointLightMaterial({"ambient_light_color": [0.1] * 3, "diffuse_light_color": [0.9] * 3})
    mat.eval()
    feats = torch.zeros(4, 3)  # sigmoid -> albedo 0.5
    pos = torch.zeros(4, 3)
    normal = torch.tensor([[0.0, 0, 1], [0, 0, 1], [0, 0, -1], [1, 0, 0]])
    light = torch.tensor([[0.0, 0, 2]]).expand(4, 3)
    lam = torch.tensor([1.0, 1.0, 0.0, 0.0])[:, None]  # max(0, n . l)
    textureless = mat(feats, pos, normal, light, shading="textureless")
    torch.testing.assert_close(textureless, 0.1 + 0.9 * lam.expand(4, 3))
    torch.testing.assert_close(mat(feats, pos, normal, light, shading="albedo"), torch.full((4, 3), 0.5))
    torch.testing.assert_close(mat(feats, pos, normal, light), 0.5 * (0.1 + 0.9 * lam.expand(4, 3)))
    mat.update_step(0, 0)  # ambient-only phase
    torch.testing.assert_close(mat(feats, pos, normal, light), torch.full((4, 3), 0.5))
    with pytest.raises(ValueError, match="shading"):
        mat(feats, pos, normal, light, shading="phong")


def test_no_material():
    mat = NoMaterial({})
    f = torch.randn(5, 3)
    torch.testing.assert_close(mat(f), torch.sigmoid(f))
    with pytest.raises(ValueError, match="n_output_dims"):
        mat(torch.randn(5, 4))
    mat2 = NoMaterial({"input_feature_dims": 6, "mlp_network_config": MLP})
    assert mat2(torch.randn(2, 7, 6)).shape == (2, 7, 3)


def test_backgrounds():
    dirs = torch.nn.functional.normalize(torch.randn(2, 4, 5, 3), dim=-1)
    solid = SolidColorBackground({"color": [0.2, 0.4, 0.6], "learned": True})
    out = solid(dirs)
    assert out.shape == (2, 4, 5, 3)
    torch.testing.assert_close(out[1, 2, 3], torch.tensor([0.2, 0.4, 0.6]))
    out.sum().backward()
    assert solid.env_color.grad is not None
    env = NeuralEnvironmentMapBackground({"eval_color": [1.0, 1.0, 1.0]})
    col = env(dirs)
    assert col.shape == (2, 4, 5, 3) and ((col > 0) & (col < 1)).all()
    env.eval()
    torch.testing.assert_close(env(dirs), torch.ones(2, 4, 5, 3))
    with pytest.raises(ConfigError, match="colour|color_activaton"):
        NeuralEnvironmentMapBackground({"color_activaton": "sigmoid"})


# ----------------------------------------------------------------------------- renderer
def make_renderer(n_samples=24, **kw):
    geo = small_volume(normal_type="analytic")
    mat = DiffuseWithPointLightMaterial({"ambient_only_steps": 0})
    mat.update_step(0, 1)
    bg = SolidColorBackground({"color": [0.0, 0.0, 1.0]})
    cfg = {"radius": 2.0, "num_samples_per_ray": n_samples}
    cfg.update(kw)
    return NeRFVolumeRenderer(cfg, geo, mat, bg), geo


def set_eval(renderer):
    # the system switches every module; the renderer only holds the others by reference
    for m in (renderer, renderer.geometry, renderer.material, renderer.background):
        m.eval()


def camera_rays(h=8, w=8, dist=3.0, spread=0.4):
    ys, xs = torch.meshgrid(torch.linspace(-spread, spread, h), torch.linspace(-spread, spread, w), indexing="ij")
    d = torch.nn.functional.normalize(torch.stack([xs, -ys, -torch.ones_like(xs)], -1), dim=-1)
    o = torch.tensor([0.0, 0.0, dist]).expand(h, w, 3)
    return o[None].clone(), d[None].clone()


def test_renderer_training_outputs_and_gradients():
    renderer, geo = make_renderer(grid_prune=False)
    rays_o, rays_d = camera_rays()
    out = renderer(rays_o, rays_d, torch.tensor([[0.0, 0.0, 3.0]]))
    for key in ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg"):
        assert out[key].shape == (1, 8, 8, 3)
    for key in ("opacity", "depth", "z_variance"):
        assert out[key].shape == (1, 8, 8, 1)
    n = 8 * 8 * 24
    for key, c in (
        ("weights", 1),
        ("t_points", 1),
        ("t_intervals", 1),
        ("t_dirs", 3),
        ("points", 3),
        ("density", 1),
        ("normal", 3),
        ("shading_normal", 3),
    ):
        assert out[key].shape == (n, c), key
    assert out["ray_indices"].shape == (n,)
    op = out["opacity"]
    assert (op >= 0).all() and (op <= 1 + 1e-5).all()
    assert op[0, 4, 4, 0] > 0.9  # the blob at the centre is opaque
    # packed weights sum to the opacity per ray
    per_ray = torch.zeros(64).index_add(0, out["ray_indices"], out["weights"][:, 0])
    torch.testing.assert_close(per_ray, op.reshape(-1))
    # DreamFusion's orient loss reads weights / normal / t_dirs
    orient = (out["weights"].detach() * (out["normal"] * out["t_dirs"]).sum(-1, keepdim=True).clamp_min(0) ** 2).sum()
    (out["comp_rgb"].mean() + orient).backward()
    assert geo.encoding.encoding.params.grad.abs().sum() > 0


def test_renderer_miss_shows_background_and_constant_density_matches_closed_form():
    renderer, _ = make_renderer(n_samples=16)
    set_eval(renderer)
    # rays parallel to the box, outside it: no hit
    o = torch.tensor([[[[0.0, 3.0, 3.0]]]])
    d = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    out = renderer(o, d, torch.tensor([[0.0, 0.0, 3.0]]))
    assert out["opacity"].abs().max() == 0
    torch.testing.assert_close(out["comp_rgb"][0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    # constant density sigma over length L: opacity = 1 - exp(-sigma L) (Beer-Lambert)
    t = torch.linspace(0, 1.5, 33)[None]
    w, trans, _ = render_weights_from_density(t[:, :-1], t[:, 1:], torch.full((1, 32), 0.8))
    torch.testing.assert_close(w.sum(), torch.tensor(1 - math.exp(-0.8 * 1.5)))


def test_pruned_rendering_matches_dense_rendering():
    """Occupancy grid + alpha threshold drop most samples but hardly change the image."""
    from ddpo3d.lite.models.renderers.occupancy_grid import OccupancyGrid

    renderer, geo = make_renderer(n_samples=48, randomized=False)
    dense = NeRFVolumeRenderer(
        {"radius": 2.0, "num_samples_per_ray": 48, "grid_prune": False, "randomized": False},
        geo,
        renderer.material,
        renderer.background,
    )
    renderer.train()
    renderer.do_update_step(0, 0)  # warm-up update: every cell evaluated
    occupied = renderer.occupancy.binaries.float().mean()
    assert 0 < occupied < 0.2  # the blob fills a small part of the box
    rays_o, rays_d = camera_rays(8, 8)
    light = torch.tensor([[0.0, 0.0, 3.0]])
    out_p = renderer(rays_o, rays_d, light, shading="albedo")
    out_d = dense(rays_o, rays_d, light, shading="albedo")
    assert out_p["weights"].shape[0] < out_d["weights"].shape[0] / 3
    torch.testing.assert_close(out_p["opacity"], out_d["opacity"], atol=0.03, rtol=0)
    torch.testing.assert_close(out_p["comp_rgb"], out_d["comp_rgb"], atol=0.03, rtol=0)
    per_ray = torch.zeros(64).index_add(0, out_p["ray_indices"], out_p["weights"][:, 0])
    torch.testing.assert_close(per_ray, out_p["opacity"].reshape(-1), atol=1e-5, rtol=1e-5)
    out_p["comp_rgb"].sum().backward()
    assert geo.encoding.encoding.params.grad.abs().sum() > 0
    # an empty scene keeps one dummy sample instead of empty tensors
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=4)
    grid.update_every_n_steps(0, lambda x: torch.zeros(x.shape[0], 1))
    assert not grid.binaries.any()
    renderer.occupancy = grid
    out_e = renderer(rays_o, rays_d, light)
    assert out_e["weights"].shape == (1, 1) and out_e["opacity"].abs().max() == 0


def test_renderer_eval_chunks_agree_and_return_comp_normal():
    renderer, _ = make_renderer(n_samples=16, eval_chunk_size=16 * 5)
    set_eval(renderer)
    rays_o, rays_d = camera_rays(6, 6)
    light = torch.tensor([[0.0, 0.0, 3.0]])
    out_chunked = renderer(rays_o, rays_d, light)
    renderer.cfg.eval_chunk_size = 0
    out_full = renderer(rays_o, rays_d, light)
    torch.testing.assert_close(out_chunked["comp_rgb"], out_full["comp_rgb"], atol=1e-5, rtol=1e-5)
    assert out_full["comp_normal"].shape == (1, 6, 6, 3)
    assert "weights" not in out_full


def test_renderer_importance_estimator_and_errors():
    renderer, _ = make_renderer(n_samples=16, estimator="importance", num_samples_per_ray_importance=16)
    rays_o, rays_d = camera_rays(5, 5)
    out = renderer(rays_o, rays_d, torch.tensor([[0.0, 0.0, 3.0]]), bg_color=torch.tensor([[1.0, 0.0, 0.0]]))
    assert out["opacity"][0, 2, 2, 0] > 0.9  # the central ray crosses the blob
    assert out["opacity"][0, 0, 0, 0] < 0.1
    # bg_color [B, 3] is composited where the ray is empty
    torch.testing.assert_close(out["comp_rgb"][0, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=0.1, rtol=0)
    assert out["t_intervals"].min() >= 0
    geo = small_volume()
    with pytest.raises(NotImplementedError, match="proposal"):
        NeRFVolumeRenderer({"estimator": "proposal"}, geo, NoMaterial({}), SolidColorBackground({}))
    with pytest.raises(ConfigError, match="num_sample_per_ray"):
        NeRFVolumeRenderer({"num_sample_per_ray": 8}, geo, NoMaterial({}), SolidColorBackground({}))


def test_sample_pdf_concentrates_on_heavy_bins():
    bins = torch.linspace(0, 1, 11)[None]
    weights = torch.zeros(1, 10)
    weights[0, 7] = 1.0
    s = sample_pdf(bins, weights, 50, randomized=True)
    assert ((s >= 0.7) & (s <= 0.8)).float().mean() > 0.9
    assert (s[:, 1:] >= s[:, :-1]).all()
