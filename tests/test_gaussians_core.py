"""Core Gaussian splatting maths (ddpo3d.gaussians): tiled rasteriser vs brute force,
gradients, projection / SH against independent computations, PLY, optimizer surgery."""

import math

import numpy as np
import pytest
import torch

from ddpo3d.gaussians import (
    GsplatUnavailableError,
    eval_sh,
    intrinsics_from_fovy,
    knn_mean_sq_dist,
    load_gaussians_ply,
    opengl_c2w_to_viewmats,
    optimizer_replace_param,
    project_gaussians,
    rasterize,
    rasterize_reference,
    rasterize_torch,
    read_ply_vertices,
    resolve_backend,
    save_gaussians_ply,
    split_gaussians,
)
from ddpo3d.gaussians.sh import SH_C0, eval_sh_bases, rgb_to_sh0

ATTRS = ("means", "quats", "scales", "opacities", "colors")


def lookat_c2w(positions, dtype=torch.float64):
    """threestudio's camera construction (data/uncond.py): look at the origin, z up."""
    positions = torch.as_tensor(positions, dtype=dtype)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=dtype).expand_as(positions)
    lookat = torch.nn.functional.normalize(-positions, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up = torch.nn.functional.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(positions.shape[0], 4, 4, dtype=dtype)
    c2w[:, :3, :3] = torch.stack([right, up, -lookat], dim=-1)
    c2w[:, :3, 3] = positions
    c2w[:, 3, 3] = 1
    return c2w


def make_scene(kind, N=120, W=37, H=29, C=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    means = (r(N, 3) - 0.5) * 1.6
    scales = r(N, 3) * 0.12 + 0.01
    if kind == "overlap":  # a dense clump: deep lists, early termination
        means = (r(N, 3) - 0.5) * 0.3
        scales = r(N, 3) * 0.2 + 0.05
    if kind == "offscreen":  # many outside the frustum, some behind / at the camera
        means = (r(N, 3) - 0.5) * 8.0
        means[:5] = torch.tensor([2.9, 0.0, 0.0], dtype=dtype) + 0.05 * r(5, 3)
    quats = torch.randn(N, 4, generator=g, dtype=dtype)
    opacities = r(N) * 0.98 + 0.01
    if kind == "overlap":
        opacities = r(N) * 0.3 + 0.69
    colors = r(N, 3)
    az = torch.tensor([0.3, 2.0, -1.2, 4.0], dtype=dtype)[:C]
    pos = torch.stack([3 * torch.cos(az), 3 * torch.sin(az), 0.4 * torch.ones_like(az)], -1)
    viewmats = opengl_c2w_to_viewmats(lookat_c2w(pos, dtype))
    Ks = intrinsics_from_fovy(torch.full((C,), 0.9, dtype=dtype), W, H)
    return dict(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=W,
        height=H,
    )


SCENES = ["random", "overlap", "offscreen"]


@pytest.mark.parametrize("kind", SCENES)
@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_tiled_matches_reference_forward(kind, tile_size):
    s = make_scene(kind)
    rgb_t, a_t, meta = rasterize_torch(**s, tile_size=tile_size)
    rgb_r, a_r, _ = rasterize_reference(**s)
    assert rgb_t.shape == (2, 29, 37, 3) and a_t.shape == (2, 29, 37, 1)
    # float64; the sums differ only by summation order
    assert torch.allclose(rgb_t, rgb_r, atol=1e-10, rtol=0)
    assert torch.allclose(a_t, a_r, atol=1e-10, rtol=0)
    assert a_t.max() > 0.5 and meta["n_isects"] > 0  # the scene is actually visible
    assert (a_t <= 1 + 1e-12).all() and (a_t >= 0).all()


def test_small_chunks_match_one_chunk():
    s = make_scene("overlap", N=200)
    rgb_a, a_a, _ = rasterize_torch(**s, tile_size=8)
    rgb_b, a_b, _ = rasterize_torch(**s, tile_size=8, chunk_elements=64)  # 8-wide chunks
    assert torch.allclose(rgb_a, rgb_b, atol=1e-12) and torch.allclose(a_a, a_b, atol=1e-12)


def _loop_composite(s, cam):
    """gsplat's per-pixel CUDA loop, written sequentially (tiny scenes only)."""
    means2d, conics, depths, radii, _ = project_gaussians(
        s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], s["width"], s["height"]
    )
    order = [int(i) for i in torch.argsort(depths[cam], stable=True) if (radii[cam, i] > 0).all()]
    img = np.zeros((s["height"], s["width"], 3))
    acc = np.zeros((s["height"], s["width"]))
    for v in range(s["height"]):
        for u in range(s["width"]):
            T, c = 1.0, np.zeros(3)
            for i in order:
                dx, dy = u + 0.5 - float(means2d[cam, i, 0]), v + 0.5 - float(means2d[cam, i, 1])
                a, b, cc = conics[cam, i].tolist()
                sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
                alpha = min(0.999, float(s["opacities"][i]) * math.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                next_T = T * (1 - alpha)
                if next_T <= 1e-4:
                    break
                c += alpha * T * s["colors"][i].numpy()
                T = next_T
            img[v, u], acc[v, u] = c, 1 - T
    return img, acc


@pytest.mark.parametrize("kind", ["random", "overlap"])
@pytest.mark.parametrize("chunk_elements", [1 << 21, 1])
def test_tiled_matches_sequential_loop(kind, chunk_elements):
    s = make_scene(kind, N=40, W=12, H=10, C=1)
    # chunk_elements=1: chunks of 8 Gaussians, so termination crosses chunk boundaries
    rgb, alpha, _ = rasterize_torch(**s, tile_size=4, chunk_elements=chunk_elements)
    img, acc = _loop_composite(s, 0)
    assert np.allclose(rgb[0].numpy(), img, atol=1e-10)
    assert np.allclose(alpha[0, ..., 0].numpy(), acc, atol=1e-10)
    if kind == "overlap":
        assert acc.max() > 0.99  # early termination was exercised


@pytest.mark.parametrize("kind", SCENES)
def test_tiled_matches_reference_gradients(kind):
    s = make_scene(kind, N=80, seed=1)
    for k in ATTRS:
        s[k] = s[k].clone().requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    w_rgb = torch.randn(2, 29, 37, 3, generator=g, dtype=torch.float64)
    w_a = torch.randn(2, 29, 37, 1, generator=g, dtype=torch.float64)

    def grads(fn, **kw):
        rgb, a, _ = fn(**s, **kw)
        return torch.autograd.grad((rgb * w_rgb).sum() + (a * w_a).sum(), [s[k] for k in ATTRS])

    g_t = grads(rasterize_torch, tile_size=8)
    g_r = grads(rasterize_reference)
    for name, a, b in zip(ATTRS, g_t, g_r):
        scale = b.abs().max().item()
        assert scale > 0, name
        # tolerance: 1e-9 of the largest entry (float64, summation order only)
        assert torch.allclose(a, b, atol=1e-9 * scale, rtol=0), (name, (a - b).abs().max().item(), scale)


def test_sh_colors_and_per_view_inputs_match_reference():
    s = make_scene("random", N=60)
    g = torch.Generator().manual_seed(2)
    s["colors"] = torch.randn(60, 16, 3, generator=g, dtype=torch.float64) * 0.3
    s["colors"].requires_grad_(True)
    rgb_t, _, _ = rasterize_torch(**s, sh_degree=3, tile_size=8)
    rgb_r, _, _ = rasterize_reference(**s, sh_degree=3)
    assert torch.allclose(rgb_t, rgb_r, atol=1e-10)
    gt = torch.autograd.grad(rgb_t.sum(), s["colors"])[0]
    gr = torch.autograd.grad(rgb_r.sum(), s["colors"])[0]
    assert torch.allclose(gt, gr, atol=1e-9) and gt[:, 9:].abs().sum() > 0  # degree-3 terms used
    # degree 1 must ignore coefficients 4..15
    c2 = s["colors"].detach().clone()
    c2[:, 4:] = 7.0
    a1 = rasterize_torch(**{**s, "colors": s["colors"].detach()}, sh_degree=1)[0]
    a2 = rasterize_torch(**{**s, "colors": c2}, sh_degree=1)[0]
    assert torch.equal(a1, a2)


def test_render_modes_and_backgrounds():
    s = make_scene("random")
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]], dtype=torch.float64)
    rgb, alpha, _ = rasterize_torch(**s)
    rgb_bg, alpha_bg, _ = rasterize_torch(**s, backgrounds=bg)
    assert torch.allclose(rgb_bg, rgb + (1 - alpha) * bg[:, None, None, :])
    rgbd, _, meta = rasterize_torch(**s, render_mode="RGB+D")
    rgbed, _, _ = rasterize_torch(**s, render_mode="RGB+ED")
    d_ref = rasterize_reference(**s, render_mode="RGB+D")[0]
    assert rgbd.shape[-1] == 4 and torch.allclose(rgbd, d_ref, atol=1e-10)
    assert torch.allclose(rgbd[..., :3], rgb)
    mask = alpha[..., 0] > 0.5
    ed = rgbed[..., 3][mask]
    # expected depth lies between the nearest and farthest Gaussian depth
    dep = meta["depths"][(meta["radii"] > 0).all(-1)]
    assert (ed >= dep.min() - 1e-9).all() and (ed <= dep.max() + 1e-9).all()
    assert torch.allclose(rgbed[..., 3] * alpha[..., 0], rgbd[..., 3], atol=1e-10)
    with pytest.raises(ValueError, match="render_mode"):
        rasterize_torch(**s, render_mode="RGBD")


def test_projection_gradcheck():
    s = make_scene("random", N=6)
    inputs = tuple(s[k].clone().requires_grad_(True) for k in ("means", "quats", "scales"))

    def f(m, q, sc):
        means2d, conics, depths, _, _ = project_gaussians(m, q, sc, s["viewmats"], s["Ks"], 37, 29)
        return means2d, conics, depths

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_camera_convention_matches_threestudio_rays():
    """A point on threestudio's ray through pixel (u, v) projects to that pixel's centre."""
    W, H, fovy = 20, 16, torch.tensor([0.7], dtype=torch.float64)
    c2w = lookat_c2w([[2.0, -1.0, 0.7]])
    focal = 0.5 * H / math.tan(0.35)
    for u, v in [(0, 0), (19, 3), (7, 15)]:
        # threestudio get_ray_directions: (x - W/2)/f, -(y - H/2)/f, -1 at pixel centres
        d_cam = torch.tensor([(u + 0.5 - W / 2) / focal, -(v + 0.5 - H / 2) / focal, -1.0], dtype=torch.float64)
        p = c2w[0, :3, 3] + 1.7 * (c2w[0, :3, :3] @ d_cam)
        m2d, _, depth, _, _ = project_gaussians(
            p[None],
            torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
            torch.full((1, 3), 0.01, dtype=torch.float64),
            opengl_c2w_to_viewmats(c2w),
            intrinsics_from_fovy(fovy, W, H),
            W,
            H,
        )
        assert torch.allclose(m2d[0, 0], torch.tensor([u + 0.5, v + 0.5], dtype=torch.float64), atol=1e-9)
        assert depth[0, 0] > 0


def test_sh_basis_is_orthonormal():
    """Independent check of the SH constants: int Y_i Y_j dw = delta_ij (Fibonacci sphere)."""
    n = 40000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    Y = eval_sh_bases(3, dirs)  # [n, 16]
    gram = 4 * math.pi * (Y.T @ Y) / n
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)
    # degree 0 gives the same colour everywhere; rgb_to_sh0 inverts it
    rgb = torch.tensor([[0.1, 0.5, 0.9]], dtype=torch.float64)
    c = torch.zeros(1, 16, 3, dtype=torch.float64)
    c[:, 0] = rgb_to_sh0(rgb)
    for d in range(4):
        assert torch.allclose(eval_sh(d, c, dirs[:1]) + 0.5, rgb)
    assert SH_C0 == pytest.approx(0.5 / math.sqrt(math.pi))


def test_projection_and_sh_match_gsplat_torch_reference():
    gs = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat not installed (pip install gsplat==1.5.3)")
    s = make_scene("offscreen", N=200, dtype=torch.float32)
    m2d, conics, depths, radii, _ = project_gaussians(
        s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], s["width"], s["height"]
    )
    covars, _ = gs._quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False, triu=False)
    r_g, m_g, d_g, c_g, _ = gs._fully_fused_projection(
        s["means"], covars, s["viewmats"], s["Ks"], s["width"], s["height"]
    )
    vis = (radii > 0).all(-1)
    assert vis.sum() > 20
    assert torch.equal(vis, (r_g > 0).all(-1))
    assert torch.allclose(m2d[vis], m_g[vis], atol=1e-3, rtol=1e-4)
    assert torch.allclose(conics[vis], c_g[vis], rtol=1e-3, atol=1e-6)
    assert torch.allclose(depths, d_g)
    assert torch.equal(radii[vis], r_g[vis].long())
    coeffs = torch.randn(50, 16, 3)
    dirs = torch.randn(50, 3)
    for d in range(4):
        ref = gs._spherical_harmonics(d, dirs, coeffs)
        assert torch.allclose(eval_sh(d, coeffs, dirs), ref, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat.rasterization needs a CUDA device")
def test_torch_rasteriser_matches_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    s = make_scene("random", N=300, W=64, H=48, dtype=torch.float32)
    s = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in s.items()}
    for k in ATTRS:
        s[k].requires_grad_(True)
    rgb_t, a_t, _ = rasterize(**s, backend="torch", tile_size=16)
    rgb_g, a_g, meta = rasterize(**s, backend="gsplat", tile_size=16)
    assert meta["backend"] == "gsplat"
    # float32 on different kernels: a pixel can flip across the 1/255 alpha threshold, so
    # bound the mean error tightly and the max error loosely (one Gaussian at 1/255)
    for t, g in ((rgb_t, rgb_g), (a_t, a_g)):
        assert (t - g).abs().mean() < 5e-5 and (t - g).abs().max() < 5e-3
    w = torch.randn_like(rgb_t)
    g_t = torch.autograd.grad((rgb_t * w).sum(), [s[k] for k in ATTRS])
    g_g = torch.autograd.grad((rgb_g * w).sum(), [s[k] for k in ATTRS])
    for name, a, b in zip(ATTRS, g_t, g_g):
        assert (a - b).norm() <= 1e-2 * b.norm(), name  # relative error of the whole gradient


def test_backend_selection():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(GsplatUnavailableError, match="CUDA"):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", torch.device("cpu"))
    s = make_scene("random", N=30)
    rgb, _, meta = rasterize(**s)
    assert meta["backend"] == "torch" and torch.equal(rgb, rasterize_torch(**s)[0])
    with pytest.raises(ValueError, match="quats"):
        rasterize_torch(**{**s, "quats": s["quats"][:5]})


def test_ply_round_trip(tmp_path):
    g = torch.Generator().manual_seed(3)
    N = 57
    data = dict(
        means=torch.randn(N, 3, generator=g),
        sh0=torch.randn(N, 1, 3, generator=g),
        shN=torch.randn(N, 15, 3, generator=g),
        opacity_logits=torch.randn(N, generator=g),
        log_scales=torch.randn(N, 3, generator=g),
        quats=torch.randn(N, 4, generator=g),
    )
    path = save_gaussians_ply(str(tmp_path / "sub" / "g.ply"), **data)
    header = open(path, "rb").read(2000).split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in header and f"element vertex {N}" in header
    assert "property float f_rest_44" in header and "property float rot_3" in header
    back = load_gaussians_ply(path)
    assert back["sh_degree"] == 3
    for k, v in data.items():
        assert torch.equal(back[k], v), k
    v = read_ply_vertices(path)
    # channel-major f_rest (3DGS): f_rest_0..14 are the red coefficients
    assert np.allclose(v["f_rest_1"], data["shN"][:, 1, 0].numpy())
    assert np.allclose(v["f_rest_15"], data["shN"][:, 0, 1].numpy())
    assert np.all(v["nx"] == 0)
    # degree 0 file
    path0 = save_gaussians_ply(str(tmp_path / "g0.ply"), **{**data, "shN": torch.zeros(N, 0, 3)})
    assert load_gaussians_ply(path0)["sh_degree"] == 0
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        load_gaussians_ply(str(tmp_path / "bad.ply"))


def test_optimizer_replace_param_keeps_adam_state():
    p = torch.nn.Parameter(torch.randn(6, 3))
    q = torch.nn.Parameter(torch.randn(2))
    opt = torch.optim.Adam([{"params": [p], "lr": 0.1}, {"params": [q], "lr": 0.2}])
    for _ in range(3):
        opt.zero_grad()
        ((p**2).sum() + q.sum()).backward()
        opt.step()
    st = {k: v.clone() for k, v in opt.state[p].items()}
    keep = torch.tensor([True, False, True, True, False, True])
    p2 = torch.nn.Parameter(p.detach()[keep])
    assert optimizer_replace_param(opt, p, p2, lambda t: t[keep])
    assert opt.param_groups[0]["params"][0] is p2 and p not in opt.state
    assert torch.equal(opt.state[p2]["exp_avg"], st["exp_avg"][keep])
    assert torch.equal(opt.state[p2]["exp_avg_sq"], st["exp_avg_sq"][keep])
    assert torch.equal(opt.state[p2]["step"], st["step"])
    p3 = torch.nn.Parameter(torch.cat([p2.detach(), torch.ones(3, 3)]))
    assert optimizer_replace_param(opt, p2, p3, lambda t: torch.cat([t, torch.zeros(3, 3)]))
    assert opt.state[p3]["exp_avg"].shape == (7, 3) and (opt.state[p3]["exp_avg"][4:] == 0).all()
    opt.zero_grad()
    (p3**2).sum().backward()
    opt.step()  # Adam accepts the swapped parameter and state
    assert not optimizer_replace_param(opt, p, p2, lambda t: t)  # p is gone


def test_split_and_knn():
    means = torch.zeros(4, 3)
    log_scales = torch.log(torch.tensor([[0.1, 0.2, 0.3]])).repeat(4, 1)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(4, 1)
    m, ls = split_gaussians(means, log_scales, quats, n_split=2, generator=torch.Generator().manual_seed(0))
    assert m.shape == (8, 3) and torch.allclose(ls.exp(), torch.tensor([0.1, 0.2, 0.3]) / 1.6)
    big = split_gaussians(
        torch.zeros(20000, 3),
        log_scales[:1].repeat(20000, 1),
        quats[:1].repeat(20000, 1),
        n_split=1,
        generator=torch.Generator().manual_seed(1),
    )[0]
    assert torch.allclose(big.std(0), torch.tensor([0.1, 0.2, 0.3]), rtol=0.05)  # sampled from the parent
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [10, 0, 0]])
    d = knn_mean_sq_dist(pts, k=1)
    assert torch.allclose(d, torch.tensor([1.0, 1.0, 4.0, 81.0]))


def test_nothing_visible_still_differentiable():
    s = make_scene("random", N=20)
    s["means"] = s["means"] * 0 + torch.tensor([100.0, 100.0, 100.0], dtype=torch.float64)  # far outside
    s["means"].requires_grad_(True)
    rgb, alpha, meta = rasterize_torch(**s)
    assert meta["n_isects"] == 0 and alpha.abs().sum() == 0
    (g,) = torch.autograd.grad(rgb.sum() + alpha.sum(), [s["means"]])
    assert torch.equal(g, torch.zeros_like(g))
