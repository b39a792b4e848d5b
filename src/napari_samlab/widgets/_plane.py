"""Which 2D plane of a layer the user is looking at, and how prompts map onto it.

napari shows the two *displayed* dimensions of ``viewer.dims`` (the last two
of ``dims.order``; the first one runs down the screen, the second across).
A :class:`Plane` names those two data axes of the image layer plus the index
of every other (non-displayed) axis.  Its 2D slice is arranged as on screen
(rows = first displayed axis, columns = second), so prompt coordinates
follow SPEC.md on it: ``x`` = column, ``y`` = row.

Nothing here is an algorithm: it is bookkeeping between napari's world
coordinates and the array indices the core expects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import SamlabError


@dataclass(frozen=True)
class Plane:
    """A 2D plane of an n-D array.

    Parameters
    ----------
    axes : (int, int)
        Data axes shown as (rows, columns), e.g. ``(1, 2)`` for an axial
        slice of a (z, y, x) volume, ``(0, 2)`` for a coronal one.
    index : tuple of (axis, position)
        Integer position along every other spatial axis, sorted by axis.
    ndim : int
        Number of spatial axes of the layer (channel axis of RGB excluded).

    Examples
    --------
    >>> p = Plane((0, 2), ((1, 7),), 3)
    >>> p.extract(np.arange(24).reshape(2, 3, 4)).shape
    (2, 4)
    """

    axes: tuple
    index: tuple
    ndim: int

    @property
    def key(self) -> tuple:
        return (self.axes, self.index)

    @property
    def axes_text(self) -> str:
        """``"1,2"``: how prompts remember which orientation they were made in."""
        return ",".join(str(a) for a in self.axes)

    @property
    def name(self) -> str:
        """Human-readable description, e.g. ``"axial slice 30"``."""
        if self.ndim == 2:
            return "image"
        names = {(1, 2): "axial", (2, 1): "axial", (0, 2): "coronal", (2, 0): "coronal",
                 (0, 1): "sagittal", (1, 0): "sagittal"}
        kind = names.get(tuple(self.axes), "plane") if self.ndim == 3 else "plane"
        pos = ", ".join(str(i) for _, i in self.index)
        return f"{kind} slice {pos}"

    def slicer(self) -> tuple:
        """Index tuple selecting the plane from the spatial axes."""
        idx = dict(self.index)
        return tuple(slice(None) if a in self.axes else int(idx[a]) for a in range(self.ndim))

    @property
    def transposed(self) -> bool:
        # after indexing, the two kept axes come in increasing order
        return self.axes[0] > self.axes[1]

    def extract(self, data) -> np.ndarray:
        """The plane as (rows, cols[, C]), as shown on screen (a copy)."""
        s = np.asarray(data[self.slicer()])
        if self.transposed:
            s = np.swapaxes(s, 0, 1)
        return np.ascontiguousarray(s)

    def view(self, volume: np.ndarray) -> np.ndarray:
        """A writable view of ``volume``'s plane in screen orientation."""
        v = volume[self.slicer()]
        return v.T if self.transposed else v

    def shape2d(self, spatial_shape: Sequence[int]) -> tuple:
        return (int(spatial_shape[self.axes[0]]), int(spatial_shape[self.axes[1]]))

    def contains(self, data_point: Sequence[float]) -> bool:
        """Whether a point in data coordinates lies on this plane."""
        return all(_nearest(data_point[a]) == i for a, i in self.index)

    def to_xy(self, data_point: Sequence[float]) -> tuple:
        """(x, y) = (column, row) indices of a data-coordinate point on this plane."""
        return (float(data_point[self.axes[1]]), float(data_point[self.axes[0]]))

    @classmethod
    def of_point(cls, data_point: Sequence[float], axes: tuple, ndim: int) -> "Plane":
        """The plane with displayed ``axes`` that passes through ``data_point``."""
        index = tuple((a, _nearest(data_point[a])) for a in range(ndim) if a not in axes)
        return cls(tuple(int(a) for a in axes), index, ndim)

    def check_xy(self, spatial_shape: Sequence[int], x: float, y: float) -> None:
        """Raise :class:`SamlabError` unless pixel (x, y) lies on the plane."""
        h, w = self.shape2d(spatial_shape)
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise SamlabError(f"({x:g}, {y:g}) is outside the {w}x{h} slice: give x in 0..{w - 1} and y in 0..{h - 1}")

    def along(self, spatial_shape: Sequence[int], indices=None) -> list:
        """The planes parallel to this one at ``indices`` of its stepping axis (default: all); 2D: itself."""
        if not self.index:
            return [self]
        axis = self.index[-1][0]
        zs = range(spatial_shape[axis]) if indices is None else indices
        return [Plane(self.axes, tuple((a, int(i) if a == axis else v) for a, v in self.index), self.ndim) for i in zs]

    def data_point(self, x: float, y: float) -> np.ndarray:
        """The data coordinates of slice pixel (x, y) on this plane."""
        p = np.zeros(self.ndim)
        for a, i in self.index:
            p[a] = i
        p[self.axes[0]] = y
        p[self.axes[1]] = x
        return p


def _nearest(v: float) -> int:
    # half-up rounding: napari draws pixel i over [i - 0.5, i + 0.5)
    return int(np.floor(float(v) + 0.5))


def spatial_ndim(layer) -> int:
    """Spatial dimensions of an image layer (napari excludes an RGB axis from ndim)."""
    return int(layer.ndim)


def layer_array(layer):
    """The full-resolution array of a layer (level 0 of a multiscale pyramid)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer) -> tuple:
    shape = tuple(layer_array(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def current_plane(viewer, layer) -> Plane:
    """The plane of ``layer`` that ``viewer`` displays now.

    Raises
    ------
    SamlabError
        In 3D display, where there is no single plane to prompt on.
    """
    ndim = spatial_ndim(layer)
    if viewer.dims.ndisplay != 2:
        raise SamlabError("prompts work on a 2D view: switch napari to 2D (the square button, or Ctrl+Y) and prompt on a slice")
    offset = viewer.dims.ndim - ndim  # a layer's axes are the viewer's last ones
    axes = tuple(int(d) - offset for d in viewer.dims.displayed)
    if len(axes) != 2 or min(axes) < 0:
        raise SamlabError(f"the displayed axes {tuple(viewer.dims.displayed)} are not axes of layer {layer.name!r}: "
                          "show two of its axes (View > Axes > roll or transpose)")
    point = layer.world_to_data(np.asarray(viewer.dims.point, float))
    shape = spatial_shape(layer)
    index = []
    for a in range(ndim):
        if a in axes:
            continue
        i = min(max(_nearest(point[a]), 0), shape[a] - 1)
        index.append((a, i))
    return Plane(axes, tuple(index), ndim)


def to_image_data(prompt_layer, image_layer, coords: np.ndarray) -> np.ndarray:
    """Data coordinates of ``prompt_layer`` points in ``image_layer``'s data.

    Goes through world coordinates (``data_to_world`` then
    ``world_to_data``) so that prompts drawn on any layer line up with the
    image even when the two layers carry different transforms.
    """
    coords = np.atleast_2d(np.asarray(coords, float))
    if coords.size == 0:
        return coords.reshape(0, spatial_ndim(image_layer))
    same = (np.allclose(prompt_layer.scale, image_layer.scale) and np.allclose(prompt_layer.translate, image_layer.translate)
            and np.allclose(prompt_layer.affine.affine_matrix, image_layer.affine.affine_matrix)
            and np.allclose(prompt_layer.rotate, image_layer.rotate) and np.allclose(prompt_layer.shear, image_layer.shear)
            and prompt_layer.ndim == image_layer.ndim)
    if same:  # the common case: layers we created with the image's transforms
        return coords
    return np.stack([np.asarray(image_layer.world_to_data(prompt_layer.data_to_world(c))) for c in coords])


def box_on_plane(vertices: np.ndarray, plane: Plane, shape2d: tuple) -> Optional[tuple]:
    """``(x0, y0, x1, y1)`` pixel indices (inclusive) of a rectangle's vertices.

    napari vertices sit on pixel edges when drawn with the mouse (e.g. 9.5 to
    20.5 covers pixels 10..20) and on pixel centres when placed by
    :meth:`set_box`; rounding each side inwards handles both.
    """
    v = np.asarray(vertices, float)
    rows, cols = v[:, plane.axes[0]], v[:, plane.axes[1]]
    x0 = int(np.floor(cols.min() + 0.5))
    x1 = int(np.ceil(cols.max() - 0.5))
    y0 = int(np.floor(rows.min() + 0.5))
    y1 = int(np.ceil(rows.max() - 0.5))
    h, w = shape2d
    if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
        return None
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(max(x1, x0), w - 1), min(max(y1, y0), h - 1)
    return (x0, y0, x1, y1)


def displayed_order_for(view: str, ndim: int, viewer_ndim: int) -> tuple:
    """``viewer.dims.order`` that shows the axial, coronal or sagittal plane.

    For a (z, y, x) volume: axial shows (y, x), coronal (z, x), sagittal (z, y).
    """
    if ndim < 3:
        raise SamlabError("the image is 2D: there is only one plane to show")
    offset = viewer_ndim - ndim
    z, y, x = (offset + ndim - 3, offset + ndim - 2, offset + ndim - 1)
    rest = list(range(offset + ndim - 3))
    orders = {"axial": (z, y, x), "coronal": (y, z, x), "sagittal": (x, z, y)}
    try:
        last3 = orders[view.lower()]
    except KeyError:
        raise SamlabError(f"unknown view {view!r}: use axial, coronal or sagittal") from None
    return tuple(rest + list(last3))
