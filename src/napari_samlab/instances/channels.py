"""Turn any microscopy/histology image into one "nucleus channel": objects bright, range about [0, 1].

* H&E and other brightfield stains (RGB on a bright background): colour
  deconvolution (Ruifrok & Johnston, ``skimage.color.rgb2hed``) and the
  haematoxylin channel, which stains nuclei; eosin (cytoplasm, stroma) drops
  out.  IHC (haematoxylin + DAB, e.g. ``skimage.data.immunohistochemistry``)
  is handled the same way: the counterstained nuclei are the target.
* RGB on a dark background (fluorescence saved as RGB): the brightest
  channel per pixel, so that a nucleus in any colour counts.
* Grey images: fluorescence (bright objects) unless the histogram says
  otherwise: brightfield grey images have most pixels bright and a long
  dark tail (negative skew), and are inverted.

Scaling is by robust percentiles (1 and 99.8) so that a few saturated
pixels or hot spots do not compress the rest.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import SamlabError

__all__ = ["nucleus_channel", "is_rgb"]

# percentiles for robust scaling: 99.8 keeps the brightest nuclei below 1
# while ignoring the odd saturated speck (chosen on the nuclei sample, its
# noisy/blurred variants and the H&E sample alike)
_LOW, _HIGH = 1.0, 99.8


def is_rgb(array: np.ndarray, rgb: Optional[bool] = None) -> bool:
    """Whether the last axis of ``array`` is colour (3 or 4 channels of a 2D image).

    Examples
    --------
    >>> is_rgb(np.zeros((10, 10, 3), np.uint8)), is_rgb(np.zeros((3, 10, 10)))
    (True, False)
    """
    if rgb is not None:
        return bool(rgb)
    return array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4 and array.shape[1] > 4


def _robust_unit(x: np.ndarray) -> np.ndarray:
    sample = x[:: max(1, x.shape[0] // 512)] if x.size > 4_000_000 else x
    lo, hi = np.percentile(sample, [_LOW, _HIGH])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = float(np.min(sample)), float(np.max(sample))
    if hi - lo <= 0:
        return np.zeros(x.shape, np.float32)
    out = (x.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.5, out=out)


def _skew(x: np.ndarray) -> float:
    s = x.ravel()[:: max(1, x.size // 1_000_000)].astype(np.float64)
    sd = s.std()
    return float(((s - s.mean()) ** 3).mean() / sd ** 3) if sd > 0 else 0.0


def nucleus_channel(array: np.ndarray, rgb: Optional[bool] = None, stain: str = "auto") -> np.ndarray:
    """The channel in which nuclei are bright, scaled to about [0, 1].

    Parameters
    ----------
    array : ndarray
        (y, x), (z, y, x) or (y, x, 3|4).
    rgb : bool, optional
        Force the last axis to be (or not be) colour; default: guessed by
        :func:`is_rgb`.
    stain : {"auto", "he", "fluorescence", "dark"}
        ``"he"``: brightfield haematoxylin (colour deconvolution for RGB,
        inversion for grey); ``"fluorescence"``: bright objects;
        ``"dark"``: dark objects on a bright background (grey); ``"auto"``
        decides from the image (see the module notes).

    Returns
    -------
    ndarray of float32, the spatial shape of ``array``

    Examples
    --------
    >>> from skimage import data
    >>> nucleus_channel(data.immunohistochemistry()).shape
    (512, 512)
    """
    if stain not in ("auto", "he", "fluorescence", "dark"):
        raise SamlabError(f"unknown stain {stain!r}: use auto, he, fluorescence or dark")
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.number)):
        raise SamlabError(f"cannot segment an image of type {a.dtype}: give numbers")
    if is_rgb(a, rgb):
        return _colour(a[..., :3], stain)
    if not np.all(np.isfinite(a)) and np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a, nan=float(np.nanmin(a)) if np.isfinite(a).any() else 0.0)
    grey = _robust_unit(a)
    if stain in ("he", "dark") or (stain == "auto" and _skew(grey) < -0.5):
        grey = np.clip(1.0 - grey, 0.0, 1.0)
    return grey


def _colour(rgb: np.ndarray, stain: str) -> np.ndarray:
    from skimage.color import rgb2gray

    f = rgb.astype(np.float32)
    if np.issubdtype(rgb.dtype, np.integer):
        f /= float(np.iinfo(rgb.dtype).max) if rgb.max() > 1 else 1.0
    elif f.max() > 1.0:
        f /= f.max()
    lum = rgb2gray(f)
    brightfield = stain == "he" or (stain == "auto" and float(np.median(lum)) > 0.45)
    if stain == "fluorescence" or not brightfield:
        return _robust_unit(f.max(axis=-1))
    # haematoxylin optical density; rgb2hed works row by row memory-wise via float32 here
    hema = _hematoxylin(f)
    return _robust_unit(hema)


def _hematoxylin(f: np.ndarray) -> np.ndarray:
    """Haematoxylin concentration of float RGB in [0, 1], in bands of rows (bounded memory on 4096² tiles)."""
    from skimage.color import rgb2hed

    out = np.empty(f.shape[:2], np.float32)
    step = max(1, 2_000_000 // max(1, f.shape[1]))
    for y in range(0, f.shape[0], step):
        out[y:y + step] = rgb2hed(f[y:y + step])[..., 0]
    return out
