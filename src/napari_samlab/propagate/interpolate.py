"""Model-free shape interpolation between annotated slices.

Like 3D Slicer's "Fill between slices": the user paints every few slices and
the slices in between are filled by interpolating the *shapes* (never the
intensities).  Methods:

``"sdf"`` (default)
    Linear interpolation of the signed distance maps of the two annotated
    masks, thresholded at 0 (Raya & Udupa 1990; Herman et al. 1992).
``"aligned"``
    The same after moving both shapes onto the interpolated centroid, so an
    object that shifts between the annotated slices is not pinched in the
    middle.
``"nearest"``
    Copy the nearer annotated slice (a baseline).
``"morphological"``
    ITK's MorphologicalContourInterpolator (Zukic et al. 2016), used by
    Slicer, where the installed SimpleITK provides it.

``benchmarks/eval_propagation.py`` measures them on Colin27 and lung2.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage as ndi

from ..errors import SamlabError

__all__ = ["interpolate_slices", "signed_distance", "INTERPOLATION_METHODS"]

INTERPOLATION_METHODS = ("sdf", "aligned", "nearest", "morphological")


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (pixels) to the mask boundary: negative inside.

    The boundary lies half way between an object and a background pixel,
    so thresholding at 0 gives the mask back exactly.

    Examples
    --------
    >>> m = np.zeros((1, 7), bool); m[0, 2:5] = True
    >>> signed_distance(m)[0].tolist()
    [1.5, 0.5, -0.5, -1.5, -0.5, 0.5, 1.5]
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return np.full(m.shape, np.inf)
    if m.all():
        return np.full(m.shape, -np.inf)
    inside = ndi.distance_transform_edt(m)
    outside = ndi.distance_transform_edt(~m)
    return np.where(m, 0.5 - inside, outside - 0.5)


def _sdf_pair(da, db, ma, mb, t, aligned):
    # an empty side: the other shape erodes away linearly towards it
    if not ma.any():
        da = db + (np.max(-db[np.isfinite(db)]) + 0.5)
    if not mb.any():
        db = da + (np.max(-da[np.isfinite(da)]) + 0.5)
    if aligned and ma.any() and mb.any():
        ca = np.array(ndi.center_of_mass(ma))
        cb = np.array(ndi.center_of_mass(mb))
        ct = (1 - t) * ca + t * cb
        big = float(max(da.shape)) * 2
        da = ndi.shift(np.clip(da, -big, big), ct - ca, order=1, mode="nearest")
        db = ndi.shift(np.clip(db, -big, big), ct - cb, order=1, mode="nearest")
    return (1 - t) * da + t * db < 0


def interpolate_slices(mask_volume: np.ndarray, annotated_slices: Iterable[int], method: str = "sdf") -> np.ndarray:
    """Fill the slices between annotated slices by shape interpolation.

    Parameters
    ----------
    mask_volume : ndarray (Z, Y, X)
        Bool (or label > 0) volume; only the annotated slices are read.
    annotated_slices : iterable of int
        Slices the user drew (an annotated empty slice means "no object
        here": the shape shrinks away towards it).
    method : str
        One of :data:`INTERPOLATION_METHODS`.

    Returns
    -------
    ndarray of bool (Z, Y, X)
        Annotated slices as given, the slices strictly between two annotated
        slices interpolated, slices outside the annotated range unchanged.

    Examples
    --------
    >>> vol = np.zeros((3, 9, 9), bool)
    >>> vol[0, 3:6, 3:6] = True; vol[2, 1:8, 1:8] = True   # 3x3 and 7x7 squares
    >>> out = interpolate_slices(vol, [0, 2])
    >>> [int(out[z].sum()) for z in range(3)]               # 5x5 in between
    [9, 25, 49]
    """
    vol = np.asarray(mask_volume)
    if vol.ndim != 3:
        raise SamlabError(f"slice interpolation needs a 3D mask volume (z, y, x), not shape {vol.shape}")
    if method not in INTERPOLATION_METHODS:
        raise SamlabError(f"unknown interpolation method {method!r}: use one of {', '.join(INTERPOLATION_METHODS)}")
    zs = sorted({int(z) for z in annotated_slices})
    bad = [z for z in zs if not 0 <= z < vol.shape[0]]
    if bad:
        raise SamlabError(f"annotated slice {bad[0]} is outside the volume (0..{vol.shape[0] - 1})")
    out = vol > 0
    if len(zs) < 2:
        return out
    if method == "morphological":
        return _morphological(out, zs)
    for a, b in zip(zs[:-1], zs[1:]):
        if b - a < 2:
            continue
        ma, mb = out[a].copy(), out[b].copy()
        if not ma.any() and not mb.any():
            out[a + 1:b] = False
            continue
        if method == "nearest":
            for z in range(a + 1, b):
                out[z] = ma if (z - a) <= (b - z) else mb
            continue
        da, db = signed_distance(ma), signed_distance(mb)
        for z in range(a + 1, b):
            out[z] = _sdf_pair(da, db, ma, mb, (z - a) / (b - a), method == "aligned")
    return out


def _morphological(out: np.ndarray, zs: list) -> np.ndarray:
    import SimpleITK as sitk

    if not hasattr(sitk, "MorphologicalContourInterpolator"):
        raise SamlabError("this SimpleITK has no MorphologicalContourInterpolator: use method 'sdf'")
    # the filter reads every non-empty slice as annotated: hide the others
    src = np.zeros(out.shape, np.uint8)
    for z in zs:
        src[z] = out[z]
    img = sitk.GetImageFromArray(src)
    res = sitk.GetArrayFromImage(sitk.MorphologicalContourInterpolator(img, axis=2)) > 0
    result = out.copy()
    result[zs[0]:zs[-1] + 1] = res[zs[0]:zs[-1] + 1]
    for z in zs:
        result[z] = out[z]
    return result
