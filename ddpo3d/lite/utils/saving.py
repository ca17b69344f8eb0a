"""``SaverMixin``: image grids, image sequences to video, meshes, data files under a save dir.

threestudio 0.2.3's ``utils/saving.py`` API (``save_image_grid``, ``save_img_sequence``,
``save_rgb_image``, ``save_grayscale_image``, ``save_obj``, ``save_mesh``, ``save_data``,
``save_json`` ...) written with numpy / PIL / imageio instead of OpenCV, which this
runtime does not depend on. Images are kept in RGB order throughout.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import imageio
import numpy as np
import torch
from PIL import Image, ImageDraw

from ddpo3d.utils.typing import Any, Dict, List, Optional, Sequence, Tuple, Union


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


class SaverMixin:
    """Mixed into systems; every path is relative to ``set_save_dir``'s directory."""

    _save_dir: Optional[str] = None

    DEFAULT_RGB_KWARGS = {"data_format": "HWC", "data_range": (0, 1)}
    DEFAULT_UV_KWARGS = {"data_format": "HWC", "data_range": (0, 1), "cmap": "checkerboard"}
    DEFAULT_GRAYSCALE_KWARGS = {"data_range": None, "cmap": "jet"}
    DEFAULT_GRID_KWARGS = {"align": "max"}

    def set_save_dir(self, save_dir: str) -> None:
        self._save_dir = save_dir

    def get_save_dir(self) -> str:
        if self._save_dir is None:
            raise ValueError("Save dir is not set: call set_save_dir(path) first")
        return self._save_dir

    def get_save_path(self, filename: str) -> str:
        path = os.path.join(self.get_save_dir(), filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    # loggers: threestudio creates a wandb logger here; this runtime has none
    def create_loggers(self, cfg_loggers: Any) -> None:
        pass

    def get_loggers(self) -> List:
        return []

    @staticmethod
    def convert_data(data: Any) -> Any:
        """Tensors (any device, with grad) to numpy, recursively through lists and dicts."""
        if data is None or isinstance(data, np.ndarray):
            return data
        if isinstance(data, torch.Tensor):
            return data.detach().float().cpu().numpy() if data.is_floating_point() else data.detach().cpu().numpy()
        if isinstance(data, list):
            return [SaverMixin.convert_data(d) for d in data]
        if isinstance(data, dict):
            return {k: SaverMixin.convert_data(v) for k, v in data.items()}
        raise TypeError(f"Data must be a numpy array, tensor, list or dict, got {type(data).__name__}")

    # ---- image conversion -------------------------------------------------------------------
    def get_rgb_image_(
        self, img: Any, data_format: str, data_range: Tuple[float, float], rgba: bool = False
    ) -> np.ndarray:
        """Float image in ``data_range`` to uint8 RGB(A); extra channels tile to the right."""
        img = self.convert_data(img)
        if data_format not in ("CHW", "HWC"):
            raise ValueError(f"data_format must be 'CHW' or 'HWC', got {data_format!r}")
        if data_format == "CHW":
            img = img.transpose(1, 2, 0)
        if img.dtype != np.uint8:
            lo, hi = data_range
            img = ((np.clip(img, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
        nc = 4 if rgba else 3
        tiles = []
        for start in range(0, img.shape[-1], nc):
            tile = img[..., start : start + nc]
            if tile.shape[-1] < nc:
                pad = np.zeros((*tile.shape[:2], nc - tile.shape[-1]), dtype=tile.dtype)
                tile = np.concatenate([tile, pad], axis=-1)
            tiles.append(tile)
        return np.concatenate(tiles, axis=1)

    def get_grayscale_image_(
        self, img: Any, data_range: Optional[Tuple[float, float]], cmap: Optional[str]
    ) -> np.ndarray:
        """Scalar image to uint8 RGB, optionally through a colour map (``jet``, ``magma``, ``spectral``)."""
        img = np.nan_to_num(self.convert_data(img).astype(np.float32))
        if data_range is None:
            span = img.max() - img.min()
            img = (img - img.min()) / (span if span > 0 else 1.0)
        else:
            lo, hi = data_range
            img = (np.clip(img, lo, hi) - lo) / (hi - lo)
        if cmap is None:
            return np.repeat((img * 255.0).astype(np.uint8)[..., None], 3, axis=2)
        names = {"jet": "jet", "magma": "magma", "spectral": "Spectral"}
        if cmap not in names:
            raise ValueError(f"Unknown grayscale cmap {cmap!r}: use None, {', '.join(names)}")
        from matplotlib import colormaps

        if cmap == "magma":
            img = 1.0 - img  # threestudio shows near as bright
        rgb = colormaps[names[cmap]](img)[..., :3]
        return (rgb * 255).astype(np.uint8)

    def get_uv_image_(self, img: Any, data_format: str, data_range: Tuple[float, float], cmap: str) -> np.ndarray:
        img = self.convert_data(img)
        if data_format == "CHW":
            img = img.transpose(1, 2, 0)
        lo, hi = data_range
        img = (np.clip(img, lo, hi) - lo) / (hi - lo)
        if cmap == "checkerboard":
            cells = (img * 64).astype(int)
            mask = (cells[..., 0] + cells[..., 1]) % 2 == 0
            out = np.full((*img.shape[:2], 3), 255, dtype=np.uint8)
            out[mask] = np.array([255, 0, 255], dtype=np.uint8)
            return out
        if cmap == "color":
            out = np.zeros((*img.shape[:2], 3), dtype=np.uint8)
            out[..., 0] = (img[..., 0] * 255).astype(np.uint8)
            out[..., 1] = (img[..., 1] * 255).astype(np.uint8)
            return out
        raise ValueError(f"Unknown uv cmap {cmap!r}: use 'checkerboard' or 'color'")

    def get_image_grid_(self, imgs: List[Any], align: Any) -> np.ndarray:
        """Columns side by side (a list of lists stacks rows); each column is a dict
        ``{"type": "rgb"|"grayscale"|"uv", "img": ..., "kwargs": {...}}``."""
        if isinstance(imgs[0], list):
            return np.concatenate([self.get_image_grid_(row, align) for row in imgs], axis=0)
        cols = []
        for col in imgs:
            kind = col["type"]
            if kind == "rgb":
                kw = {**self.DEFAULT_RGB_KWARGS, **col.get("kwargs", {})}
                cols.append(self.get_rgb_image_(col["img"], **kw))
            elif kind == "grayscale":
                kw = {**self.DEFAULT_GRAYSCALE_KWARGS, **col.get("kwargs", {})}
                cols.append(self.get_grayscale_image_(col["img"], **kw))
            elif kind == "uv":
                kw = {**self.DEFAULT_UV_KWARGS, **col.get("kwargs", {})}
                cols.append(self.get_uv_image_(col["img"], **kw))
            else:
                raise ValueError(f"Unknown image grid column type {kind!r}: use rgb, grayscale or uv")
        if align == "max":
            h, w = max(c.shape[0] for c in cols), max(c.shape[1] for c in cols)
        elif align == "min":
            h, w = min(c.shape[0] for c in cols), min(c.shape[1] for c in cols)
        elif isinstance(align, int):
            h = w = align
        elif isinstance(align, (tuple, list)) and len(align) == 2:
            h, w = align
        else:
            raise ValueError(f"Unsupported image grid align {align!r}: use 'min', 'max', an int or (h, w)")
        cols = [c if c.shape[:2] == (h, w) else _resize(c, h, w) for c in cols]
        return np.concatenate(cols, axis=1)

    # ---- writers ----------------------------------------------------------------------------
    def save_image_grid(
        self,
        filename: str,
        imgs: List[Any],
        align: Any = DEFAULT_GRID_KWARGS["align"],
        name: Optional[str] = None,
        step: Optional[int] = None,
        texts: Optional[Sequence[Any]] = None,
    ) -> str:
        """Write a grid of images (see :meth:`get_image_grid_`) as PNG/JPG; returns the path."""
        path = self.get_save_path(filename)
        img = self.get_image_grid_(imgs, align=align)
        if texts is not None:
            pil = Image.fromarray(img)
            draw = ImageDraw.Draw(pil)
            row_h = pil.size[1] // len(texts)
            for i, text in enumerate(texts):
                draw.text((1, row_h * i), f"{text}", (255, 255, 255))
            img = np.asarray(pil)
        imageio.imwrite(path, img)
        return path

    def save_rgb_image(self, filename, img, data_format="HWC", data_range=(0, 1), name=None, step=None) -> str:
        path = self.get_save_path(filename)
        imageio.imwrite(path, self.get_rgb_image_(img, data_format, data_range))
        return path

    def save_grayscale_image(self, filename, img, data_range=None, cmap="jet", name=None, step=None) -> str:
        path = self.get_save_path(filename)
        imageio.imwrite(path, self.get_grayscale_image_(img, data_range, cmap))
        return path

    def save_image(self, filename: str, img: Any) -> str:
        """Write a uint8 / uint16 image as is."""
        path = self.get_save_path(filename)
        img = self.convert_data(img)
        if img.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"save_image expects uint8 or uint16 data, got {img.dtype}; use save_rgb_image for floats")
        imageio.imwrite(path, img)
        return path

    def save_img_sequence(
        self,
        filename: str,
        img_dir: str,
        matcher: str,
        save_format: str = "mp4",
        fps: int = 30,
        name: Optional[str] = None,
        step: Optional[int] = None,
    ) -> str:
        """Assemble the images in ``img_dir`` whose names match ``matcher`` (its first group
        an integer frame index) into an ``mp4`` (imageio-ffmpeg) or ``gif``.

        Returns:
            The path written.
        """
        if save_format not in ("gif", "mp4"):
            raise ValueError(f"save_format must be 'gif' or 'mp4', got {save_format!r}")
        if not filename.endswith(save_format):
            filename += f".{save_format}"
        path = self.get_save_path(filename)
        pattern = re.compile(matcher)
        folder = os.path.join(self.get_save_dir(), img_dir)
        names = sorted(
            (f for f in os.listdir(folder) if pattern.search(f)), key=lambda f: int(pattern.search(f).groups()[0])
        )
        if not names:
            raise FileNotFoundError(f"save_img_sequence: no image in {folder} matches {matcher!r}")
        frames = [np.asarray(Image.open(os.path.join(folder, f)).convert("RGB")) for f in names]
        if save_format == "mp4":
            # H.264 wants even sizes; macro_block_size=1 keeps the frames as they are
            imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
        else:
            imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
        return path

    def save_mesh(self, filename: str, v_pos: Any, t_pos_idx: Any, v_tex=None, t_tex_idx=None) -> str:
        """Write a mesh in the format its extension names (``.obj``, ``.ply`` ...) via trimesh."""
        import trimesh

        path = self.get_save_path(filename)
        trimesh.Trimesh(vertices=self.convert_data(v_pos), faces=self.convert_data(t_pos_idx), process=False).export(
            path
        )
        return path

    def save_obj(
        self,
        filename: str,
        mesh: Any,
        save_mat: bool = False,
        save_normal: bool = False,
        save_uv: bool = False,
        save_vertex_color: bool = False,
        map_Kd=None,
        map_Ks=None,
        map_Bump=None,
        map_Pm=None,
        map_Pr=None,
        map_format: str = "jpg",
    ) -> List[str]:
        """Write a Wavefront OBJ of ``mesh`` (``v_pos``, ``t_pos_idx``, optional ``v_nrm``,
        ``v_rgb``); vertex colours use the common ``v x y z r g b`` extension.

        UV atlases and textured materials need xatlas / a rasteriser, which this runtime
        does not ship: asking for them is an error.
        """
        if save_uv or save_mat or any(m is not None for m in (map_Kd, map_Ks, map_Bump, map_Pm, map_Pr)):
            raise NotImplementedError(
                "save_obj: UV unwrapping and texture maps (save_uv / save_mat / map_*) are not supported by "
                "the built-in runtime; export with mesh-exporter fmt 'obj' (vertex colours) or 'ply'"
            )
        if not filename.endswith(".obj"):
            filename += ".obj"
        v_pos = self.convert_data(mesh.v_pos)
        faces = self.convert_data(mesh.t_pos_idx)
        v_rgb = self.convert_data(mesh.v_rgb) if save_vertex_color else None
        v_nrm = self.convert_data(mesh.v_nrm) if save_normal else None
        lines = []
        for i, v in enumerate(v_pos):
            line = f"v {v[0]:.6f} {v[1]:.6f} {v[2]:.6f}"
            if v_rgb is not None:
                c = v_rgb[i]
                line += f" {c[0]:.4f} {c[1]:.4f} {c[2]:.4f}"
            lines.append(line)
        if v_nrm is not None:
            lines += [f"vn {n[0]:.6f} {n[1]:.6f} {n[2]:.6f}" for n in v_nrm]
            lines += [f"f {a + 1}//{a + 1} {b + 1}//{b + 1} {c + 1}//{c + 1}" for a, b, c in faces]
        else:
            lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
        path = self.get_save_path(filename)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return [path]

    def save_ply(self, filename: str, mesh: Any, save_vertex_color: bool = False) -> str:
        """Write a binary PLY of ``mesh`` (with per-vertex RGB when ``save_vertex_color``)."""
        import trimesh

        if not filename.endswith(".ply"):
            filename += ".ply"
        colors = None
        if save_vertex_color:
            colors = (np.clip(self.convert_data(mesh.v_rgb), 0, 1) * 255).astype(np.uint8)
        tm = trimesh.Trimesh(
            vertices=self.convert_data(mesh.v_pos),
            faces=self.convert_data(mesh.t_pos_idx),
            vertex_colors=colors,
            process=False,
        )
        path = self.get_save_path(filename)
        tm.export(path)
        return path

    def save_data(self, filename: str, data: Any) -> str:
        data = self.convert_data(data)
        if isinstance(data, dict):
            filename = filename if filename.endswith(".npz") else filename + ".npz"
            path = self.get_save_path(filename)
            np.savez(path, **data)
        else:
            filename = filename if filename.endswith(".npy") else filename + ".npy"
            path = self.get_save_path(filename)
            np.save(path, data)
        return path

    def save_state_dict(self, filename: str, data: Any) -> str:
        path = self.get_save_path(filename)
        torch.save(data, path)
        return path

    def save_file(self, filename: str, src_path: str) -> str:
        path = self.get_save_path(filename)
        shutil.copyfile(src_path, path)
        return path

    def save_json(self, filename: str, payload: Union[Dict, List]) -> str:
        path = self.get_save_path(filename)
        with open(path, "w") as f:
            json.dump(payload, f)
        return path
