"""The classic engine's click recipe: the object under one positive click.

Plain function on the engine's features (:meth:`ClassicModel.encode`),
called by :meth:`ClassicModel.decode` for point prompts without a box.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .classic_ops import best_threshold, cut_negatives, edge_contrast, fill_holes, project, ray_cut, split_touching

__all__ = ["segment_click"]


def segment_click(feat: np.ndarray, grad: np.ndarray, p, pos, neg, params: dict):
    """The object under one click: half-way level between it and its surround.

    The object level is the median around the click, the background
    level a low percentile of a window around it; the window grows until
    the clicked component no longer runs into its edge.  Touching
    neighbours (nuclei in a clump) are cut off where rays from the click
    climb into them (:func:`ray_cut`) and along the necks of the
    watershed split (:func:`split_touching`).

    Parameters
    ----------
    feat, grad : ndarray
        ``encode``'s ``"feature"`` (H, W, C) and ``"gradient"`` (H, W).
    p : (x, y)
        The click.
    pos, neg : list of (x, y)
        All positive and negative clicks of the prompt.
    params : dict
        ``ClassicModel.params`` (``click_level``, ``click_background``,
        ``split_h``, ``split_sigma``, ``split_dist``, ``ray_rise``).

    Returns
    -------
    mask : ndarray of bool (H, W)
    score : float
        Separability x edge contrast, in [0, 1].

    Examples
    --------
    >>> from napari_samlab.models.classic import ClassicModel
    >>> yy, xx = np.mgrid[:40, :40]
    >>> img = np.where((yy - 20) ** 2 + (xx - 20) ** 2 <= 49, 200, 10).astype(np.uint8)
    >>> m = ClassicModel(); e = m.encode(img)
    >>> mask, score = segment_click(e["feature"], e["gradient"], (20, 20), [(20, 20)], [], m.params)
    >>> int((mask != (img > 100)).sum()) <= 8, 0.0 <= score <= 1.0
    (True, True)
    """
    H, W = feat.shape[:2]
    x, y = p
    r = 16
    while True:
        r0, r1, c0, c1 = max(y - r, 0), min(y + r + 1, H), max(x - r, 0), min(x + r + 1, W)
        f = feat[r0:r1, c0:c1]
        ly, lx = y - r0, x - c0
        seed = np.zeros(f.shape[:2], bool)
        seed[max(ly - 2, 0):ly + 3, max(lx - 2, 0):lx + 3] = True
        g = project(f, seed, ~seed)
        obj_level = float(np.median(g[seed]))
        lo, hi = np.percentile(g, [params["click_background"], 100 - params["click_background"]])
        # polarity: the click is on the brighter or the darker side
        bg_level = float(lo) if obj_level - lo >= hi - obj_level else float(hi)
        sign = 1.0 if obj_level >= bg_level else -1.0
        t = bg_level + params["click_level"] * (obj_level - bg_level)
        obj = sign * (g - t) > 0
        obj[ly, lx] = True  # the click itself always belongs to the object
        lab, _ = ndi.label(obj)
        comp = lab == lab[ly, lx]
        # grow while the object runs into a window edge that is not the image's
        open_edge = (comp[0].any() and r0 > 0) or (comp[-1].any() and r1 < H) or \
            (comp[:, 0].any() and c0 > 0) or (comp[:, -1].any() and c1 < W)
        if not open_edge or r >= max(H, W):
            break
        r = int(r * 1.6) + 1
    comp = _fill_small_holes(comp, (ly, lx))
    contrast = obj_level - bg_level
    gn = (g - bg_level) / contrast if abs(contrast) > 1e-9 else np.zeros_like(g)
    comp = ray_cut(comp, (ly, lx), gn, params["ray_rise"])
    comp = split_touching(comp, (ly, lx), gn, params["split_h"], params["split_sigma"], params["split_dist"])
    lneg = [(yy - r0, xx - c0) for xx, yy in neg if r0 <= yy < r1 and c0 <= xx < c1]
    lpos = [(yy - r0, xx - c0) for xx, yy in pos if r0 <= yy < r1 and c0 <= xx < c1]
    comp = cut_negatives(comp, lpos or [(ly, lx)], lneg, sign * g)
    full = np.zeros((H, W), bool)
    full[r0:r1, c0:c1] = comp
    sep = best_threshold(g[comp], g[~comp])[2] if comp.any() and (~comp).any() else 0.0
    return full, sep * edge_contrast(grad[r0:r1, c0:c1], comp)


def _fill_small_holes(comp: np.ndarray, seed) -> np.ndarray:
    """Fill the holes of ``comp`` smaller than the clicked object itself.

    The clicked object's size is the disk of the component's depth at the
    click (distance to its edge, the deepest of the 5 x 5 pixels around
    the click: one dark pixel beside it must not shrink it).  A nucleolus
    or a dark core inside a nucleus is smaller than that and belongs to
    the object; a lung that the soft tissue around a clicked tumour
    encloses is far larger and stays background, so the cuts that follow
    can find the tumour.
    """
    filled = fill_holes(comp)
    holes = filled & ~comp
    if not holes.any():
        return filled
    sy, sx = seed
    depth = ndi.distance_transform_edt(comp)
    r = float(depth[max(sy - 2, 0):sy + 3, max(sx - 2, 0):sx + 3].max())
    lab, n = ndi.label(holes)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes <= np.pi * r * r
    small[0] = False
    return comp | small[lab]
