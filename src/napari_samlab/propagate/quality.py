"""Per-slice quality records and the small mask measures they use.

Every slice that propagation touches gets a :class:`SliceRecord`; every run
(one anchor, one direction) that ended early gets a :class:`StopInfo`.  The
widget draws the records as a strip along the slice axis and offers "go to
next flagged slice"; the CLI prints the stop reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["SliceRecord", "StopInfo", "FLAGS", "STOP_REASONS", "iou", "dice", "bbox", "deepest_points", "slice_flags"]

#: Flags a :class:`SliceRecord` may carry, and what they mean.
FLAGS = {
    "low_score": "the model's own score is below PropagationSettings.flag_min_score",
    "low_iou": "overlap with the previous slice is below PropagationSettings.flag_min_iou",
    "big_jump": "the area changed by more than PropagationSettings.flag_area_factor",
    "stopped_here": "the last kept slice of a run that a stop rule ended: check where the object really ends",
    "edge": "the object still touches the z-limit (or the end of the volume) here",
    "empty": "the model found nothing here, but fewer than max_empty slices in a row",
    "intensity": "the mean intensity inside the mask moved by more than flag_intensity_change",
    "seam": "two runs met here and their masks disagree (IoU below flag_min_iou)",
    "cancelled": "propagation was cancelled after this slice",
    # the classic engine's own doubts (models/classic_track.py)
    "track_jump": "classic tracking: the area changed by more than track_flag_area",
    "track_overlap": "classic tracking: IoU with the previous mask below 0.5",
    "track_weak": "classic tracking: the object's evidence is weak (below twice the stop level)",
    "track_leak": "classic tracking: a leak into the surroundings was cut",
}

#: Why a run ended.
STOP_REASONS = {
    "volume_end": "reached the first or last slice of the volume",
    "z_limit": "reached the user's z-limit (z_min / z_max)",
    "stop_slice": "reached a slice marked 'stop'",
    "anchor": "reached another anchor or the slices filled from it",
    "empty": "the object was absent on max_empty consecutive slices",
    "low_iou": "IoU with the previous slice fell below stop_min_iou",
    "area_jump": "the area changed by more than stop_area_factor",
    "low_score": "the model's score fell below stop_min_score",
    "intensity": "the mean intensity inside the mask changed by more than stop_intensity_change",
    "cancelled": "the user cancelled",
}


@dataclass
class SliceRecord:
    """What propagation knows about one slice.

    Parameters
    ----------
    z : int
        Slice index.
    score : float
        The model's own quality estimate (1.0 for a painted anchor).
    iou_prev : float or None
        IoU with the previous kept slice of the same run (None for anchors).
    area : int
        Object pixels on this slice.
    area_ratio : float or None
        ``area / previous area`` (None for anchors or after an empty slice).
    source : str
        ``"anchor"``, ``"propagated"`` or ``"interpolated"``.
    flags : set of str
        Keys of :data:`FLAGS`.
    anchor : int or None
        The anchor slice whose run produced this slice.
    intensity : float or None
        Mean windowed intensity inside the mask (0..1 of the window).

    Examples
    --------
    >>> r = SliceRecord(z=3, score=0.9, iou_prev=0.8, area=120, area_ratio=1.1)
    >>> r.flagged, r.source
    (False, 'propagated')
    """

    z: int
    score: float
    iou_prev: Optional[float]
    area: int
    area_ratio: Optional[float]
    source: str = "propagated"
    flags: set = field(default_factory=set)
    anchor: Optional[int] = None
    intensity: Optional[float] = None

    @property
    def flagged(self) -> bool:
        """True when the slice deserves a look (any flag set)."""
        return bool(self.flags)

    def as_row(self) -> str:
        """One text line for tables and logs."""
        iou_s = "  -  " if self.iou_prev is None else f"{self.iou_prev:5.3f}"
        return (f"{self.z:4d} {self.source[:6]:6s} score={self.score:5.3f} iou_prev={iou_s} "
                f"area={self.area:6d} flags={','.join(sorted(self.flags)) or '-'}")


@dataclass
class StopInfo:
    """Why one run (from ``start`` going ``direction``) ended.

    Parameters
    ----------
    direction : str
        ``"down"`` (decreasing z) or ``"up"``.
    start : int
        The anchor slice the run started from.
    reason : str
        A key of :data:`STOP_REASONS`.
    z : int or None
        The offending slice (its mask was dropped), or the first slice not
        visited (limits, anchors); None when nothing was left.
    value : float or None
        The measured value that broke the rule (IoU, ratio, score, count).
    last_kept : int or None
        The last slice the run kept.
    detail : str or None
        The model's own reason, where it ended the object itself (the
        classic engine's ``extra["ended"]``, e.g. ``"evidence collapsed"``).

    Examples
    --------
    >>> StopInfo("up", 10, "low_iou", z=17, value=0.05, last_kept=16).describe()
    'up from 10: stopped at z=17: low_iou (0.05)'
    >>> StopInfo("up", 10, "empty", z=17, value=1, last_kept=16, detail="depth limit").describe()
    'up from 10: stopped at z=17: empty (1): depth limit'
    """

    direction: str
    start: int
    reason: str
    z: Optional[int] = None
    value: Optional[float] = None
    last_kept: Optional[int] = None
    detail: Optional[str] = None

    @property
    def rule_fired(self) -> bool:
        """True for a quality stop rule (not a limit, anchor or volume end)."""
        return self.reason in ("empty", "low_iou", "area_jump", "low_score", "intensity")

    def describe(self) -> str:
        """One line, e.g. for the CLI."""
        where = "" if self.z is None else f" at z={self.z}"
        val = "" if self.value is None else f" ({self.value:.3g})"
        why = "" if not self.detail else f": {self.detail}"
        return f"{self.direction} from {self.start}: stopped{where}: {self.reason}{val}{why}"


# ----------------------------------------------------------------------
def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty).

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> iou(a, a), iou(a, ~a)
    (1.0, 0.0)
    """
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool arrays (1.0 when both are empty).

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> dice(a, a)
    1.0
    """
    s = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def bbox(mask: np.ndarray, margin: int = 0, shape: Optional[tuple] = None) -> Optional[tuple]:
    """Inclusive ``(x0, y0, x1, y1)`` box of a 2D mask, grown and clipped.

    Parameters
    ----------
    mask : ndarray of bool, (H, W)
    margin : int
        Pixels added on every side (MedSAM's 3D protocol adds a few).
    shape : tuple, optional
        ``(H, W)`` to clip to; defaults to ``mask.shape``.

    Returns
    -------
    tuple or None
        None for an empty mask.

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[2:4, 5:9] = True
    >>> bbox(m), bbox(m, margin=3)
    ((5, 2, 8, 3), (2, 0, 9, 6))
    """
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    H, W = shape if shape is not None else mask.shape[:2]
    m = int(margin)
    return (max(int(cols[0]) - m, 0), max(int(rows[0]) - m, 0),
            min(int(cols[-1]) + m, W - 1), min(int(rows[-1]) + m, H - 1))


def deepest_points(mask: np.ndarray, n: int = 1, min_fraction: float = 0.2) -> list:
    """Points ``(x, y)`` deepest inside the mask: one per large component.

    The point of maximum distance to the background is the click least
    likely to fall outside the object on the next slice.

    Parameters
    ----------
    mask : ndarray of bool, (H, W)
    n : int
        At most this many points (largest components first).
    min_fraction : float
        Components smaller than this fraction of the largest get no point.

    Examples
    --------
    >>> m = np.zeros((9, 9), bool); m[1:8, 1:8] = True
    >>> deepest_points(m)
    [(4, 4)]
    """
    from scipy import ndimage as ndi

    if not mask.any():
        return []
    lab, k = ndi.label(mask)
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(-sizes)[: max(int(n), 1)]
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    pts = []
    for i in order:
        if sizes[i] < min_fraction * sizes[order[0]]:
            break
        d = np.where(lab == i + 1, dist, -1.0)
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        pts.append((int(x), int(y)))
    return pts


def slice_flags(settings, score: float, iou_prev: Optional[float], area_ratio: Optional[float]) -> set:
    """The flags every engine's propagated slice gets from its score, overlap and area change.

    Parameters
    ----------
    settings : PropagationSettings
        ``flag_min_score``, ``flag_min_iou``, ``flag_area_factor``.
    score : float
    iou_prev : float or None
        IoU with the slice before (None: no slice before).
    area_ratio : float or None
        Area over the previous slice's area.

    Examples
    --------
    >>> from napari_samlab.propagate import PropagationSettings
    >>> sorted(slice_flags(PropagationSettings(), 0.9, 0.1, 4.0))
    ['big_jump', 'low_iou']
    """
    flags = set()
    if settings.flag_min_score > 0 and score < settings.flag_min_score:
        flags.add("low_score")
    if iou_prev is not None and iou_prev < settings.flag_min_iou:
        flags.add("low_iou")
    if area_ratio is not None and max(area_ratio, 1.0 / area_ratio) > settings.flag_area_factor:
        flags.add("big_jump")
    return flags
