"""The instance-segmentation score used in the field (Data Science Bowl, StarDist, Cellpose papers).

Objects of a prediction and of a ground truth are matched one to one at
intersection-over-union >= 0.5 (at that threshold at most one match per
object is possible, so the matching is unique and needs no assignment
solver).  From the matches: precision TP / (TP + FP), recall TP / (TP + FN),
F1 2TP / (2TP + FP + FN) and the mean IoU of the matched pairs.  Works for
2D and 3D label images alike (a 3D object is one value in a volume).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import SamlabError

__all__ = ["InstanceScore", "match_instances"]


@dataclass(frozen=True)
class InstanceScore:
    """Result of :func:`match_instances`.

    Attributes
    ----------
    f1, precision, recall, mean_matched_iou : float
    tp, fp, fn : int
        Matched pairs, unmatched predicted objects, unmatched true objects.
    n_true, n_pred : int
    threshold : float
    """

    f1: float
    precision: float
    recall: float
    mean_matched_iou: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    threshold: float

    def as_dict(self) -> dict:
        return asdict(self)


def _overlaps(truth: np.ndarray, pred: np.ndarray):
    """Pairwise intersections (sparse) and areas of every object of both images."""
    t = truth.ravel()
    p = pred.ravel()
    _, t_inv = np.unique(t, return_inverse=True)
    t_ids = np.unique(t)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    pairs = t_inv.astype(np.int64) * len(p_ids) + p_inv
    codes, inter = np.unique(pairs, return_counts=True)
    ti, pi = np.divmod(codes, len(p_ids))
    t_area = np.bincount(t_inv, minlength=len(t_ids))
    p_area = np.bincount(p_inv, minlength=len(p_ids))
    return t_ids, p_ids, ti, pi, inter, t_area, p_area


def match_instances(truth, pred, threshold: float = 0.5) -> InstanceScore:
    """Score predicted instances against true ones at an IoU threshold.

    Parameters
    ----------
    truth, pred : ndarray of int
        Label images of the same shape (2D or 3D); 0 is background, every
        other value one object.
    threshold : float
        Minimum IoU of a match, in [0.5, 1) (below 0.5 matches would not be
        unique).

    Returns
    -------
    InstanceScore

    Raises
    ------
    SamlabError
        Different shapes, non-integer labels or a threshold below 0.5.

    Examples
    --------
    >>> a = np.zeros((8, 8), int); a[1:4, 1:4] = 1; a[5:8, 5:8] = 2
    >>> b = np.zeros((8, 8), int); b[1:4, 1:4] = 7
    >>> s = match_instances(a, b)
    >>> s.tp, s.fp, s.fn, round(s.f1, 3)
    (1, 0, 1, 0.667)
    """
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise SamlabError(f"cannot compare label images of shapes {truth.shape} and {pred.shape}: they must have the same grid")
    for name, a in (("truth", truth), ("prediction", pred)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise SamlabError(f"the {name} is not a label image (dtype {a.dtype}): give integer labels")
    if not 0.5 <= threshold < 1.0:
        raise SamlabError(f"IoU threshold {threshold} is outside [0.5, 1): matches below 0.5 are not unique")
    t_ids, p_ids, ti, pi, inter, t_area, p_area = _overlaps(truth, pred)
    t_fg = t_ids != 0
    p_fg = p_ids != 0
    n_true = int(t_fg.sum())
    n_pred = int(p_fg.sum())
    keep = t_fg[ti] & p_fg[pi]
    ti, pi, inter = ti[keep], pi[keep], inter[keep]
    iou = inter / (t_area[ti] + p_area[pi] - inter).astype(np.float64)
    # strictly above 0.5 is unique; at exactly 0.5 two candidates can tie: keep the first of each object
    good = iou >= threshold
    ti, pi, iou = ti[good], pi[good], iou[good]
    order = np.argsort(-iou, kind="stable")
    used_t, used_p, matched = set(), set(), []
    for k in order:
        if ti[k] in used_t or pi[k] in used_p:
            continue
        used_t.add(ti[k]); used_p.add(pi[k]); matched.append(iou[k])
    tp = len(matched)
    fp = n_pred - tp
    fn = n_true - tp
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    denom = 2 * tp + fp + fn
    f1 = 2 * tp / denom if denom else 1.0
    return InstanceScore(float(f1), float(precision), float(recall), float(np.mean(matched)) if matched else 0.0,
                         tp, fp, fn, n_true, n_pred, float(threshold))
