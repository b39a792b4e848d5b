"""Image operations of the classic engine: plain functions on NumPy arrays.

Shared by the 2D recipe (:mod:`napari_samlab.models.classic`) and the
propagation step (:mod:`napari_samlab.models.classic_track`): the
discriminant projection for colour, the Youden threshold, boundary
contrast, the cuts for negative clicks and touching blobs, and the
signed-distance format of ``Prediction.low_res_logits``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SDF_CLIP", "BINS", "L_CLIP", "histogram", "log_ratio", "box_prior_mask", "disk", "grow", "shrink", "dilate_disk", "erode_disk", "fill_holes", "dist_outside", "dist_inside", "project", "best_threshold", "edge_contrast", "ring_separation", "cut_negatives", "split_touching",
           "ray_cut", "crop_box", "project_with", "keep_overlapping", "signed_distance", "follow_motion"]

SDF_CLIP = 32.0
BINS = 64
L_CLIP = 4.0  # |log-likelihood ratio| cap: one odd bin must not decide alone


def histogram(v: np.ndarray) -> np.ndarray:
    """Smoothed, normalised 64-bin histogram of values in [0, 1], with a
    Gaussian tail (10 %, the sample's mean and spread): intensities seen in
    neither sample (a partial-volume rim between the two) then get the
    likelihood ratio of the nearer class instead of an arbitrary 0."""
    v = np.asarray(v, np.float64)
    h = np.bincount(np.clip((v * BINS).astype(np.int64), 0, BINS - 1), minlength=BINS).astype(np.float64)
    h = ndi.gaussian_filter1d(h, 1.5, mode="nearest")
    h /= h.sum()
    centres = (np.arange(BINS) + 0.5) / BINS
    sd = max(float(v.std()), 0.1)  # wide: orders values far from both samples
    tail = np.exp(-0.5 * ((centres - float(v.mean())) / sd) ** 2)
    h = 0.9 * h + 0.1 * tail / tail.sum() + 1e-6  # nothing is impossible
    return h / h.sum()


def log_ratio(g: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per-pixel log p(g | object) / p(g | background), clipped to +-L_CLIP."""
    idx = np.clip((g * BINS).astype(np.int64), 0, BINS - 1)
    lr = np.clip(np.log(fg) - np.log(bg), -L_CLIP, L_CLIP)
    return lr[idx].astype(np.float32)



def disk(r: int) -> np.ndarray:
    """A filled disk of radius ``r`` (slightly fuller than ``r**2``: rounder small disks)."""
    r = int(max(r, 0))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r + r


def dist_outside(mask: np.ndarray) -> np.ndarray:
    """Distance (pixels) of every pixel to the nearest ``mask`` pixel (0 inside)."""
    return ndi.distance_transform_edt(~mask) if mask.any() else np.full(mask.shape, np.inf)


def dist_inside(mask: np.ndarray) -> np.ndarray:
    """Distance of every ``mask`` pixel to the nearest background pixel (0 outside)."""
    return ndi.distance_transform_edt(mask)


# up to this radius a dilation is a few row passes (2r + 1 of them, cheap);
# beyond it one distance transform is faster
ROWS_MAX_R = 13


@lru_cache(maxsize=64)
def _disk_rows(r: int) -> tuple:
    """``(dy, half_width)`` rows of the disk that :func:`grow` dilates by.

    A pixel at offset ``(dy, dx)`` belongs when the distance transform's
    float distance ``sqrt(dy**2 + dx**2)``, squared, is at most ``r*r + r``
    (the test :func:`grow` applies to a distance map, rounding included):
    the row passes then give the same pixels as the distance map.
    """
    limit = r * r + r
    rows = []
    for dy in range(r + 1):
        w = -1
        while float(np.sqrt(float(dy * dy + (w + 1) ** 2))) ** 2 <= limit:
            w += 1
        if w >= 0:
            rows.append((dy, w))
    return tuple(rows)


@lru_cache(maxsize=64)
def _footprint_rows(r: int) -> tuple:
    """``(dy, half_width)`` rows of :func:`disk` ``(r)`` itself (integer test)."""
    fp = disk(r)
    return tuple((dy, int(fp[r + dy].sum()) // 2) for dy in range(r + 1) if fp[r + dy].any())


def _dilate_rows(mask: np.ndarray, rows: tuple) -> np.ndarray:
    """Dilation by the disk whose ``(dy, half_width)`` rows are ``rows``
    (:func:`_disk_rows`, :func:`_footprint_rows`; nothing beyond the border)."""
    H = mask.shape[0]
    out = np.zeros_like(mask)
    wide = {}
    for dy, w in rows:
        h = wide.get(w)
        if h is None:  # each row of the disk is a horizontal run: one 1D max filter per width
            h = wide[w] = (ndi.maximum_filter1d(mask, 2 * w + 1, axis=1, mode="constant", cval=0)
                           if w > 0 else mask)
        if dy == 0:
            out |= h
        elif dy < H:
            out[dy:] |= h[:H - dy]
            out[:H - dy] |= h[dy:]
    return out


def grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Dilation by a disk of radius ``r``: the pixels whose distance ``d``
    to the mask has ``d * d <= r * r + r`` in floating point, from a few
    row passes (small ``r``) or one distance map (large ``r``; the same
    pixels).  Rounding leaves out the rim offsets of :func:`disk` ``(r)``
    whose squared length is exactly ``r * r + r`` (r = 1, 4, ...):
    :func:`dilate_disk` is SciPy's ``disk(r)`` dilation.

    Examples
    --------
    >>> m = np.zeros((9, 9), bool); m[4, 4] = True
    >>> bool(np.array_equal(grow(m, 3), ndi.binary_dilation(m, disk(3))))
    True
    """
    mask = np.asarray(mask, bool)
    r = int(r)
    if 0 <= r <= ROWS_MAX_R:
        return _dilate_rows(mask, _disk_rows(r))
    d = dist_outside(mask)
    return d * d <= r * r + r


def shrink(mask: np.ndarray, r: int) -> np.ndarray:
    """Erosion by the disk of :func:`grow` (the image border does not erode)."""
    mask = np.asarray(mask, bool)
    r = int(r)
    if 0 <= r <= ROWS_MAX_R:
        return mask & ~_dilate_rows(~mask, _disk_rows(r))
    if mask.all():
        return mask.copy()  # no background to erode from
    d = dist_inside(mask)
    return mask & (d * d > r * r + r)


def dilate_disk(mask: np.ndarray, r: int) -> np.ndarray:
    """``ndi.binary_dilation(mask, disk(r))``, the same pixels from row passes.

    Examples
    --------
    >>> m = np.zeros((9, 9), bool); m[4, 4] = True
    >>> bool(np.array_equal(dilate_disk(m, 4), ndi.binary_dilation(m, disk(4))))
    True
    """
    mask = np.asarray(mask, bool)
    r = int(r)
    return _dilate_rows(mask, _footprint_rows(r)) if r > 0 else mask.copy()


def erode_disk(mask: np.ndarray, r: int) -> np.ndarray:
    """``ndi.binary_erosion(mask, disk(r))`` (the image border erodes, as
    there), the same pixels from row passes."""
    mask = np.asarray(mask, bool)
    r = int(r)
    if r <= 0:
        return mask.copy()
    outside = ~np.pad(mask, r)  # beyond the border counts as background
    return ~_dilate_rows(outside, _footprint_rows(r))[r:-r, r:-r]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` (4-connected background), from one labelling
    instead of an iterated dilation: the same pixels at a fraction of the cost.

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True; m[2, 2] = False
    >>> bool(fill_holes(m)[2, 2])
    True
    """
    mask = np.asarray(mask, bool)
    lab, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, bool)  # background reaching the border is not a hole
    outside[lab[0]] = outside[lab[-1]] = outside[lab[:, 0]] = outside[lab[:, -1]] = True
    outside[0] = False
    return ~outside[lab]


def project(f: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """One feature: the channel itself, or Fisher's discriminant for colour."""
    if f.shape[-1] == 1 or not fg.any() or not bg.any():
        return f[..., 0]
    a, b = f[fg].astype(np.float64), f[bg].astype(np.float64)
    cov = np.cov(a.T) * len(a) + np.cov(b.T) * len(b) if len(a) > 1 and len(b) > 1 else np.eye(f.shape[-1])
    cov = cov / max(len(a) + len(b), 1) + 1e-4 * np.eye(f.shape[-1])
    w = np.linalg.solve(cov, a.mean(0) - b.mean(0))
    if not np.all(np.isfinite(w)) or not np.any(w):
        return f[..., 0]
    g = f @ w.astype(np.float32)
    lo, hi = float(g.min()), float(g.max())
    return (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)


def best_threshold(a: np.ndarray, b: np.ndarray, bins: int = 256, plateau: float = 0.01, sign: Optional[float] = None):
    """Threshold and polarity that best separate samples ``a`` (object) and ``b``.

    Returns ``(t, sign, youden)``: the object is ``sign * (x - t) > 0`` and
    ``youden`` = TPR - FPR in [0, 1] measures how separable they are.
    ``sign`` (+1 brighter, -1 darker) fixes the polarity instead of choosing
    the better one.
    """
    if a.size == 0 or b.size == 0:
        return (float(np.median(a)) if a.size else 0.5), 1.0, 0.0
    lo = float(min(a.min(), b.min()))
    hi = float(max(a.max(), b.max()))
    if hi <= lo:
        return lo, 1.0, 0.0
    edges = np.linspace(lo, hi, bins + 1)
    ha = np.histogram(a, edges)[0].astype(np.float64)
    hb = np.histogram(b, edges)[0].astype(np.float64)
    # fraction above each edge (object brighter) / below (object darker)
    ca = 1.0 - np.concatenate([[0], np.cumsum(ha)]) / ha.sum()
    cb = 1.0 - np.concatenate([[0], np.cumsum(hb)]) / hb.sum()
    j_up = ca - cb
    j_dn = -j_up
    if sign is None:
        sign = 1.0 if j_up.max() >= j_dn.max() else -1.0
    j = j_up if sign > 0 else j_dn
    # middle of the near-optimal plateau: a clean gap between the classes
    # (tumour vs air) is cut half-way, through the partial-volume rim
    best = float(j.max())
    near = np.nonzero(j >= best - plateau)[0]
    i = int(near[len(near) // 2]) if near[-1] - near[0] < len(near) + 2 else int(np.argmax(j))
    return float(edges[i]), sign, best


def ring_separation(g: np.ndarray, mask: np.ndarray, width: int = 4) -> float:
    """How well one threshold tells ``mask`` from a ring just outside it.

    Youden index (:func:`best_threshold`) of the mask's interior (eroded by
    1 px) against the band 2..``width`` px outside: about 1 for an object
    that stands apart from what borders it, about 0 for a region cut out of
    uniform tissue.  Unlike a sample far from the object, the ring sees only
    the tissue the outline actually runs along.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :40]
    >>> disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 64
    >>> g = np.where(disc, 0.8, 0.2)
    >>> round(ring_separation(g, disc), 2), round(ring_separation(np.full_like(g, 0.5), disc), 2)
    (1.0, 0.0)
    """
    if mask.sum() < 9 or mask.all():
        return 0.0
    inner = ndi.binary_erosion(mask)
    ring = ndi.binary_dilation(mask, iterations=width) & ~ndi.binary_dilation(mask)
    if not inner.any() or not ring.any():
        return 0.0
    return best_threshold(g[inner], g[ring])[2]


def edge_contrast(grad: np.ndarray, mask: np.ndarray) -> float:
    """Mean gradient on the boundary relative to the ROI's, squashed to [0, 1]."""
    if not mask.any() or mask.all():
        return 0.0
    edge = mask ^ ndi.binary_erosion(mask)
    ratio = float(grad[edge].mean()) / (float(grad.mean()) + 1e-9)
    return float(np.clip(ratio / 2.0, 0.0, 1.0))


def cut_negatives(mask: np.ndarray, lpos, lneg, g: Optional[np.ndarray] = None) -> np.ndarray:
    """Remove what negative clicks point at.

    A watershed from the object seeds (positive clicks, or else the mask's
    deepest point away from the negatives) and the negative clicks splits the
    mask along the strongest edges of ``g`` between them or, on flat
    intensity, about half-way; the negatives' share goes.
    """
    lneg = [(y, x) for y, x in lneg if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]]
    if not lneg or not mask.any():
        return mask
    from skimage.segmentation import watershed

    mask = mask.copy()
    dist = ndi.distance_transform_edt(mask)
    markers = np.zeros(mask.shape, np.int32)
    pos_in = [(y, x) for y, x in lpos if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x]]
    if not pos_in:
        # object seed = the deepest mask point far from the negatives
        yy, xx = np.indices(mask.shape)
        d2 = dist.copy()
        for y, x in lneg:
            d2 = np.minimum(d2, np.hypot(yy - y, xx - x) / 2.0)
        pos_in = [tuple(int(v) for v in np.unravel_index(int(np.argmax(d2)), mask.shape))]
    for y, x in pos_in:
        markers[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 1
    for y, x in lneg:
        if mask[y, x]:
            markers[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 2
    if (markers == 2).any():
        # edges (gradient) between the seeds win; on flat ground the flood
        # meets half-way.  Not raw intensity: a brighter neighbour would flood
        # a dimmer object before the object's own seed starts to grow.
        land = -0.25 * dist / max(float(dist.max()), 1.0)
        if g is not None:
            grad = ndi.gaussian_gradient_magnitude(g.astype(np.float64), 1.0)
            land = land + grad / max(float(grad[mask].max()), 1e-9)
        ws = watershed(land, markers * mask, mask=mask)
        mask = ws == 1
    for y, x in lneg:  # always clear the immediate neighbourhood of the click
        mask[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = False
    lab, n = ndi.label(mask)
    if n > 1:  # keep what is still connected to the object seeds
        ids = {int(lab[y, x]) for y, x in pos_in if lab[y, x]}
        mask = np.isin(lab, list(ids)) if ids else mask
    return mask


def split_touching(comp: np.ndarray, seed, g: np.ndarray, h: float = 0.1, sigma: float = 3.0,
                    dist_weight: float = 0.5) -> np.ndarray:
    """Split touching blobs (nuclei in a clump) and keep the one under ``seed``.

    ``g`` is the intensity scaled so that background is 0 and the clicked
    object 1.  Blurred at about a third of a nucleus radius, each nucleus is
    one bump (bright middle, darker necks to its neighbours); adding
    ``dist_weight`` times the relative distance to the clump edge favours
    convex blobs.  The h-maxima of that landscape (height ``h``) mark one
    blob each, parts far brighter than the clicked object one more, and a
    watershed from these markers splits the clump.
    """
    if not comp.any() or h <= 0:
        return comp
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    gc = np.clip(g, -1, 4).astype(np.float64)
    dist = ndi.distance_transform_edt(comp)
    land = ndi.gaussian_filter(np.where(comp, gc, 0.0), sigma)
    land = land + dist_weight * ndi.gaussian_filter(dist, 1.0) / max(float(dist.max()), 1.0)
    land = np.where(comp, land, land[comp].min())
    markers, n = ndi.label(h_maxima(land, h) & comp)
    # a much brighter neighbour is a nucleus of its own, whatever its shape
    lb, nb = ndi.label((ndi.gaussian_filter(gc, 1.0) > 1.8) & comp)
    if nb:
        markers = np.where((lb > 0) & (markers == 0), lb + n, markers)
        n += nb
    if n < 2:
        return comp
    ws = watershed(-land, markers, mask=comp)
    return ws == ws[seed] if ws[seed] else comp


def ray_cut(comp: np.ndarray, seed, g: np.ndarray, rise: float = 0.15, n_rays: int = 72) -> np.ndarray:
    """Cut ``comp`` where rays from ``seed`` climb into a neighbour.

    Along each ray the (smoothed, 0 = background, 1 = clicked object)
    intensity falls from the clicked object's middle towards its edge; if it
    rises again by ``rise`` before leaving ``comp``, the ray has crossed a
    neck into a touching neighbour and the object ends at the lowest point
    before the rise.  The radii are median-filtered over angle (nuclei are
    star-shaped around a click near their middle) and the star polygon
    clips ``comp``.
    """
    if not comp.any() or rise <= 0:
        return comp
    from skimage.draw import polygon

    gs = ndi.gaussian_filter(np.clip(g, -1, 4).astype(np.float64), 1.0)
    sy, sx = seed
    rmax = float(np.hypot(*comp.shape))
    step = 0.5
    rs = np.arange(0.0, rmax, step)
    ang = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    yy = sy + np.outer(np.sin(ang), rs)
    xx = sx + np.outer(np.cos(ang), rs)
    inside = ndi.map_coordinates(comp.astype(np.float32), [yy, xx], order=0, cval=0.0) > 0.5
    prof = ndi.map_coordinates(gs, [yy, xx], order=1, cval=0.0)
    radii = np.empty(n_rays)
    for k in range(n_rays):
        out = np.nonzero(~inside[k])[0]
        end = int(out[0]) if out.size else len(rs)
        p = prof[k, :end]
        r_end = end
        if p.size > 2:
            run_min = np.minimum.accumulate(p)
            climbed = np.nonzero(p - run_min >= rise)[0]
            if climbed.size:
                j = int(climbed[0])
                r_end = int(np.argmin(p[:j + 1]))
        radii[k] = max(r_end * step, 1.0)
    # angular median: one stray ray must not carve a notch or a spike
    radii = ndi.median_filter(radii, size=5, mode="wrap")
    py = sy + radii * np.sin(ang)
    px = sx + radii * np.cos(ang)
    star = np.zeros(comp.shape, bool)
    rr, cc = polygon(py, px, comp.shape)
    star[rr, cc] = True
    cut = comp & star
    lab, _ = ndi.label(cut)
    if not lab[sy, sx]:
        return comp
    return fill_holes(lab == lab[sy, sx])


def crop_box(mask: np.ndarray, pad: int):
    """``(r0, r1, c0, c1)`` of ``mask``'s bounding box grown by ``pad``, and the cropped mask."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    H, W = mask.shape
    r0, r1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, H)
    c0, c1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, W)
    return (r0, r1, c0, c1), mask[r0:r1, c0:c1]


def project_with(f: np.ndarray, w, lo, hi) -> np.ndarray:
    """The feature seen through a stored projection (grey: the channel itself)."""
    if w is None:
        return f[..., 0]
    g = f @ np.asarray(w, np.float32)
    return (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)


def keep_overlapping(o: np.ndarray, prior: np.ndarray, fraction: float) -> np.ndarray:
    """Components of ``o`` that overlap ``prior`` (those overlapping it at
    least ``fraction`` as much as the best one)."""
    lab, n = ndi.label(o)
    if n == 0:
        return o
    ov = np.bincount(lab[prior], minlength=n + 1)[1:]
    if ov.max() == 0:
        return np.zeros_like(o)
    keep = np.flatnonzero(ov >= max(fraction * ov.max(), 1)) + 1
    return np.isin(lab, keep)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, + inside), clipped: the mask_input format."""
    if not mask.any():
        return np.full(mask.shape, -SDF_CLIP, np.float32)
    if mask.all():
        return np.full(mask.shape, SDF_CLIP, np.float32)
    # beyond SDF_CLIP + 1 pixels of the mask everything is -SDF_CLIP: the
    # distance transforms run on the mask's bounding box plus that margin only
    (r0, r1, c0, c1), m = crop_box(mask, int(SDF_CLIP) + 2)
    out = np.full(mask.shape, -SDF_CLIP, np.float32)
    d = ndi.distance_transform_edt(m) - ndi.distance_transform_edt(~m)
    out[r0:r1, c0:c1] = np.clip(d, -SDF_CLIP, SDF_CLIP)
    return out



def box_prior_mask(g: np.ndarray, mask: np.ndarray, inbox: np.ndarray, weight: float, width: float = 0.3,
                   exponent: float = 2.5, keep: float = 0.25) -> np.ndarray:
    """The object in a box when its intensity alone says little: likelihood plus the box's shape.

    A box drawn around an object touches it on all four sides and the object
    fills most of it, roughly as a superellipse inscribed in the box does
    (``|x/a|**exponent + |y/b|**exponent <= 1``; 2 is the ellipse, the box
    itself is the limit).  Each pixel's score is the log-likelihood ratio of
    its value under the histograms of ``mask`` (the object so far) and of
    the ring outside the box, plus ``weight * tanh((1 - rho) / width)``
    where ``rho`` is the superellipse "radius" (1 on its outline).  With a
    clear object (small ``weight``) the intensity decides; with a faint one
    (large ``weight``) the box's shape does, and the intensity moves the
    outline where it is clear.

    Parameters
    ----------
    g : ndarray (h, w)
        The feature in [0, 1] over the box and its ring.
    mask, inbox : ndarray of bool (h, w)
        The intensity recipe's mask and the box.
    weight : float
        Weight of the shape term, in log-likelihood units (likelihoods are
        capped at +-``L_CLIP``).
    width : float
        Width of the shape term's transition, in units of ``rho``.
    exponent : float
        Superellipse exponent.
    keep : float
        Components at least this fraction of the largest one's area are kept.

    Examples
    --------
    >>> g = np.full((30, 30), 0.5); inbox = np.zeros((30, 30), bool); inbox[5:25, 5:25] = True
    >>> found = np.zeros_like(inbox); found[10:20, 8:14] = True   # what a faint threshold found
    >>> m = box_prior_mask(g, found, inbox, weight=3.0)
    >>> bool(m[15, 18]), bool(m[5, 5]), bool(m[:5].any())
    (True, False, False)
    """
    rows, cols = np.flatnonzero(inbox.any(1)), np.flatnonzero(inbox.any(0))
    cy, cx = (rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0
    b, a = (rows[-1] - rows[0] + 1) / 2.0, (cols[-1] - cols[0] + 1) / 2.0
    yy, xx = np.indices(g.shape)
    rho = (np.abs((yy - cy) / b) ** exponent + np.abs((xx - cx) / a) ** exponent) ** (1.0 / exponent)
    shape = np.tanh((1.0 - rho) / max(width, 1e-3))
    ring = ~inbox
    obj = shrink(mask, 1)
    obj = obj if obj.sum() >= 4 else mask
    if obj.sum() < 4 or not ring.any():
        return mask  # the prior reshapes what the intensity found; it does not invent an object
    lr = ndi.gaussian_filter(log_ratio(g, histogram(g[obj]), histogram(g[ring])), 1.0)
    out = (lr + weight * shape > 0) & inbox
    lab, n = ndi.label(out)
    if n == 0:
        return mask
    areas = np.bincount(lab.ravel())[1:]
    out = np.isin(lab, np.flatnonzero(areas >= keep * areas.max()) + 1)
    return fill_holes(out)


def follow_motion(before: np.ndarray, after: np.ndarray, sdf: np.ndarray, size: int = 32,
                  iterations: int = 5, warps: int = 2) -> np.ndarray:
    """An outline drawn on image ``before``, moved with the image content onto ``after``.

    Dense TV-L1 optical flow (:func:`skimage.registration.optical_flow_tvl1`)
    from ``after`` back to ``before`` tells, for every pixel of ``after``,
    where its tissue lay on ``before``; the outline's signed distance is
    sampled there.  On thin slices neighbouring anatomy moves and bends
    smoothly from one slice to the next, so the moved outline follows a
    curved structure whose own edge is faint (a deep grey nucleus, the
    hippocampus) instead of staying where it was.  The flow is computed on
    a copy at most ``size`` pixels across (the motion between neighbouring
    slices is smooth at that scale) and the signed distance is moved there
    and interpolated back: one step costs a few milliseconds whatever the
    object's size.

    Parameters
    ----------
    before, after : ndarray (H, W)
        The two images, same window and scale (the classic feature).
    sdf : ndarray (H, W)
        Signed distance of the outline on ``before`` (+ inside).
    size : int
        Longest side of the copy the flow is computed on.
    iterations, warps : int
        TV-L1 fixed-point iterations per warp (``num_iter``) and warps per
        pyramid level (``num_warp``).

    Returns
    -------
    ndarray of float32 (H, W)
        The signed distance moved onto ``after`` (+ inside).

    Examples
    --------
    >>> yy, xx = np.mgrid[:48, :48]
    >>> before = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 50.0)
    >>> after = np.exp(-((yy - 23) ** 2 + (xx - 22) ** 2) / 50.0)
    >>> sdf = 4.0 - np.hypot(yy - 20, xx - 20)
    >>> moved = follow_motion(before, after, sdf) > 0
    >>> bool(np.abs(np.argwhere(moved).mean(0) - (23, 22)).max() < 1)
    True
    """
    from skimage.registration import optical_flow_tvl1

    a = np.asarray(before, np.float32)
    b = np.asarray(after, np.float32)
    d = np.asarray(sdf, np.float32)
    H, W = d.shape
    scale = min(1.0, size / max(H, W))
    if scale < 1.0:
        h, w = max(int(round(H * scale)), 8), max(int(round(W * scale)), 8)
        zoom = (h / H, w / W)
        sig = 0.5 / scale - 0.5  # the small copy averages what it stands for
        a = ndi.zoom(ndi.gaussian_filter(a, sig), zoom, order=1, grid_mode=True, mode="nearest")
        b = ndi.zoom(ndi.gaussian_filter(b, sig), zoom, order=1, grid_mode=True, mode="nearest")
        d = ndi.zoom(d, zoom, order=1, grid_mode=True, mode="nearest")
    v, u = optical_flow_tvl1(b, a, num_iter=iterations, num_warp=warps)
    rr, cc = np.mgrid[0:d.shape[0], 0:d.shape[1]].astype(np.float32)
    moved = ndi.map_coordinates(d, [rr + v, cc + u], order=1, mode="nearest")
    if scale < 1.0:
        moved = ndi.zoom(moved, (H / moved.shape[0], W / moved.shape[1]), order=1, grid_mode=True, mode="nearest")
    return moved.astype(np.float32)
