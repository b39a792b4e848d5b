"""The in-memory image every part of napari-samlab passes around."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Image:
    """Pixels plus the geometry that places them in patient space.

    ``array`` has SimpleITK's axis order: (z, y, x) for a volume, (y, x) for a
    2D image and (y, x, C) for RGB or multichannel 2D images (``rgb=True`` or
    ``channels > 1``).  ``spacing``, ``origin`` and ``direction`` follow
    SimpleITK too (x, y, z order, LPS millimetres, direction as a row-major
    flattened matrix whose columns are the index axes), so
    ``SimpleITK.ReadImage(path).GetSpacing() == image.spacing``.

    Parameters
    ----------
    array : ndarray
    spacing, origin : tuple of float, one per spatial axis (x, y[, z])
    direction : tuple of float, ``ndim * ndim`` values, row-major
    channels : int
        Number of components per pixel (1 for scalar images).
    metadata : dict
        Free-form source information: ``"path"``, ``"format"``, ``"modality"``
        (``"CT"``, ``"MR"``, ...), and for DICOM ``"dicom_files"`` (sorted
        slice paths) and ``"series_uid"``.

    Examples
    --------
    >>> img = Image(np.zeros((4, 5, 6), np.int16), spacing=(0.5, 0.5, 2.0))
    >>> img.spatial_ndim, img.scale
    (3, (2.0, 0.5, 0.5))
    """

    array: np.ndarray
    spacing: tuple = None
    origin: tuple = None
    direction: tuple = None
    channels: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = self.spatial_ndim
        if self.spacing is None:
            self.spacing = (1.0,) * n
        if self.origin is None:
            self.origin = (0.0,) * n
        if self.direction is None:
            self.direction = tuple(np.eye(n).ravel())
        self.spacing = tuple(float(v) for v in self.spacing)
        self.origin = tuple(float(v) for v in self.origin)
        self.direction = tuple(float(v) for v in self.direction)
        if len(self.spacing) != n or len(self.origin) != n or len(self.direction) != n * n:
            raise ValueError(
                f"geometry does not match a {n}D image: spacing {self.spacing}, "
                f"origin {self.origin}, direction {self.direction}"
            )

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes (the channel axis of RGB images excluded)."""
        return self.array.ndim - (1 if self.channels > 1 else 0)

    @property
    def spatial_shape(self) -> tuple:
        """Array shape without the channel axis."""
        return self.array.shape[: self.spatial_ndim]

    @property
    def rgb(self) -> bool:
        return self.channels in (3, 4) and self.spatial_ndim == 2

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction cosines as an (n, n) matrix, SimpleITK (x, y, z) order."""
        n = self.spatial_ndim
        return np.asarray(self.direction, float).reshape(n, n)

    # napari works in array order (z, y, x); these reverse SimpleITK's order.
    @property
    def scale(self) -> tuple:
        """Voxel size in array order, for a napari layer's ``scale``."""
        return tuple(reversed(self.spacing))

    def napari_transform(self) -> dict:
        """``scale``, ``translate`` and ``affine`` keyword arguments for napari.

        napari maps data to world as ``affine @ (scale * x + translate)``; we
        put the direction cosines (in array order) into ``affine`` and choose
        ``translate`` so that the composition equals SimpleITK's
        ``origin + D @ diag(spacing) @ index``.  World coordinates are then
        LPS millimetres in (z, y, x) order and an oblique volume shows
        exactly where other tools put it.
        """
        n = self.spatial_ndim
        rev = np.eye(n)[::-1]
        rot = rev @ self.direction_matrix @ rev  # array-order direction cosines
        origin = np.asarray(self.origin[::-1], float)
        # rot is orthonormal for real scanner geometry; solve() also covers the rest
        translate = np.linalg.solve(rot, origin)
        affine = np.eye(n + 1)
        affine[:n, :n] = rot
        return {
            "scale": self.scale,
            "translate": tuple(float(v) for v in translate),
            "affine": affine,
        }

    def geometry(self) -> dict:
        """Spacing, origin and direction as plain lists (for layer metadata)."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    def with_array(self, array: np.ndarray, channels: int = 1, **metadata) -> "Image":
        """A new image on the same grid (e.g. a label volume for this image)."""
        meta = dict(self.metadata)
        meta.update(metadata)
        return Image(np.asarray(array), self.spacing, self.origin, self.direction, channels, meta)
