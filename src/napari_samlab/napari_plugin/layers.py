"""Translation between :class:`Image` and napari layer data tuples."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..io.image import Image
from ..io.readers import looks_like_labels


def image_layer_data(image: Image, name: Optional[str] = None, as_labels: Optional[bool] = None) -> tuple:
    """``(data, kwargs, layer_type)`` that shows ``image`` in millimetres.

    Geometry travels in ``metadata["samlab"]`` too, so writers and widgets
    can rebuild the exact SimpleITK geometry without inverting the affine.
    """
    if as_labels is None:
        as_labels = looks_like_labels(image)
    name = name or image.metadata.get("name") or "image"
    meta = {k: v for k, v in image.metadata.items() if k != "dicom_datasets"}
    meta.update(image.geometry())
    meta["channels"] = image.channels
    kwargs = {"name": name, "metadata": {"samlab": meta}}
    time_axis = bool(image.metadata.get("time_axis"))
    spatial = Image(image.array[0] if time_axis else image.array, image.spacing, image.origin,
                    image.direction, image.channels)
    transform = spatial.napari_transform()
    if time_axis:  # leading time axis: unit scale, no rotation
        n = spatial.spatial_ndim
        affine = np.eye(n + 2)
        affine[1:, 1:] = transform["affine"]
        transform = {"scale": (1.0, *transform["scale"]), "translate": (0.0, *transform["translate"]),
                     "affine": affine}
    kwargs.update(transform)
    if as_labels:
        segments = image.metadata.get("segments")
        if segments:  # names and colours saved with the file (.seg.nrrd fields or a label file)
            kwargs["features"] = {"label": [s["label"] for s in segments], "name": [s["name"] for s in segments]}
            kwargs["colormap"] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0),
                                  **{s["label"]: (*s["color"], 1.0) for s in segments}}
        return image.array.astype(np.int32, copy=False) if image.array.dtype.kind == "u" and image.array.dtype.itemsize >= 4 else image.array, kwargs, "labels"
    if image.channels > 1:
        if image.rgb:
            kwargs["rgb"] = True
        else:  # multichannel microscopy: one layer per channel
            kwargs["channel_axis"] = image.array.ndim - 1
            kwargs.pop("metadata")
            kwargs["metadata"] = {"samlab": meta}
    else:
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = _display_limits(image)
    return image.array, kwargs, "image"


def _display_limits(image: Image):
    """Start with what the default engine sees (the "auto" window)."""
    from ..base.windowing import default_auto_window

    a = image.array
    win = default_auto_window(a, modality=image.metadata.get("modality"))
    if win is None:
        lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
    else:
        lo, hi = win.lo, win.hi
    if hi <= lo:
        hi = lo + 1.0
    return [lo, hi]


def image_from_layer(data, meta: dict) -> Image:
    """An :class:`Image` on the grid of a napari layer (for writing labels).

    Uses ``metadata["samlab"]`` when our reader or widgets made the layer,
    else inverts the layer's scale/translate/affine.
    """
    data = np.asarray(data)
    geo = (meta.get("metadata") or {}).get("samlab") or {}
    if geo.get("spacing") and len(geo["spacing"]) == data.ndim:
        extra = {k: v for k, v in geo.items() if k not in ("spacing", "origin", "direction")}
        return Image(data, geo["spacing"], geo["origin"], geo["direction"], 1, extra)
    n = data.ndim
    scale = np.asarray(meta.get("scale", np.ones(n)), float)
    translate = np.asarray(meta.get("translate", np.zeros(n)), float)
    affine = np.asarray(meta.get("affine", np.eye(n + 1)), float)
    rot = affine[:n, :n]
    # world = rot @ (scale * i + translate) + affine_t ; undo the array-order reversal
    origin_arr = rot @ translate + affine[:n, n]
    # columns of rot may carry scale from a non-orthonormal affine; split it out
    col_norm = np.linalg.norm(rot, axis=0)
    col_norm[col_norm == 0] = 1
    rot_n = rot / col_norm
    spacing_arr = scale * col_norm
    rev = np.eye(n)[::-1]
    direction = rev @ rot_n @ rev
    return Image(data, tuple(spacing_arr[::-1]), tuple(origin_arr[::-1]), tuple(direction.ravel()), 1, {})
