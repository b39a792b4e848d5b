"""The standard scikit-image watershed, as commonly written (the gallery's
"Watershed segmentation" example): Otsu threshold, Euclidean distance
transform, ``peak_local_max`` markers, watershed of the negated distance.
The yardstick for :func:`napari_samlab.instances.segment_everything` in
tests and benchmarks; not used by the product.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage as ndi

__all__ = ["skimage_watershed"]


def skimage_watershed(image: np.ndarray, min_distance: Optional[int] = None) -> np.ndarray:
    """Otsu + distance transform + peak_local_max + watershed.

    Parameters
    ----------
    image : ndarray
        Grey 2D or 3D image, objects bright.
    min_distance : int, optional
        ``peak_local_max``'s ``min_distance``; default the gallery's
        ``footprint=np.ones((3, 3))``.

    Examples
    --------
    >>> img = np.zeros((20, 20)); img[2:8, 2:8] = img[10:18, 10:18] = 1
    >>> int(skimage_watershed(img, min_distance=3).max())
    2
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    img = np.asarray(image, np.float32)
    if float(img.max() - img.min()) <= 0:
        return np.zeros(img.shape, np.int32)
    mask = img > threshold_otsu(img)
    dist = ndi.distance_transform_edt(mask)
    comp, _ = ndi.label(mask)
    if min_distance is None:
        coords = peak_local_max(dist, footprint=np.ones((3,) * img.ndim), labels=comp)
    else:
        coords = peak_local_max(dist, min_distance=int(min_distance), labels=comp)
    peaks = np.zeros(img.shape, bool)
    peaks[tuple(coords.T)] = True
    markers, _ = ndi.label(peaks)
    return watershed(-dist, markers, mask=mask).astype(np.int32)
