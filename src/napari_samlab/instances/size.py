"""Object size: from the user (pixels or micrometres, spacing-aware), checked, or estimated from the image.

Every parameter of the classic engine is a multiple of the object radius
(see :mod:`.classic`), so the size is the one number that matters.  The
user gives a *diameter* (what people measure on screen); internally the
radius per array axis is used, so that anisotropic volumes (thick slices)
get the right number of voxels along each axis.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi

from ..errors import SamlabError

__all__ = ["radius_per_axis", "estimate_diameter", "MIN_DIAMETER_PX"]

# below ~4 px across an object has no interior to seed from: resample instead
MIN_DIAMETER_PX = 4.0


def _spacing(spacing: Optional[Sequence[float]], ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    s = np.asarray(spacing, dtype=np.float64).ravel()
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise SamlabError(f"spacing {tuple(np.asarray(spacing).ravel().tolist())} does not fit a {ndim}D image: "
                          f"give {ndim} positive numbers in array order ({'z, y, x' if ndim == 3 else 'y, x'})")
    return s


def radius_per_axis(shape: Tuple[int, ...], diameter_px: Optional[float] = None, diameter_um: Optional[float] = None,
                    spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Object radius in pixels along each array axis, from a diameter the user gave.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape, (y, x) or (z, y, x).
    diameter_px : float, optional
        Typical object diameter in in-plane pixels.
    diameter_um : float, optional
        Typical object diameter in the units of ``spacing`` (micrometres).
    spacing : sequence of float, optional
        Pixel size per array axis (z, y, x) or (y, x); in-plane pixels are
        assumed square when it is missing, and z then counts as one pixel.

    Returns
    -------
    ndarray of float, one radius per axis

    Raises
    ------
    SamlabError
        Both or neither size given, a size that is not a positive number,
        ``diameter_um`` without spacing, or a size that is absurd for the
        image (under 4 px, or over half of its smaller in-plane side).

    Examples
    --------
    >>> radius_per_axis((100, 100), diameter_px=12).tolist()
    [6.0, 6.0]
    >>> radius_per_axis((20, 100, 100), diameter_um=8, spacing=(2.0, 0.5, 0.5)).tolist()
    [2.0, 8.0, 8.0]
    """
    nd = len(shape)
    sp = _spacing(spacing, nd)
    if (diameter_px is None) == (diameter_um is None):
        raise SamlabError("give the object size once: in pixels or in micrometres, not both")
    if diameter_um is not None:
        if spacing is None:
            raise SamlabError("an object size in micrometres needs the pixel size: the image has none, give the size in pixels")
        d = _positive(diameter_um, "µm")
        r_axes = d / 2.0 / sp
        inplane = float(np.min(r_axes[-2:]) * 2)
        what = f"{diameter_um:g} µm is {inplane:.3g} px at this pixel size ({sp[-1]:g} µm)"
    else:
        d = _positive(diameter_px, "px")
        r_axes = (d / 2.0) * sp[-1] / sp  # in-plane pixels; other axes scaled by the spacing ratio
        inplane = d
        what = f"{diameter_px:g} px"
    _check_sane(inplane, shape, what)
    return r_axes


def _positive(v, unit: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise SamlabError(f"object size {v!r} is not a number: give a diameter in {unit}") from None
    if not np.isfinite(f) or f <= 0:
        raise SamlabError(f"object size {v!r} {unit} is not a positive number: give the typical object diameter")
    return f


def _check_sane(diameter_px: float, shape, what: str) -> None:
    side = min(shape[-2:])
    if diameter_px < MIN_DIAMETER_PX:
        raise SamlabError(f"object size {what} is too small to find objects (under {MIN_DIAMETER_PX:g} px across): "
                          "check the size, or upsample the image")
    if diameter_px > side / 2.0:
        raise SamlabError(f"object size {what} is more than half the image ({shape[-1]}×{shape[-2]} px): "
                          "give the diameter of one object, not of the whole image")


def estimate_diameter(channel: np.ndarray, spacing: Optional[Sequence[float]] = None) -> Optional[float]:
    """Typical object diameter in in-plane pixels, estimated from a nucleus channel.

    The foreground of a lightly smoothed image (Otsu) is reduced to its
    distance transform; at each component's local maxima the distance is
    the radius of the largest disc that fits, which for touching round
    objects is one object's radius (not the clump's, as area-based
    estimates would give).  The median over maxima, weighted one per
    component, is robust to noise specks (tiny components are ignored) and
    to a few giant clumps.  In a volume the estimate is taken on the
    in-plane slices through the brightest few slices.

    Parameters
    ----------
    channel : ndarray
        From :func:`.channels.nucleus_channel`, 2D or 3D.
    spacing : sequence of float, optional

    Returns
    -------
    float or None
        None when there is no foreground to measure (empty image).

    Examples
    --------
    >>> from napari_samlab.instances.synthetic import synthetic_nuclei
    >>> img, _ = synthetic_nuclei((192, 192), radius=8, seed=2)
    >>> 10 < estimate_diameter(img) < 24
    True
    """
    from skimage.filters import threshold_otsu

    ch = np.asarray(channel, np.float32)
    if ch.ndim == 3:
        zs = np.argsort(ch.reshape(ch.shape[0], -1).mean(1))[::-1][: max(1, min(5, ch.shape[0] // 4 or 1))]
        vals = [estimate_diameter(ch[z]) for z in sorted(zs)]
        vals = [v for v in vals if v]
        return float(np.median(vals)) if vals else None
    # estimates run on a subsample for big images: sizes are what matters, not every object
    step = 1
    while ch.size / step ** 2 > 4_000_000:
        step += 1
    if step > 1:
        ch = ch[:2048 * step:, :2048 * step:][:2048, :2048]
    if float(ch.max() - ch.min()) < 1e-6:
        return None
    sm = ndi.gaussian_filter(ch, 1.5)
    try:
        t = threshold_otsu(sm)
    except ValueError:
        return None
    fg = ndi.binary_opening(sm > t, iterations=1)
    lab, n = ndi.label(fg)
    if n == 0:
        return None
    dt = ndi.distance_transform_edt(fg)
    peaks = (dt == ndi.maximum_filter(dt, size=5)) & (dt >= 2.0)
    if not peaks.any():
        return None
    sizes = np.bincount(lab.ravel())[1:]
    ok = sizes >= 12  # specks of a few pixels are noise, not objects
    # per component the median of its maxima (a clump of round objects has several, each ≈ one radius)
    keep = np.flatnonzero(ok) + 1
    peak_lab = np.where(peaks, lab, 0)
    has = np.bincount(peak_lab.ravel(), minlength=n + 1)[keep] > 0
    if not has.any():
        return None
    med = np.asarray(ndi.median(dt, labels=peak_lab, index=keep[has]))
    r = float(np.median(med))
    # the inscribed radius of an ellipse is its short half-axis; nuclei average ~1.25:1,
    # so the equivalent diameter is about 2 * r * sqrt(1.25)
    return 2.0 * r * 1.12
