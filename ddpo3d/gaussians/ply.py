"""Standard 3D Gaussian Splatting PLY files (the format of Kerbl et al.'s reference code,
read by common splat viewers: SuperSplat, antimatter15/splat, gsplat's viewer, ...).

One binary little-endian ``vertex`` element with float32 properties, in this order::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3(K-1)-1)  opacity  scale_0..2  rot_0..3

``f_dc`` is the degree-0 SH coefficient per RGB channel; ``f_rest`` holds the higher
coefficients channel-major (all R coefficients, then G, then B: 3DGS stores
``features_rest.transpose(1, 2).flatten(1)``); ``opacity`` is the pre-sigmoid logit;
``scale_*`` are log standard deviations; ``rot_*`` the quaternion ``(w, x, y, z)``;
normals are written as zeros. Written with numpy only (no ``plyfile`` dependency).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ddpo3d.gaussians.sh import sh_degree_from_bases
from ddpo3d.utils.typing import Dict, Float, Tensor

_NUMPY_TYPES = {
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
    "uchar": "u1",
    "uint8": "u1",
    "char": "i1",
    "int8": "i1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
}


def ply_property_names(num_rest: int) -> list:
    """Vertex property names of a 3DGS PLY with ``num_rest`` higher-order coefficients
    per channel (``(degree+1)^2 - 1``)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def save_gaussians_ply(
    path: str,
    means: Float[Tensor, "N 3"],
    sh0: Float[Tensor, "N 1 3"],
    shN: Float[Tensor, "N R 3"],
    opacity_logits: Float[Tensor, " N"],
    log_scales: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
) -> str:
    """Write Gaussians as a standard 3DGS PLY.

    Args:
        path: output file (parent folders are created).
        means: centres.
        sh0: degree-0 SH coefficients (``[N, 3]`` is accepted too).
        shN: higher SH coefficients, ``R = (degree+1)^2 - 1`` (may be ``R = 0``).
        opacity_logits: opacities before the sigmoid (``[N, 1]`` accepted).
        log_scales: log standard deviations.
        quats: rotations ``(w, x, y, z)``.

    Returns:
        ``path``.
    """

    def np32(t: Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy()

    N = means.shape[0]
    sh0 = sh0.reshape(N, 3)
    shN = shN.reshape(N, -1, 3)
    R = shN.shape[1]
    sh_degree_from_bases(R + 1)  # validates the coefficient count
    cols = [
        np32(means),
        np.zeros((N, 3), np.float32),
        np32(sh0),
        np32(shN.transpose(1, 2).reshape(N, 3 * R)),
        np32(opacity_logits.reshape(N, 1)),
        np32(log_scales),
        np32(quats),
    ]
    data = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype="<f4")
    names = ply_property_names(R)
    assert data.shape[1] == len(names)
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {N}\n"
    header += "".join(f"property float {n}\n" for n in names)
    header += "end_header\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(data.tobytes())
    return path


def read_ply_vertices(path: str) -> Dict[str, np.ndarray]:
    """Read the ``vertex`` element of a binary little-endian PLY into ``{property: array}``.

    Raises:
        ValueError: naming the file and what is unsupported (ASCII / big-endian format,
            list properties, truncated data).
    """
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file (missing 'ply' magic line)")
        fmt = None
        elements = []  # (name, count, [(prop, dtype)])
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no 'end_header'")
            tokens = line.decode("ascii", errors="replace").split()
            if not tokens or tokens[0] in ("comment", "obj_info"):
                continue
            if tokens[0] == "end_header":
                break
            if tokens[0] == "format":
                fmt = tokens[1]
            elif tokens[0] == "element":
                elements.append((tokens[1], int(tokens[2]), []))
            elif tokens[0] == "property":
                if tokens[1] == "list":
                    raise ValueError(f"{path}: list property {tokens[-1]!r} is not supported in a Gaussian PLY")
                if tokens[1] not in _NUMPY_TYPES:
                    raise ValueError(f"{path}: unknown PLY property type {tokens[1]!r}")
                elements[-1][2].append((tokens[2], "<" + _NUMPY_TYPES[tokens[1]]))
        if fmt != "binary_little_endian":
            raise ValueError(f"{path}: PLY format {fmt!r} is not supported (need binary_little_endian)")
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: first PLY element must be 'vertex'")
        name, count, props = elements[0]
        dtype = np.dtype(props)
        raw = fh.read(dtype.itemsize * count)
        if len(raw) != dtype.itemsize * count:
            raise ValueError(f"{path}: truncated vertex data ({len(raw)} of {dtype.itemsize * count} bytes)")
        arr = np.frombuffer(raw, dtype=dtype, count=count)
    return {p: np.asarray(arr[p]) for p, _ in props}


def load_gaussians_ply(path: str) -> Dict[str, Tensor]:
    """Read a 3DGS PLY written by us or by the reference code.

    Returns:
        float32 tensors ``means [N,3]``, ``sh0 [N,1,3]``, ``shN [N,R,3]``,
        ``opacity_logits [N]``, ``log_scales [N,3]``, ``quats [N,4]`` and the int ``sh_degree``.
    """
    v = read_ply_vertices(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)]
    required += [f"rot_{i}" for i in range(4)]
    missing = [k for k in required if k not in v]
    if missing:
        raise ValueError(f"{path}: not a 3DGS PLY, missing vertex properties {missing}")
    n_rest = len([k for k in v if k.startswith("f_rest_")])
    if n_rest % 3 != 0:
        raise ValueError(f"{path}: {n_rest} f_rest_* properties is not a multiple of 3")
    R = n_rest // 3
    degree = sh_degree_from_bases(R + 1)

    def t(keys):
        return torch.from_numpy(np.stack([v[k].astype(np.float32) for k in keys], axis=1))

    N = len(v["x"])
    rest = t([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(N, 0)
    return {
        "means": t(["x", "y", "z"]),
        "sh0": t(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(N, 1, 3),
        "shN": rest.reshape(N, 3, R).transpose(1, 2).contiguous(),
        "opacity_logits": t(["opacity"]).reshape(N),
        "log_scales": t([f"scale_{i}" for i in range(3)]),
        "quats": t([f"rot_{i}" for i in range(4)]),
        "sh_degree": degree,
    }
