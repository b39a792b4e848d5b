"""Per-object table and edits (delete, merge) of an instance label image; napari-free.

The "Segment all" widget shows :func:`object_table` and calls
:func:`delete_objects` / :func:`merge_objects`; both return a new array
with consecutive values 1..N (the ``--everything`` contract), and the
mapping from old to new values so that scores can follow.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import SamlabError

__all__ = ["object_table", "delete_objects", "merge_objects", "relabel_consecutive"]


def object_table(labels: np.ndarray, intensity: Optional[np.ndarray] = None, scores: Optional[Sequence[float]] = None,
                 spacing: Optional[Sequence[float]] = None) -> list:
    """One row per object: label, size (pixels and physical), mean intensity, score, centre.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels.
    intensity : ndarray, optional
        Same spatial shape (an RGB image is averaged over its channels).
    scores : sequence of float, optional
        Per object, index label-1.
    spacing : sequence of float, optional
        Pixel size per array axis (physical size = pixels · prod(spacing)).

    Returns
    -------
    list of dict
        Keys ``label``, ``pixels``, ``size`` (area or volume in spacing
        units), ``mean_intensity`` (None without an image), ``score`` (None
        without scores), ``centre`` (array indices, float).

    Examples
    --------
    >>> lab = np.zeros((6, 6), int); lab[1:3, 1:3] = 1; lab[4:6, 4:6] = 2
    >>> [r["pixels"] for r in object_table(lab)]
    [4, 4]
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return []
    counts = np.bincount(labels.ravel())[ids]
    unit = float(np.prod(spacing)) if spacing is not None else 1.0
    centres = ndi.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids)
    means = [None] * len(ids)
    if intensity is not None:
        img = np.asarray(intensity, np.float64)
        if img.ndim == labels.ndim + 1:
            img = img.mean(-1)
        if img.shape != labels.shape:
            raise SamlabError(f"intensity image {img.shape} does not match the labels {labels.shape}")
        means = [float(v) for v in ndi.mean(img, labels, ids)]
    rows = []
    for k, v in enumerate(ids):
        s = None
        if scores is not None and 0 < v <= len(scores):
            s = float(scores[v - 1])
        rows.append({"label": int(v), "pixels": int(counts[k]), "size": float(counts[k]) * unit,
                     "mean_intensity": means[k], "score": s, "centre": tuple(float(c) for c in centres[k])})
    return rows


def relabel_consecutive(labels: np.ndarray):
    """Values made 1..N in their old order; returns ``(new, lut)`` with ``new = lut[old]``.

    Examples
    --------
    >>> relabel_consecutive(np.array([0, 5, 5, 9]))[0].tolist()
    [0, 1, 1, 2]
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels], lut


def _scores_after(scores, lut, combine=max):
    if scores is None:
        return None
    n = int(lut.max())
    out = [None] * n
    for old in range(1, min(len(lut), len(scores) + 1)):
        new = lut[old]
        if new:
            s = float(scores[old - 1])
            out[new - 1] = s if out[new - 1] is None else combine(out[new - 1], s)
    return np.array([0.0 if v is None else v for v in out])


def delete_objects(labels: np.ndarray, ids: Sequence[int], scores=None):
    """Remove objects; returns ``(labels, scores)`` renumbered 1..N.

    Examples
    --------
    >>> lab = np.array([[1, 2, 3]])
    >>> delete_objects(lab, [2])[0].tolist()
    [[1, 0, 2]]
    """
    out = np.asarray(labels).copy()
    out[np.isin(out, np.asarray(list(ids), dtype=out.dtype))] = 0
    new, lut = relabel_consecutive(out)
    lut_full = np.zeros(int(np.asarray(labels).max()) + 1, np.int32)
    lut_full[: len(lut)] = lut
    return new, _scores_after(scores, lut_full)


def merge_objects(labels: np.ndarray, ids: Sequence[int], scores=None):
    """Give several objects one value (the smallest of them); returns ``(labels, scores)`` renumbered 1..N.

    Raises
    ------
    SamlabError
        Fewer than two objects to merge.

    Examples
    --------
    >>> merge_objects(np.array([[1, 2, 3]]), [2, 3])[0].tolist()
    [[1, 2, 2]]
    """
    ids = sorted({int(i) for i in ids if int(i) > 0})
    if len(ids) < 2:
        raise SamlabError("select at least two objects to merge")
    src = np.asarray(labels)
    out = src.copy()
    out[np.isin(out, ids[1:])] = ids[0]
    new, lut = relabel_consecutive(out)
    full = np.zeros(int(src.max()) + 1, np.int32)
    full[: len(lut)] = lut
    for i in ids[1:]:
        full[i] = full[ids[0]]
    return new, _scores_after(scores, full, combine=min)
