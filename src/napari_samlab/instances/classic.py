"""The weight-free instance engine: foreground, seeds, watershed, clean-up, all scaled by object size.

Steps (2D and true 3D alike; every length is a multiple of the object
radius ``r`` along each axis, so thick slices and downsampled images get
consistent parameters):

1. **Denoise**: Gaussian, sigma = ``SMOOTH`` · r (clamped to >= 0.7 px),
   enough to merge shot noise and nuclear texture but far below the gap
   between neighbours.
2. **Background / bias**: a grey opening with a box about ``BACKGROUND`` · r
   wide (larger than any nucleus, so nuclei are removed from it) estimates
   the slowly varying background, computed on a downsampled copy (its
   scale is large, so nothing is lost) and subtracted: a top-hat that
   removes uneven illumination and autofluorescence.
3. **Foreground**: the top-hat above ``NOISE_K`` robust noise deviations
   of the background (never above Otsu, which alone loses dim nuclei next
   to bright ones); holes filled, specks under the minimum size removed.
4. **Seeds**: one per object from a marker function that mixes shape and
   intensity: the distance transform (physical units, in radii, capped at
   ``CAP`` so that long nuclei do not grow several maxima) plus
   ``INTENSITY_WEIGHT`` times the scaled top-hat.  Its h-maxima with
   h = ``H`` (in radii) mark objects: two touching nuclei leave two maxima
   with a saddle between them, an intensity dip between them deepens it.
5. **Watershed** of the inverted marker function inside the foreground,
   which splits touching objects along the valley between them.
   Each object's border is then put at ``EDGE`` of the way from the
   background to its own peak (half-maximum-like, whatever its brightness).
6. **Clean-up**: objects under ``min_size`` (default ``MIN_AREA`` · the
   typical object area) are removed, labels are made consecutive.

The constants were chosen on a family of cases rather than on one image:
the public nuclei image and its versions with added noise, blur, a bias
field and 2× downsampling; synthetic nuclei with exact truth (sparse,
crowded/touching, anisotropic 3D volumes); the H&E sample; and
``skimage.data.cell`` / ``immunohistochemistry``.  The sweep and the F1 per
case are in docs/everything.md: the chosen values are the best *mean* over
all cases, and no case is best with values far from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ClassicSettings", "classic_instances", "prepare", "instances_in", "finish", "Prepared"]


@dataclass(frozen=True)
class ClassicSettings:
    """Multipliers of the object radius (see the module notes)."""

    smooth: float = 0.15
    background: float = 4.0
    noise_k: float = 6.0
    edge: float = 0.45
    h: float = 0.05
    min_area: float = 0.15
    intensity_weight: float = 0.5
    cap: float = 2.0


def _sigma(radius: np.ndarray, k: float) -> np.ndarray:
    return np.maximum(radius * k, 0.7)


def _background(img: np.ndarray, radius: np.ndarray, k: float) -> np.ndarray:
    """Grey opening with a box ~k·r wide, on a copy downsampled by ~r/3 (cheap, same scale)."""
    factor = np.maximum(1, np.floor(radius / 3.0)).astype(int)
    small = img[tuple(slice(None, None, f) for f in factor)]
    size = np.maximum(3, np.round(k * radius / factor).astype(int) | 1)
    opened = ndi.grey_opening(small, size=tuple(size))
    # smooth the blocky opening so its steps do not print into the foreground
    opened = ndi.uniform_filter(opened, size=tuple(size))
    if tuple(factor) == (1,) * img.ndim:
        return opened
    zoom = [s / o for s, o in zip(img.shape, opened.shape)]
    up = ndi.zoom(opened, zoom, order=1, mode="nearest", grid_mode=True)
    return up[tuple(slice(0, s) for s in img.shape)]


def _otsu(x: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    sample = x.ravel()[:: max(1, x.size // 2_000_000)]
    return float(threshold_otsu(sample))


def foreground_threshold(tophat: np.ndarray, noise_k: float) -> float:
    """Threshold of the top-hat: ``noise_k`` noise deviations above the background, never above Otsu.

    Otsu alone splits bright from everything else and loses dim nuclei
    when a few bright ones dominate the histogram; a noise-based threshold
    keeps every object that stands clear of the noise.  The noise is the
    robust spread (MAD) of the pixels below Otsu (background).  A floor at
    a quarter of the way to Otsu keeps blur halos out when the image is
    almost noise-free.
    """
    t_otsu = _otsu(tophat)
    sample = tophat.ravel()[:: max(1, tophat.size // 2_000_000)]
    bg = sample[sample < t_otsu]
    if bg.size < 16:
        return t_otsu
    med = float(np.median(bg))
    sigma = 1.4826 * float(np.median(np.abs(bg - med)))
    return float(np.clip(med + noise_k * sigma, med + 0.25 * (t_otsu - med), t_otsu))


def _refine_edges(labels: np.ndarray, tophat: np.ndarray, floor: float, edge: float) -> np.ndarray:
    """Per object, drop pixels below ``edge`` of the way from the background to its own peak.

    A global threshold puts the border of a bright nucleus too far out (its
    blur halo) and of a dim one too far in; the border at a fixed fraction
    of each object's own contrast (half-maximum-like) is where annotators
    draw it, whatever the object's brightness or the local illumination.
    """
    if edge <= 0 or labels.max() == 0:
        return labels
    n = int(labels.max())
    peak = np.asarray(ndi.maximum(tophat, labels, index=np.arange(1, n + 1)), np.float32)
    cut = np.concatenate([[np.inf], floor + edge * (peak - floor)]).astype(np.float32)
    out = np.where(tophat >= cut[labels], labels, 0)
    return out


def _fill_holes_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        out[z] = ndi.binary_fill_holes(mask[z])
    return out


@dataclass(frozen=True)
class Prepared:
    """Whole-image quantities every tile must share (so that tiled == untiled)."""

    tophat: np.ndarray
    threshold: float
    floor: float
    low: float
    high: float
    min_px: float
    radius: np.ndarray
    spacing: np.ndarray


def prepare(channel: np.ndarray, radius: np.ndarray, spacing: Optional[np.ndarray] = None,
            min_size: Optional[float] = None, settings: ClassicSettings = ClassicSettings()) -> Prepared:
    """Denoise, remove the background and fix the global thresholds of a nucleus channel.

    Parameters
    ----------
    channel, radius, spacing, min_size, settings
        As :func:`classic_instances`.

    Returns
    -------
    Prepared

    Examples
    --------
    >>> p = prepare(np.random.default_rng(0).random((64, 64)), np.array([5.0, 5.0]))
    >>> p.tophat.shape
    (64, 64)
    """
    radius = np.asarray(radius, dtype=np.float64)
    spacing = radius.max() / radius if spacing is None else np.asarray(spacing, dtype=np.float64)
    smooth = ndi.gaussian_filter(channel.astype(np.float32), _sigma(radius, settings.smooth))
    tophat = smooth - _background(smooth, radius, settings.background)
    del smooth
    unit = float(np.pi * np.prod(radius)) if channel.ndim == 2 else float(4.0 / 3.0 * np.pi * np.prod(radius))
    min_px = settings.min_area * unit if min_size is None else float(min_size)
    if float(tophat.max() - tophat.min()) <= 1e-6:
        return Prepared(tophat, np.inf, 0.0, 0.0, 1.0, min_px, radius, spacing)
    t = foreground_threshold(tophat, settings.noise_k)
    sample = tophat.ravel()[:: max(1, tophat.size // 2_000_000)]
    bg, fg = sample[sample <= t], sample[sample > t]
    floor = float(np.median(bg)) if bg.size else 0.0
    low, high = (np.percentile(fg, [2, 98]) if fg.size > 50 else (t, float(sample.max())))
    return Prepared(tophat, float(t), floor, float(low), float(max(high, low + 1e-6)), min_px, radius, spacing)


def instances_in(p: Prepared, region=None, settings: ClassicSettings = ClassicSettings()) -> np.ndarray:
    """Seeded-watershed labels of one region (a tile, or everything) of a prepared image.

    Labels are 1..K within the region, not consecutive across regions;
    objects under the minimum size are already removed.

    Examples
    --------
    >>> p = prepare(np.zeros((32, 32)), np.array([4.0, 4.0]))
    >>> int(instances_in(p).max())
    0
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    tophat = p.tophat if region is None else p.tophat[region]
    mask = tophat > p.threshold
    mask = ndi.binary_fill_holes(mask) if tophat.ndim == 2 else _fill_holes_slices(mask)
    mask = _remove_small(mask, p.min_px)
    if not mask.any():
        return np.zeros(tophat.shape, np.int32)
    r_phys = float(p.radius[-1] * p.spacing[-1])
    dist = np.minimum(ndi.distance_transform_edt(mask, sampling=p.spacing) / r_phys, settings.cap)
    inten = np.clip((tophat - p.low) / (p.high - p.low), 0, 1)
    marker = ndi.gaussian_filter((dist + settings.intensity_weight * inten).astype(np.float32), _sigma(p.radius, 0.2))
    marker[~mask] = 0
    # h-maxima need integers for a stable plateau test: quantise to 1/256 of a radius
    q = np.round(marker * 256).astype(np.int32)
    seeds = h_maxima(q, max(1, int(round(settings.h * 256)))) & mask
    markers, _ = ndi.label(seeds)
    labels = watershed(-marker, markers, mask=mask)
    labels = _refine_edges(labels, tophat, p.floor, settings.edge)
    return _remove_small_labels(labels, p.min_px).astype(np.int32)


def classic_instances(channel: np.ndarray, radius: np.ndarray, spacing: Optional[np.ndarray] = None,
                      min_size: Optional[float] = None, settings: ClassicSettings = ClassicSettings()):
    """Instance labels of a nucleus channel (2D or 3D) by seeded watershed.

    Parameters
    ----------
    channel : ndarray of float
        (y, x) or (z, y, x), objects bright (see :func:`.channels.nucleus_channel`).
    radius : ndarray of float
        Object radius in pixels along each axis (:func:`.size.radius_per_axis`).
    spacing : ndarray of float, optional
        Physical pixel size per axis (for the distance transform); default
        derived from ``radius`` (isotropic in physical units).
    min_size : float, optional
        Smallest object kept, in pixels (voxels); default
        ``settings.min_area`` times the typical object's area (volume).
    settings : ClassicSettings

    Returns
    -------
    labels : ndarray of int32
        0 background, 1..N.
    scores : ndarray of float
        Per object (index label-1): its mean top-hat contrast relative to
        the foreground threshold, clipped to [0, 1] (a confidence).

    Examples
    --------
    >>> from napari_samlab.instances.synthetic import synthetic_nuclei
    >>> img, truth = synthetic_nuclei((128, 128), radius=8, seed=3)
    >>> lab, _ = classic_instances(img, np.array([8.0, 8.0]))
    >>> from napari_samlab.instances.metrics import match_instances
    >>> match_instances(truth, lab).f1 > 0.6
    True
    """
    p = prepare(channel, radius, spacing, min_size, settings)
    return finish(instances_in(p, None, settings), p)


def finish(labels: np.ndarray, p: Prepared):
    """Consecutive labels 1..N and per-object scores (see :func:`classic_instances`)."""
    return _finish(labels, p.tophat, p.threshold if np.isfinite(p.threshold) else 0.0)


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _remove_small_labels(labels: np.ndarray, min_px: float) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def _finish(labels: np.ndarray, tophat: np.ndarray, threshold: float):
    """Consecutive labels 1..N and a per-object confidence."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    out = lut[labels]
    if len(ids) == 0:
        return out, np.zeros(0)
    means = np.asarray(ndi.mean(tophat, out, index=np.arange(1, len(ids) + 1)))
    t = threshold if threshold > 0 else 1e-6
    scores = np.clip((means - t) / (2.0 * t), 0.0, 1.0)
    return out, scores
