"""Link per-slice 2D instances into 3D objects: one value per object through the volume.

Slice by slice, each object of slice z is matched to the object of slice
z-1 it overlaps most when their IoU is at least ``min_iou`` (one to one:
pairs taken by decreasing IoU); a matched object takes its predecessor's
value, an unmatched one starts a new object.  Objects that appear in one
slice only are kept (thin objects in thick slices are real).
"""
from __future__ import annotations

import numpy as np

__all__ = ["link_slices"]


def _pairs(a: np.ndarray, b: np.ndarray):
    """IoU of every overlapping (a-label, b-label) pair, a and b 2D label slices."""
    m = (a > 0) & (b > 0)
    if not m.any():
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    codes, inter = np.unique(a[m].astype(np.int64) * nb + b[m], return_counts=True)
    ia, ib = np.divmod(codes, nb)
    area_a = np.bincount(a.ravel(), minlength=na)
    area_b = np.bincount(b.ravel(), minlength=nb)
    iou = inter / (area_a[ia] + area_b[ib] - inter)
    return ia, ib, iou


def link_slices(labels2d: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
    """Relabel a stack of independently labelled slices so that objects keep one value across slices.

    Parameters
    ----------
    labels2d : ndarray of int, (z, y, x)
        Each slice labelled on its own (values may repeat between slices).
    min_iou : float
        Overlap needed to call two slices' objects the same object.  0.3
        tolerates the shrinking and shifting of a nucleus between thick
        slices while two different neighbouring nuclei rarely reach it.

    Returns
    -------
    ndarray of int32
        0 background, 1..N, one value per linked object.

    Examples
    --------
    >>> s = np.zeros((3, 8, 8), int)
    >>> s[0, 2:5, 2:5], s[1, 2:5, 2:5], s[2, 2:5, 2:5] = 1, 4, 2
    >>> s[2, 6:8, 6:8] = 1
    >>> out = link_slices(s)
    >>> np.unique(out[:, 3, 3]).tolist(), int(out.max())
    ([1], 2)
    """
    stack = np.asarray(labels2d)
    out = np.zeros(stack.shape, np.int32)
    nxt = 1
    prev = None
    for z in range(stack.shape[0]):
        cur = stack[z].astype(np.int64)
        n = int(cur.max())
        lut = np.zeros(n + 1, np.int32)
        if prev is not None and n:
            ia, ib, iou = _pairs(cur, prev)
            order = np.argsort(-iou, kind="stable")
            used_a, used_b = set(), set()
            for k in order:
                if iou[k] < min_iou:
                    break
                if ia[k] in used_a or ib[k] in used_b:
                    continue
                used_a.add(ia[k]); used_b.add(ib[k])
                lut[ia[k]] = ib[k]
        present = np.unique(cur)
        for v in present[present > 0]:
            if lut[v] == 0:
                lut[v] = nxt
                nxt += 1
        out[z] = lut[cur]
        prev = out[z]
    return out
