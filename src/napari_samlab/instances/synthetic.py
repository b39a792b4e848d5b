"""Synthetic nuclei images with known instances (2D and 3D), for tests and benchmarks.

Ellipsoidal nuclei of random size, orientation and brightness, packed so
that some touch (as in real cultures), with internal texture, optical blur,
an optional multiplicative bias field and Poisson-like plus Gaussian
noise.  Deterministic for a given seed.  Nothing here is used by the
segmentation itself: it only supplies cases whose truth is exact.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage as ndi

__all__ = ["synthetic_nuclei"]


def synthetic_nuclei(shape: Tuple[int, ...] = (256, 256), radius: float = 9.0, density: float = 0.35,
                     touching: float = 0.25, noise: float = 0.06, blur: float = 1.0, bias: float = 0.0,
                     anisotropy: float = 1.0, seed: int = 0):
    """Draw a fluorescence-like image of nuclei and its instance labels.

    Parameters
    ----------
    shape : tuple of int
        (y, x) or (z, y, x).
    radius : float
        Median nucleus radius in pixels (in-plane); sizes vary by ±30 %.
    density : float
        Fraction of the area (volume) the nuclei should cover.
    touching : float
        Allowed overlap of neighbouring nuclei's bounding spheres as a
        fraction of the radius (0 = never touch; 0.3 = clearly touching).
    noise : float
        Standard deviation of the additive noise relative to the mean
        nucleus brightness.
    blur : float
        Gaussian blur sigma in pixels (the microscope's point spread).
    bias : float
        Strength of a smooth multiplicative illumination field (0 = flat;
        0.5 = brightness varies by a factor of about 3 across the image).
    anisotropy : float
        z spacing / xy spacing for volumes: nuclei are ``radius /
        anisotropy`` slices thick.
    seed : int

    Returns
    -------
    image : ndarray of float32
    labels : ndarray of int32
        0 background, 1..N one value per nucleus (as drawn, before blur).

    Examples
    --------
    >>> img, lab = synthetic_nuclei((64, 64), radius=6, seed=1)
    >>> img.shape, int(lab.max()) > 3
    ((64, 64), True)
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    scale = np.array([anisotropy] + [1.0] * (nd - 1)) if nd == 3 else np.ones(2)
    phys = np.array(shape, float) * scale
    unit = np.pi * radius ** 2 if nd == 2 else 4 / 3 * np.pi * radius ** 3
    target = int(density * np.prod(phys) / unit)
    centres, radii = [], []
    tries = 0
    while len(centres) < target and tries < target * 200:
        tries += 1
        r = radius * float(np.exp(rng.normal(0, 0.18)))
        c = rng.uniform(0, phys)
        ok = True
        for c2, r2 in zip(centres, radii):
            if np.linalg.norm(c - c2) < (r + r2) * (1.0 - touching * 0.5):
                ok = False
                break
        if ok:
            centres.append(c)
            radii.append(r)
    labels = np.zeros(shape, np.int32)
    image = np.zeros(shape, np.float32)
    grids = np.indices(shape, dtype=np.float32)
    for i, (c, r) in enumerate(zip(centres, radii), start=1):
        ax = r * np.exp(rng.normal(0, 0.15, nd))
        ax[-1] *= 1.25  # elongated, like most nuclei
        rot = np.linalg.qr(rng.normal(size=(nd, nd)))[0]
        if nd == 3:  # only rotate in plane: nuclei lie flat on the coverslip
            rot = np.eye(3)
            a = rng.uniform(0, np.pi)
            rot[1:, 1:] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        ext = int(np.ceil(ax.max())) + 2
        lo = [max(0, int((c[d] - ext) / scale[d])) for d in range(nd)]
        hi = [min(shape[d], int((c[d] + ext) / scale[d]) + 2) for d in range(nd)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        sl = tuple(slice(l, h) for l, h in zip(lo, hi))
        pts = np.stack([grids[d][sl] * scale[d] - c[d] for d in range(nd)], -1) @ rot
        inside = ((pts / ax) ** 2).sum(-1) <= 1.0
        free = inside & (labels[sl] == 0)  # the first drawn keeps a shared pixel
        labels[sl][free] = i
        brightness = float(rng.uniform(0.5, 1.0))
        image[sl][free] = brightness
    labels = _relabel(labels)
    texture = ndi.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 1.5)
    image = image * (1.0 + 0.6 * texture / (texture.std() + 1e-9) * 0.25)
    image += 0.08  # background autofluorescence
    if blur > 0:
        image = ndi.gaussian_filter(image, [blur / s for s in scale])
    if bias > 0:
        coarse = rng.normal(0, 1, tuple(max(2, s // 64) for s in shape))
        field = ndi.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=3)[tuple(slice(0, s) for s in shape)]
        field = np.pad(field, [(0, s - f) for s, f in zip(shape, field.shape)], mode="edge")
        image = image * np.exp(bias * field / (np.abs(field).max() + 1e-9) * 1.1)
    mean_fg = float(image[labels > 0].mean()) if labels.any() else 1.0
    # shot noise (about 30 photons at unit brightness) plus camera read noise
    image = rng.poisson(np.clip(image, 0, None) * 30) / 30.0 + rng.normal(0, noise * mean_fg, shape)
    return np.clip(image, 0, None).astype(np.float32), labels


def _relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]
