"""Which plane and slice of the bound image the viewer shows: the view buttons and slice steps.

Several images of different sizes can share a viewer: every function here
works in the bound layer's own data coordinates, so switching to coronal
lands on a slice of *that* image, and a 2D image shown after a volume's
coronal view gets its own two axes back.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import SamlabError
from ._plane import current_plane, displayed_order_for, spatial_shape


def show_view(viewer, layer, view: str) -> None:
    """Show the ``"axial"``, ``"coronal"`` or ``"sagittal"`` plane of ``layer``, on one of its slices."""
    viewer.dims.ndisplay = 2
    viewer.dims.order = displayed_order_for(view, layer.ndim, viewer.dims.ndim)
    land_inside(viewer, layer)


def go_to_slice(viewer, layer, index: int, axis: Optional[int] = None) -> None:
    """Go to slice ``index`` along data ``axis`` of ``layer`` (default: the axis the view steps through)."""
    plane = current_plane(viewer, layer)
    if not plane.index:
        raise SamlabError("the image is 2D: there are no slices to go to")
    if axis is None:
        axis = plane.index[-1][0]
    shape = spatial_shape(layer)
    if not 0 <= int(index) < shape[axis]:
        raise SamlabError(f"slice {index} is outside the image: choose 0..{shape[axis] - 1}")
    offset = viewer.dims.ndim - layer.ndim
    data_pt = np.asarray(layer.world_to_data(np.asarray(viewer.dims.point, float)), float)
    data_pt[axis] = int(index)
    world = np.asarray(layer.data_to_world(data_pt), float)
    viewer.dims.set_point(offset + axis, float(world[axis]))


def step_slice(viewer, layer, step: int = 1) -> None:
    """Move ``step`` slices along the axis that is not displayed (stops at the ends)."""
    plane = current_plane(viewer, layer)
    if not plane.index:
        return
    axis, idx = plane.index[-1]
    n = spatial_shape(layer)[axis]
    go_to_slice(viewer, layer, min(max(idx + step, 0), n - 1), axis)


def fit_view(viewer, layer) -> None:
    """Show two axes of ``layer`` (e.g. a 2D image after a volume's coronal view), on a slice inside it."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        return
    offset = dims.ndim - layer.ndim
    if any(d < offset for d in dims.displayed):
        dims.order = tuple(range(dims.ndim))
    land_inside(viewer, layer)


def land_inside(viewer, layer) -> None:
    """If the displayed slice lies outside ``layer`` (another layer's extent), go to its middle slice."""
    try:
        plane = current_plane(viewer, layer)
    except SamlabError:
        return
    pt = np.asarray(layer.world_to_data(np.asarray(viewer.dims.point, float)), float)
    shape = spatial_shape(layer)
    for axis, _ in plane.index:
        if not -0.5 <= pt[axis] < shape[axis] - 0.5:
            go_to_slice(viewer, layer, shape[axis] // 2, axis)
