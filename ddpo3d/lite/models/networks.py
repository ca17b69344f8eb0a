"""Encodings and MLPs in pure PyTorch, with tiny-cuda-nn's config keys.

threestudio builds these with tinycudann (CUDA only). Here every ``otype`` a threestudio
config uses for a NeRF is re-implemented in torch, runs on CPU and CUDA, and keeps the
same config keys and output layout:

* ``HashGrid`` / ``Grid`` (``type: Hash``): multi-resolution hash encoding (Müller et al.,
  "Instant Neural Graphics Primitives", SIGGRAPH 2022, Sec. 3), trilinear (d-linear)
  interpolation, tcnn's level resolutions and spatial hash.
* ``ProgressiveBandHashGrid``: the same with coarse-to-fine level masking (threestudio).
* ``ProgressiveBandFrequency``: NeRF's positional encoding (Mildenhall et al. 2020, Eq. 4)
  with optional coarse-to-fine band masking (Nerfies, Park et al. 2021, Eq. 8).
* ``Frequency``: tcnn's frequency encoding ``sin(2^i pi x), cos(2^i pi x)``.
* ``SphericalHarmonics``: real spherical harmonics of a direction (tcnn's, up to degree 4).
* ``VanillaMLP``: bias-free ReLU MLP (threestudio's). tcnn's ``FullyFusedMLP`` and
  ``CutlassMLP`` are accepted as aliases of the same torch MLP (they are the same function
  class; only the CUDA kernels differ, and weights are not interchangeable anyway).

Any other ``otype`` (or an unknown key in one of these blocks) is an error naming it.
Encodings expect inputs in ``[0, 1]`` (threestudio's convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

import ddpo3d.lite as threestudio
from ddpo3d.lite.utils.base import Updateable
from ddpo3d.lite.utils.ops import get_activation
from ddpo3d.utils.config import ConfigError, to_primitive, unknown_key_message
from ddpo3d.utils.typing import Any, Dict, Float, Int, Tensor

# keys every encoding block may carry
_COMMON_ENCODING_KEYS = {"otype", "include_xyz"}
_HASHGRID_KEYS = _COMMON_ENCODING_KEYS | {
    "type",
    "n_levels",
    "n_features_per_level",
    "log2_hashmap_size",
    "base_resolution",
    "per_level_scale",
    "interpolation",
}
_PROGRESSIVE_KEYS = {"start_level", "start_step", "update_steps"}
_MLP_KEYS = {"otype", "activation", "output_activation", "n_neurons", "n_hidden_layers"}

SUPPORTED_ENCODINGS = (
    "HashGrid",
    "Grid",
    "ProgressiveBandHashGrid",
    "ProgressiveBandFrequency",
    "Frequency",
    "SphericalHarmonics",
)
SUPPORTED_MLPS = ("VanillaMLP", "FullyFusedMLP", "CutlassMLP")


def _check_keys(config: Dict[str, Any], allowed: set, where: str, required: tuple = ()) -> None:
    for key in config:
        if key not in allowed:
            raise ConfigError(unknown_key_message(key, where, sorted(allowed)))
    for key in required:
        if key not in config:
            raise ConfigError(f"Missing key {key!r} in the {where} config {config!r}")


# --------------------------------------------------------------------------------------
# hash grid
# --------------------------------------------------------------------------------------

# tcnn's spatial hash primes (Teschner et al. 2003 / Instant-NGP Eq. 4); the first is 1 so
# that the hash is coherent along x.
_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037)
_MASK32 = 0xFFFFFFFF


def hash_grid_level_layout(
    n_input_dims: int, n_levels: int, log2_hashmap_size: int, base_resolution: int, per_level_scale: float
):
    """Per-level scale, resolution, table size and hashing flag, as tcnn lays them out.

    Level ``l`` has scale ``s_l = base_resolution * per_level_scale**l - 1`` and resolution
    ``ceil(s_l) + 1`` vertices per axis; its table holds ``min(2**log2_hashmap_size,
    resolution**D)`` entries (rounded up to a multiple of 8, as tcnn does); levels whose dense
    grid fits in the table are indexed densely, the others hashed (Instant-NGP Sec. 3).

    Returns:
        ``(scales, resolutions, sizes, hashed)`` as Python lists of length ``n_levels``.
    """
    max_params = 2**log2_hashmap_size
    scales, resolutions, sizes, hashed = [], [], [], []
    for level in range(n_levels):
        scale = math.exp2(level * math.log2(per_level_scale)) * base_resolution - 1.0
        resolution = int(math.ceil(scale)) + 1
        dense = resolution**n_input_dims
        size = min(max_params, dense)
        size = (size + 7) // 8 * 8
        scales.append(scale)
        resolutions.append(resolution)
        sizes.append(size)
        hashed.append(dense > size)
    return scales, resolutions, sizes, hashed


class HashGrid(nn.Module):
    """Multi-resolution hash encoding (Instant-NGP), pure PyTorch, vectorised over levels.

    For a point ``x`` in ``[0, 1]^D`` and level ``l``: ``p = x * s_l + 0.5``, the cell corner
    ``floor(p)`` and fractional part ``f = p - floor(p)``; the feature is the d-linear blend
    ``sum_c prod_d (f_d if c_d else 1 - f_d) * T_l[index(floor(p) + c)]`` over the ``2^D``
    corners ``c`` (Instant-NGP Sec. 3, Fig. 3). Outputs are concatenated level by level
    (``[level0 features, level1 features, ...]``), tcnn's layout.

    Args:
        in_channels: input dimension ``D`` (1 to 5).
        config: tcnn keys ``n_levels``, ``n_features_per_level``, ``log2_hashmap_size``,
            ``base_resolution``, ``per_level_scale`` (``interpolation`` may be ``Linear``).
    """

    def __init__(self, in_channels: int, config: Dict[str, Any]):
        super().__init__()
        if not 1 <= in_channels <= len(_PRIMES):
            raise ConfigError(f"HashGrid supports 1 to {len(_PRIMES)} input dims, got {in_channels}")
        interpolation = config.get("interpolation", "Linear")
        if interpolation != "Linear":
            raise ConfigError(
                f"HashGrid interpolation {interpolation!r} is not supported by the built-in runtime (only 'Linear')"
            )
        grid_type = config.get("type", "Hash")
        if grid_type != "Hash":
            raise ConfigError(f"Grid type {grid_type!r} is not supported by the built-in runtime (only 'Hash')")
        self.n_input_dims = in_channels
        self.n_levels = int(config["n_levels"])
        self.n_features_per_level = int(config["n_features_per_level"])
        self.log2_hashmap_size = int(config["log2_hashmap_size"])
        self.base_resolution = int(config["base_resolution"])
        self.per_level_scale = float(config["per_level_scale"])
        self.n_output_dims = self.n_levels * self.n_features_per_level
        scales, resolutions, sizes, hashed = hash_grid_level_layout(
            in_channels, self.n_levels, self.log2_hashmap_size, self.base_resolution, self.per_level_scale
        )
        self.resolutions = resolutions
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        # tcnn initialises the table uniformly in [-1e-4, 1e-4] (Instant-NGP Sec. 4)
        self.params = nn.Parameter(torch.empty(offsets[-1], self.n_features_per_level).uniform_(-1e-4, 1e-4))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)
        self.register_buffer("level_offsets", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("level_sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        # levels are ordered coarse to fine, so the densely indexed ones form a prefix
        self.level_hashed = list(hashed)
        self.n_dense_levels = sum(1 for h in hashed if not h)
        if any(not h for h in hashed[self.n_dense_levels :]):
            raise ConfigError("HashGrid: dense levels after hashed ones (per_level_scale < 1?)")
        strides = torch.tensor([[r**d for d in range(in_channels)] for r in resolutions], dtype=torch.long)  # [L, D]
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES[:in_channels], dtype=torch.long), persistent=False)

    def _corner_index(self, x: Float[Tensor, "N D"], n_levels: int):
        """Table rows ``[N, L', 2^D]`` of the cell corners and the fractional positions
        ``[N, L', D]`` for the first ``n_levels`` levels.

        Per axis the two candidate coordinates ``floor(p_d)`` and ``floor(p_d) + 1`` are
        turned into their hash term ``(c_d * pi_d) mod 2^32`` / dense term ``c_d * R^d`` once;
        the ``2^D`` corners are then formed by broadcasting (xor for the hash, sum for the
        dense index), corner axes ordered ``(x0, x1, ...)``.
        """
        n, D, L = x.shape[0], self.n_input_dims, n_levels
        pos = x.float()[:, None, :] * self.scales[None, :L, None] + 0.5  # [N, L, D]
        base = torch.floor(pos)
        frac = pos - base  # differentiable in x (analytic normals need it)
        base = base.long()
        c2 = torch.stack([base, base + 1], -1)  # [N, L, D, 2]
        parts = []
        nd = min(self.n_dense_levels, L)
        if nd > 0:  # coarse levels: dense row-major index (mod the table size, as tcnn)
            dp = c2[:, :nd] * self.strides[:nd, :, None]
            dense = dp[:, :, 0]
            for d in range(1, D):
                dense = dense[..., None] + dp[:, :, d].view(n, nd, *([1] * d), 2)
            parts.append(dense.reshape(n, nd, -1) % self.level_sizes[:nd, None])
        if nd < L:  # fine levels: spatial hash xor_d (c_d * pi_d), table size is 2^k
            hp = (c2[:, nd:] * self.primes[:, None]) & _MASK32
            h = hp[:, :, 0]
            for d in range(1, D):
                h = h[..., None] ^ hp[:, :, d].view(n, L - nd, *([1] * d), 2)
            parts.append(h.reshape(n, L - nd, -1) & (self.level_sizes[nd:L, None] - 1))
        idx = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return idx + self.level_offsets[:L, None], frac

    def encode_levels(self, x: Float[Tensor, "N D"], n_levels: int) -> Float[Tensor, "N Lp F"]:
        """Features of the first ``n_levels`` levels, ``[N, n_levels, n_features_per_level]``.

        The d-linear blend is done as ``D`` successive linear interpolations (last axis first),
        ``f0 + f_d (f1 - f0)``, which equals ``sum_c prod_d w_{c,d} T[c]`` with fewer operations.
        """
        n, D = x.shape[0], self.n_input_dims
        idx, frac = self._corner_index(x, n_levels)
        feats = _gather_rows(self.params, idx)  # [N, L', 2^D, F]
        feats = feats.view(n, n_levels, *([2] * D), self.n_features_per_level)
        for d in reversed(range(D)):
            t = frac[:, :, d].view(n, n_levels, *([1] * d), 1)
            f0, f1 = feats.unbind(-2)
            feats = f0 + t * (f1 - f0)
        return feats

    def forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N F"]:
        """Encode points in ``[0, 1]^D`` (values outside are extrapolated on the border cells).

        Args:
            x: points, ``[N, D]``.

        Returns:
            Features ``[N, n_levels * n_features_per_level]`` in the input's dtype.
        """
        return self.encode_levels(x, self.n_levels).reshape(x.shape[0], self.n_output_dims).to(x.dtype)


class _GatherRows(torch.autograd.Function):
    """``table[idx]`` whose backward scatters with ``index_add_`` (several times faster on
    CPU than ``embedding_dense_backward``, which sorts the indices)."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.n_rows, grad.shape[-1])
        out = out.index_add(0, idx.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        return out, None


def _gather_rows(table: Float[Tensor, "T F"], idx: Int[Tensor, "..."]) -> Float[Tensor, "... F"]:
    return _GatherRows.apply(table, idx)


class ProgressiveBandHashGrid(HashGrid, Updateable):
    """Hash grid whose finer levels are switched on during training (threestudio).

    Extra config keys: ``start_level`` (levels on at the start), ``start_step`` and
    ``update_steps`` (one more level every ``update_steps`` steps after ``start_step``).
    The mask starts with ``start_level`` levels on (threestudio's starts all-zero until
    the first ``update_step``, which the system calls before every training step; starting
    at ``start_level`` makes an encoding used before any step behave like step 0).
    """

    def __init__(self, in_channels: int, config: Dict[str, Any]):
        super().__init__(in_channels, config)
        self.start_level = int(config["start_level"])
        self.start_step = int(config["start_step"])
        self.update_steps = int(config["update_steps"])
        if self.update_steps <= 0:
            raise ConfigError(f"ProgressiveBandHashGrid update_steps must be > 0, got {self.update_steps}")
        self.current_level = min(self.start_level, self.n_levels)
        mask = torch.zeros(self.n_output_dims, dtype=torch.float32)
        mask[: self.current_level * self.n_features_per_level] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N F"]:
        # levels past current_level are masked to 0 (value and gradient), so they are not
        # computed at all: exact, and the early steps of training are much cheaper
        n_active = min(max(int(self.current_level), 0), self.n_levels)
        if n_active == 0:
            return x.new_zeros(x.shape[0], self.n_output_dims) + 0.0 * self.params.sum()
        active = self.encode_levels(x, n_active).reshape(x.shape[0], -1)
        active = active * self.mask[: active.shape[1]].to(active.dtype)
        if n_active < self.n_levels:
            active = torch.cat([active, active.new_zeros(x.shape[0], self.n_output_dims - active.shape[1])], -1)
        return active.to(x.dtype)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        current_level = min(
            self.start_level + max(global_step - self.start_step, 0) // self.update_steps, self.n_levels
        )
        if current_level > self.current_level:
            threestudio.debug(f"Update current level to {current_level}")
        self.current_level = current_level
        self.mask[: self.current_level * self.n_features_per_level] = 1.0


# --------------------------------------------------------------------------------------
# frequency and spherical-harmonics encodings
# --------------------------------------------------------------------------------------


class ProgressiveBandFrequency(nn.Module, Updateable):
    """NeRF positional encoding with optional coarse-to-fine masking.

    ``gamma(x) = [sin(2^k x), cos(2^k x)]_{k=0..K-1}`` (Mildenhall et al. 2020, Eq. 4, without
    the pi factor, as threestudio). With ``n_masking_step > 0`` band ``k`` is weighted by
    ``(1 - cos(pi * clamp(step / n_masking_step * K - k, 0, 1))) / 2`` (Nerfies, Park et al.
    2021, Eq. 8).

    Config keys: ``n_frequencies``, ``n_masking_step`` (default 0: no masking).
    """

    def __init__(self, in_channels: int, config: Dict[str, Any]):
        super().__init__()
        self.N_freqs = int(config["n_frequencies"])
        self.in_channels = self.n_input_dims = in_channels
        self.funcs = [torch.sin, torch.cos]
        self.register_buffer("freq_bands", 2 ** torch.linspace(0, self.N_freqs - 1, self.N_freqs), persistent=False)
        self.n_output_dims = self.in_channels * (len(self.funcs) * self.N_freqs)
        self.n_masking_step = int(config.get("n_masking_step", 0))
        self.register_buffer("mask", torch.ones(self.N_freqs), persistent=False)
        self.update_step(None, None)

    def forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N F"]:
        out = []
        for freq, mask in zip(self.freq_bands, self.mask):
            for func in self.funcs:
                out.append(func(freq * x) * mask)
        return torch.cat(out, -1)

    def update_step(self, epoch, global_step, on_load_weights: bool = False) -> None:
        if self.n_masking_step <= 0 or global_step is None:
            self.mask.fill_(1.0)
        else:
            k = torch.arange(0, self.N_freqs, dtype=torch.float32, device=self.mask.device)
            ramp = (global_step / self.n_masking_step * self.N_freqs - k).clamp(0, 1)
            self.mask.copy_((1.0 - torch.cos(math.pi * ramp)) / 2.0)


class FrequencyEncoding(nn.Module):
    """tcnn's ``Frequency`` encoding: ``sin(2^k pi x), cos(2^k pi x)`` for ``k < n_frequencies``,
    laid out per input dimension then per frequency (``[x0: sin,cos per k], [x1: ...]``).

    Config key: ``n_frequencies``.
    """

    def __init__(self, in_channels: int, config: Dict[str, Any]):
        super().__init__()
        self.n_input_dims = in_channels
        self.n_frequencies = int(config["n_frequencies"])
        self.n_output_dims = in_channels * 2 * self.n_frequencies
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(self.n_frequencies, dtype=torch.float32), persistent=False
        )

    def forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N F"]:
        arg = x[..., None] * self.freqs  # [N, D, K]
        out = torch.stack([torch.sin(arg), torch.cos(arg)], -1)  # [N, D, K, 2]
        return out.reshape(x.shape[0], self.n_output_dims)


class SphericalHarmonics(nn.Module):
    """tcnn's ``SphericalHarmonics`` encoding of a direction given in ``[0, 1]^3``.

    The input is mapped back to ``[-1, 1]^3`` (``2x - 1``) and the real SH basis
    ``Y_l^m`` for ``l < degree`` is returned (``degree^2`` values), with the standard
    real-SH normalisation (Sloan, "Stupid Spherical Harmonics Tricks", 2008, Appendix A2).

    Config key: ``degree`` (1 to 4).
    """

    def __init__(self, in_channels: int, config: Dict[str, Any]):
        super().__init__()
        if in_channels != 3:
            raise ConfigError(f"SphericalHarmonics needs 3 input dims, got {in_channels}")
        self.degree = int(config["degree"])
        if not 1 <= self.degree <= 4:
            raise ConfigError(
                f"SphericalHarmonics degree {self.degree} is not supported by the built-in runtime (1 to 4)"
            )
        self.n_input_dims = 3
        self.n_output_dims = self.degree**2

    def forward(self, d: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        x, y, z = (d * 2.0 - 1.0).unbind(-1)
        out = [torch.full_like(x, 0.28209479177387814)]
        if self.degree > 1:
            out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
        if self.degree > 2:
            xx, yy, zz = x * x, y * y, z * z
            out += [
                1.0925484305920792 * x * y,
                -1.0925484305920792 * y * z,
                0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * x * z,
                0.54627421529603959 * (xx - yy),
            ]
        if self.degree > 3:
            out += [
                0.59004358992664352 * y * (-3.0 * xx + yy),
                2.8906114426405538 * x * y * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz),
                0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz),
                1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy),
            ]
        return torch.stack(out, -1)


class CompositeEncoding(nn.Module, Updateable):
    """An encoding, optionally with the raw input (mapped ``[0,1] -> [-1,1]``) prepended
    (``include_xyz``), as threestudio's ``CompositeEncoding``."""

    def __init__(
        self, encoding: nn.Module, include_xyz: bool = False, xyz_scale: float = 2.0, xyz_offset: float = -1.0
    ):
        super().__init__()
        self.encoding = encoding
        self.include_xyz, self.xyz_scale, self.xyz_offset = include_xyz, xyz_scale, xyz_offset
        self.n_input_dims = encoding.n_input_dims
        self.n_output_dims = int(include_xyz) * encoding.n_input_dims + encoding.n_output_dims

    def forward(self, x: Float[Tensor, "N D"], *args) -> Float[Tensor, "N F"]:
        if not self.include_xyz:
            return self.encoding(x, *args)
        return torch.cat([x * self.xyz_scale + self.xyz_offset, self.encoding(x, *args)], dim=-1)


def get_encoding(n_input_dims: int, config: Any) -> CompositeEncoding:
    """Build an encoding from a tcnn-style config block (inputs expected in ``[0, 1]``).

    Args:
        n_input_dims: input dimension.
        config: dict / DictConfig with ``otype`` and that encoding's keys.

    Returns:
        A :class:`CompositeEncoding` with ``n_input_dims`` / ``n_output_dims``.

    Raises:
        ConfigError: for an unsupported ``otype`` (naming it and the supported ones) or an
            unknown key.
    """
    config = dict(to_primitive(config))
    otype = config.get("otype")
    if otype in ("HashGrid", "Grid"):
        _check_keys(
            config,
            _HASHGRID_KEYS,
            f"{otype} encoding",
            ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution", "per_level_scale"),
        )
        encoding: nn.Module = HashGrid(n_input_dims, config)
    elif otype == "ProgressiveBandHashGrid":
        _check_keys(
            config,
            _HASHGRID_KEYS | _PROGRESSIVE_KEYS,
            "ProgressiveBandHashGrid encoding",
            (
                "n_levels",
                "n_features_per_level",
                "log2_hashmap_size",
                "base_resolution",
                "per_level_scale",
                "start_level",
                "start_step",
                "update_steps",
            ),
        )
        encoding = ProgressiveBandHashGrid(n_input_dims, config)
    elif otype == "ProgressiveBandFrequency":
        _check_keys(
            config,
            _COMMON_ENCODING_KEYS | {"n_frequencies", "n_masking_step"},
            "ProgressiveBandFrequency encoding",
            ("n_frequencies",),
        )
        encoding = ProgressiveBandFrequency(n_input_dims, config)
    elif otype == "Frequency":
        _check_keys(config, _COMMON_ENCODING_KEYS | {"n_frequencies"}, "Frequency encoding", ("n_frequencies",))
        encoding = FrequencyEncoding(n_input_dims, config)
    elif otype == "SphericalHarmonics":
        _check_keys(config, _COMMON_ENCODING_KEYS | {"degree"}, "SphericalHarmonics encoding", ("degree",))
        encoding = SphericalHarmonics(n_input_dims, config)
    else:
        raise ConfigError(
            f"Encoding otype {otype!r} is not supported by the built-in runtime. "
            f"Supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    return CompositeEncoding(encoding, include_xyz=bool(config.get("include_xyz", False)))


class VanillaMLP(nn.Module):
    """threestudio's MLP: bias-free linear layers with an activation between them.

    ``n_hidden_layers`` hidden layers of width ``n_neurons`` (so ``n_hidden_layers + 1``
    linear maps), ``activation`` between them (default ReLU), ``output_activation`` at the
    end (threestudio activation names; ``none`` by default).
    """

    def __init__(self, dim_in: int, dim_out: int, config: Dict[str, Any]):
        super().__init__()
        self.n_neurons = int(config["n_neurons"])
        self.n_hidden_layers = int(config["n_hidden_layers"])
        if self.n_hidden_layers < 1:
            raise ConfigError(f"VanillaMLP needs n_hidden_layers >= 1, got {self.n_hidden_layers}")
        act_name = config.get("activation", "ReLU")
        get_activation(act_name)  # validate the name early
        self._activation_name = act_name
        layers = [nn.Linear(dim_in, self.n_neurons, bias=False), _Activation(act_name)]
        for _ in range(self.n_hidden_layers - 1):
            layers += [nn.Linear(self.n_neurons, self.n_neurons, bias=False), _Activation(act_name)]
        layers.append(nn.Linear(self.n_neurons, dim_out, bias=False))
        self.layers = nn.Sequential(*layers)
        self.output_activation = get_activation(config.get("output_activation", None))

    def forward(self, x: Float[Tensor, "N Din"]) -> Float[Tensor, "N Dout"]:
        return self.output_activation(self.layers(x))


class _Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = get_activation(name)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def get_mlp(n_input_dims: int, n_output_dims: int, config: Any) -> nn.Module:
    """Build an MLP from a tcnn/threestudio network block.

    ``VanillaMLP``, ``FullyFusedMLP`` and ``CutlassMLP`` all give :class:`VanillaMLP`.

    Raises:
        ConfigError: for any other ``otype`` (e.g. ``SphereInitVanillaMLP``) or unknown key.
    """
    config = dict(to_primitive(config))
    otype = config.get("otype")
    if otype not in SUPPORTED_MLPS:
        raise ConfigError(
            f"Network otype {otype!r} is not supported by the built-in runtime. "
            f"Supported: {', '.join(SUPPORTED_MLPS)} (FullyFusedMLP/CutlassMLP run as VanillaMLP)"
        )
    _check_keys(config, _MLP_KEYS, f"{otype} network", ("n_neurons", "n_hidden_layers"))
    return VanillaMLP(n_input_dims, n_output_dims, config)


class NetworkWithInputEncoding(nn.Module, Updateable):
    """``network(encoding(x))``."""

    def __init__(self, encoding: nn.Module, network: nn.Module):
        super().__init__()
        self.encoding, self.network = encoding, network

    def forward(self, x: Tensor) -> Tensor:
        return self.network(self.encoding(x))


def create_network_with_input_encoding(
    n_input_dims: int, n_output_dims: int, encoding_config: Any, network_config: Any
) -> nn.Module:
    """An encoding followed by an MLP (threestudio's helper of the same name)."""
    encoding = get_encoding(n_input_dims, encoding_config)
    network = get_mlp(encoding.n_output_dims, n_output_dims, network_config)
    return NetworkWithInputEncoding(encoding, network)
