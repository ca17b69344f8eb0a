"""Tensor helpers with threestudio's names (``threestudio/utils/ops.py``, v0.2.3).

Only what the runtime's models need: ``dot``, ``scale_tensor``, ``get_activation``,
``trunc_exp``, ``chunk_batch``, ``validate_empty_rays``, ``perpendicular_component``.
Camera helpers (rays, projection matrices) may be added beside them by the data module.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from ddpo3d.utils.typing import Any, Callable, Dict, Float, Num, Optional, Tensor, Tuple, Union

ValidScale = Union[Tuple[float, float], Num[Tensor, "2 D"]]


def dot(x: Float[Tensor, "... D"], y: Float[Tensor, "... D"]) -> Float[Tensor, "... 1"]:
    """Inner product over the last axis, keeping it (``... 1``)."""
    return torch.sum(x * y, -1, keepdim=True)


def reflect(x: Float[Tensor, "... 3"], n: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
    """Mirror ``x`` about the unit normal ``n``: ``2 (x.n) n - x``."""
    return 2 * dot(x, n) * n - x


def scale_tensor(
    dat: Num[Tensor, "... D"], inp_scale: Optional[ValidScale], tgt_scale: Optional[ValidScale]
) -> Num[Tensor, "... D"]:
    """Affinely map ``dat`` from the range ``inp_scale`` to ``tgt_scale``.

    Args:
        dat: values, last axis ``D``.
        inp_scale: ``(lo, hi)`` or a ``[2, D]`` tensor of per-axis bounds; ``None`` = ``(0, 1)``.
        tgt_scale: the same for the target range.

    Returns:
        ``(dat - lo_in) / (hi_in - lo_in) * (hi_t - lo_t) + lo_t``.
    """
    if inp_scale is None:
        inp_scale = (0, 1)
    if tgt_scale is None:
        tgt_scale = (0, 1)
    if isinstance(tgt_scale, Tensor) and dat.shape[-1] != tgt_scale.shape[-1]:
        raise ValueError(f"scale_tensor: data has {dat.shape[-1]} channels, target scale {tuple(tgt_scale.shape)}")
    dat = (dat - inp_scale[0]) / (inp_scale[1] - inp_scale[0])
    return dat * (tgt_scale[1] - tgt_scale[0]) + tgt_scale[0]


class _TruncExp(torch.autograd.Function):
    """``exp(x)`` whose backward uses ``exp(min(x, 15))`` (Instant-NGP's density activation,
    Müller et al. 2022): the forward is exact, the gradient cannot overflow."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(torch.clamp(x, max=15))


def trunc_exp(x: Tensor) -> Tensor:
    """Truncated-gradient exponential (see :class:`_TruncExp`)."""
    return _TruncExp.apply(x)


_ACTIVATIONS = (
    "none, lin2srgb, exp, shifted_exp, trunc_exp, shifted_trunc_exp, sigmoid, tanh, "
    "shifted_softplus, scale_-11_01, or any torch.nn.functional name (relu, softplus, ...)"
)


def get_activation(name: Optional[str]) -> Callable[[Tensor], Tensor]:
    """Activation by threestudio's name (case-insensitive); ``None``/``"none"`` is identity.

    Raises:
        ValueError: naming the unknown activation and listing the known ones.
    """
    if name is None:
        return lambda x: x
    name = name.lower()
    if name == "none":
        return lambda x: x
    if name == "lin2srgb":
        # sRGB transfer function (IEC 61966-2-1)
        return lambda x: torch.where(
            x > 0.0031308,
            torch.pow(torch.clamp(x, min=0.0031308), 1.0 / 2.4) * 1.055 - 0.055,
            12.92 * x,
        ).clamp(0.0, 1.0)
    if name == "exp":
        return torch.exp
    if name == "shifted_exp":
        return lambda x: torch.exp(x - 1.0)
    if name == "trunc_exp":
        return trunc_exp
    if name == "shifted_trunc_exp":
        return lambda x: trunc_exp(x - 1.0)
    if name == "sigmoid":
        return torch.sigmoid
    if name == "tanh":
        return torch.tanh
    if name == "shifted_softplus":
        return lambda x: F.softplus(x - 1.0)
    if name == "scale_-11_01":
        return lambda x: x * 0.5 + 0.5
    fn = getattr(F, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"Unknown activation function: {name!r}. Known: {_ACTIVATIONS}")
    return fn


def chunk_batch(func: Callable, chunk_size: int, *args, **kwargs) -> Any:
    """Call ``func`` on slices of the leading axis of every tensor argument and concatenate.

    Args:
        func: returns a tensor, a tuple/list of tensors (or ``None``), or a dict of them.
        chunk_size: slice length; ``<= 0`` calls ``func`` once on everything.
        *args, **kwargs: arguments; tensors are sliced along dim 0, others passed as is.

    Returns:
        The same structure as ``func`` returns, with tensors concatenated along dim 0
        (detached when grad is disabled).
    """
    if chunk_size <= 0:
        return func(*args, **kwargs)
    B = None
    for arg in list(args) + list(kwargs.values()):
        if isinstance(arg, Tensor):
            B = arg.shape[0]
            break
    if B is None:
        raise ValueError("chunk_batch: no tensor among the arguments, cannot find the batch size")
    out: Dict[Any, list] = defaultdict(list)
    out_type = None
    chunk_length = 0
    for i in range(0, max(1, B), chunk_size):
        out_chunk = func(
            *[a[i : i + chunk_size] if isinstance(a, Tensor) else a for a in args],
            **{k: a[i : i + chunk_size] if isinstance(a, Tensor) else a for k, a in kwargs.items()},
        )
        if out_chunk is None:
            continue
        out_type = type(out_chunk)
        if isinstance(out_chunk, Tensor):
            out_chunk = {0: out_chunk}
        elif isinstance(out_chunk, (tuple, list)):
            chunk_length = len(out_chunk)
            out_chunk = dict(enumerate(out_chunk))
        elif not isinstance(out_chunk, dict):
            raise TypeError(f"chunk_batch: func must return a Tensor, list, tuple or dict, got {type(out_chunk)}")
        for k, v in out_chunk.items():
            if isinstance(v, Tensor) and not torch.is_grad_enabled():
                v = v.detach()
            out[k].append(v)
    if out_type is None:
        return None
    merged: Dict[Any, Optional[Tensor]] = {}
    for k, v in out.items():
        if all(vv is None for vv in v):
            merged[k] = None
        elif all(isinstance(vv, Tensor) for vv in v):
            merged[k] = torch.cat(v, dim=0)
        else:
            raise TypeError(
                f"chunk_batch: unsupported return types {[type(vv) for vv in v if not isinstance(vv, Tensor)]}"
            )
    if out_type is Tensor or issubclass(out_type, Tensor):
        return merged[0]
    if out_type in (tuple, list):
        return out_type([merged[i] for i in range(chunk_length)])
    return merged


def validate_empty_rays(ray_indices: Tensor, t_start: Tensor, t_end: Tensor):
    """Keep at least one (dummy, zero-length) sample so downstream reductions never see
    an empty tensor (threestudio's helper for nerfacc's packed samples)."""
    if ray_indices.nelement() == 0:
        ray_indices = torch.zeros(1, dtype=torch.long, device=ray_indices.device)
        t_start = torch.zeros(1, dtype=t_start.dtype, device=t_start.device)
        t_end = torch.zeros(1, dtype=t_end.dtype, device=t_end.device)
    return ray_indices, t_start, t_end


def perpendicular_component(x: Float[Tensor, "B C H W"], y: Float[Tensor, "B C H W"]):
    """Component of ``x`` perpendicular to ``y`` per batch item (Perp-Neg, Armandpour et al. 2023, Eq. 4)."""
    eps = torch.ones_like(x[:, 0, 0, 0]) * 1e-6
    proj = (x * y).sum(dim=[1, 2, 3]) / torch.maximum((y * y).sum(dim=[1, 2, 3]), eps)
    return x - proj.view(-1, 1, 1, 1) * y


# ---- camera helpers (used by the random-camera data module) -------------------------
# Conventions (threestudio's): right-handed world, +z up; cameras look down their local -z
# axis with +y up; ``c2w`` columns are ``[right, up, -lookat, position]``.


def get_ray_directions(
    H: int,
    W: int,
    focal: Union[float, Tuple[float, float]],
    principal: Optional[Tuple[float, float]] = None,
    use_pixel_centers: bool = True,
) -> Float[Tensor, "H W 3"]:
    """Pinhole ray directions in camera space (x right, y up, looking down -z).

    Args:
        H, W: image size in pixels.
        focal: focal length in pixels, or ``(fx, fy)`` (then ``principal`` is required).
        principal: principal point ``(cx, cy)`` in pixels; default the image centre.
        use_pixel_centers: offset pixel coordinates by 0.5.

    Returns:
        Unnormalised directions ``[(u - cx)/fx, -(v - cy)/fy, -1]``.
    """
    offset = 0.5 if use_pixel_centers else 0.0
    if isinstance(focal, (int, float)):
        fx = fy = float(focal)
        cx, cy = W / 2, H / 2
    else:
        fx, fy = focal
        if principal is None:
            raise ValueError("get_ray_directions: principal point is required with (fx, fy)")
        cx, cy = principal
    u = torch.arange(W, dtype=torch.float32) + offset
    v = torch.arange(H, dtype=torch.float32) + offset
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([(uu - cx) / fx, -(vv - cy) / fy, -torch.ones_like(uu)], dim=-1)


def get_rays(
    directions: Float[Tensor, "... 3"],
    c2w: Float[Tensor, "... 4 4"],
    keepdim: bool = False,
    noise_scale: float = 0.0,
    normalize: bool = True,
) -> Tuple[Float[Tensor, "... 3"], Float[Tensor, "... 3"]]:
    """World-space ray origins and directions.

    Args:
        directions: camera-space directions ``[N, 3]``, ``[H, W, 3]`` or ``[B, H, W, 3]``.
        c2w: ``[4, 4]``, ``[B, 4, 4]`` (or ``[N, 4, 4]`` for ``[N, 3]`` directions).
        keepdim: keep the image layout; otherwise flatten to ``[-1, 3]``.
        noise_scale: std of a random shift added to origins and directions (anti-aliasing).
        normalize: make directions unit length.

    Returns:
        ``(rays_o, rays_d)``.
    """
    if directions.shape[-1] != 3:
        raise ValueError(f"get_rays: directions must end in 3, got {tuple(directions.shape)}")
    rot = c2w[..., :3, :3]
    trans = c2w[..., :3, 3]
    if directions.ndim == 2:
        rot = rot if rot.ndim == 3 else rot[None]
        trans = trans if trans.ndim == 2 else trans[None]
        rays_d = torch.einsum("nij,nj->ni", rot.expand(directions.shape[0], 3, 3), directions)
        rays_o = trans.expand_as(rays_d)
    elif directions.ndim == 3:
        if c2w.ndim == 2:
            rays_d = torch.einsum("ij,hwj->hwi", rot, directions)
            rays_o = trans[None, None].expand_as(rays_d)
        else:
            rays_d = torch.einsum("bij,hwj->bhwi", rot, directions)
            rays_o = trans[:, None, None].expand_as(rays_d)
    elif directions.ndim == 4:
        if c2w.ndim != 3:
            raise ValueError("get_rays: [B, H, W, 3] directions need [B, 4, 4] c2w")
        rays_d = torch.einsum("bij,bhwj->bhwi", rot, directions)
        rays_o = trans[:, None, None].expand_as(rays_d)
    else:
        raise ValueError(f"get_rays: unsupported directions shape {tuple(directions.shape)}")
    if noise_scale > 0:
        rays_o = rays_o + torch.randn(3, device=rays_o.device) * noise_scale
        rays_d = rays_d + torch.randn(3, device=rays_d.device) * noise_scale
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    if not keepdim:
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    return rays_o, rays_d


def get_projection_matrix(
    fovy: Float[Tensor, " B"], aspect_wh: float, near: float, far: float
) -> Float[Tensor, "B 4 4"]:
    """OpenGL perspective projection (y flipped, as threestudio does for nvdiffrast).

    Args:
        fovy: vertical field of view in radians.
        aspect_wh: width / height.
        near, far: clip planes.

    Returns:
        Projection matrices.
    """
    t = torch.tan(fovy / 2.0)
    proj = torch.zeros(fovy.shape[0], 4, 4, dtype=torch.float32)
    proj[:, 0, 0] = 1.0 / (t * aspect_wh)
    proj[:, 1, 1] = -1.0 / t
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def get_mvp_matrix(c2w: Float[Tensor, "B 4 4"], proj_mtx: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """``proj @ w2c`` with ``w2c`` the rigid inverse of ``c2w`` (``R^T``, ``-R^T t``)."""
    rot_t = c2w[:, :3, :3].transpose(1, 2)
    w2c = torch.zeros(c2w.shape[0], 4, 4, dtype=c2w.dtype, device=c2w.device)
    w2c[:, :3, :3] = rot_t
    w2c[:, :3, 3:] = -rot_t @ c2w[:, :3, 3:]
    w2c[:, 3, 3] = 1.0
    return proj_mtx.to(w2c) @ w2c


def binary_cross_entropy(input: Tensor, target: Tensor) -> Tensor:
    """Mean BCE written out, stable under mixed precision (``F.binary_cross_entropy`` is not).

    With ``input == target`` (threestudio's "opaque" loss) this is the mean binary
    entropy of the opacities, minimised when every opacity is 0 or 1.
    """
    return -(target * torch.log(input) + (1 - target) * torch.log(1 - input)).mean()
