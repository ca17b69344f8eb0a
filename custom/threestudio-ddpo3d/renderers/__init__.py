"""Renderers of the extension (importing them registers them with the host)."""

from . import gaussian_splat_renderer  # noqa: F401
