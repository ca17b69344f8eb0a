"""Geometry classes of the extension (importing them registers them with the host)."""

from . import gaussian_splat  # noqa: F401
