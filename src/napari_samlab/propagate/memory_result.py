"""Generic propagation for families with SAM 2's memory: :class:`MemorySession` behind :class:`PropagationResult`.

:func:`~napari_samlab.propagate.core.propagate_volume` hands families
declared with ``memory_propagation`` (``medsam2``, ``sam2``) to
:func:`propagate_with_memory`, and :func:`~napari_samlab.propagate.core.repropagate`
hands a result made that way to :func:`repropagate_with_memory`.  What the
widget, the session, the cohort runner and the CLI's slice-by-slice path get
back is the same :class:`PropagationResult` as for every other engine:

* anchors: every prompt or painted mask is a conditioning frame of SAM 2's
  video predictor (the lowest one starts the forward pass, the highest the
  reverse pass, as upstream does with prompts on several frames); with one
  prompt this is exactly MedSAM2's recipe, voxel for voxel;
* the mask is MedSAM2's: union of both passes, then (by default) the
  largest 26-connected component; slices outside the z-limits or beyond a
  stop slice are never tracked and keep ``labels_init``, locked voxels
  always keep it;
* one :class:`SliceRecord` per slice holding the object (and per anchor):
  score = SAM 2's object-present probability, IoU / area ratio with the
  neighbour towards the anchor, and the same review flags as the other
  engines (``low_score``, ``low_iou``, ``big_jump``, ``edge``).  The stop
  *rules* (IoU, area, intensity) do not cut SAM 2's tracks: its memory
  decides where the object ends (an empty mask, stop reason ``"empty"``);
* ``result.memory`` is the :class:`MemorySession`: a correction re-tracks
  from the corrected slice with the memory it has, not from scratch.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np

from ..base.prompts import Prompt
from ..errors import Cancelled
from .memory import MemorySession, keep_largest_component
from .plan import z_limits
from .quality import SliceRecord, StopInfo, iou, slice_flags
from .settings import PropagationResult

__all__ = ["propagate_with_memory", "repropagate_with_memory"]

STRATEGY = "memory"


class _CancelFlag:
    """``cancel()`` (a callable) as the ``is_set()`` MemorySession polls."""

    def __init__(self, cancel):
        self.cancel = cancel

    def is_set(self) -> bool:
        return bool(self.cancel is not None and self.cancel())


def _bounds(depth: int, anchors: dict, s) -> tuple:
    """``(lo, hi, lo_reason, hi_reason)``: z-limits narrowed by the nearest stop slice beyond the anchors."""
    lo, hi, lo_r, hi_r = z_limits(depth, s)
    first, last = min(anchors), max(anchors)
    below = [z for z in s.stop_slices if lo <= z < first]
    above = [z for z in s.stop_slices if last < z <= hi]
    if below:
        lo, lo_r = max(below) + 1, "stop_slice"
    if above:
        hi, hi_r = min(above) - 1, "stop_slice"
    return lo, hi, lo_r, hi_r


def propagate_with_memory(predictor, volume: np.ndarray, anchors: dict, *, window, settings, labels_init=None,
                          locked=None, cancel=None, progress=None) -> PropagationResult:
    """Propagate ``anchors`` through ``volume`` with SAM 2's memory (MedSAM2's recipe).

    Parameters
    ----------
    predictor : SlicePredictor
        Holds the ``medsam2`` / ``sam2`` model (its 2D cache is not used:
        the video predictor keeps its own features).
    volume : ndarray (Z, Y, X)
    anchors : dict int -> Prompt or ndarray of bool (Y, X)
        Checked already (``propagate_volume``).
    window : Window or None
        Resolved already; None uses the values as they are (0..255).
    settings : PropagationSettings
        ``z_min`` / ``z_max`` / ``stop_slices`` bound the tracks; the
        ``flag_*`` thresholds flag slices.
    labels_init : ndarray of bool (Z, Y, X), optional
    locked : ndarray of bool (Z, Y, X), optional
    cancel : callable, optional
        Polled after each slice; a cancelled result keeps what was tracked.
    progress : callable, optional
        ``progress(done, total, z)``.

    Returns
    -------
    PropagationResult
        ``strategy == "memory"``; ``result.memory`` is the session.

    Examples
    --------
    >>> res = propagate_volume(SlicePredictor(medsam2_model), vol, {3: Prompt(box=(16, 12, 40, 36))},
    ...                        window=None)                                        # doctest: +SKIP
    >>> res.strategy, res.memory.propagated                                        # doctest: +SKIP
    ('memory', True)
    """
    vol = np.asarray(volume)
    shape = vol.shape[:3]
    old = np.zeros(shape, bool) if labels_init is None else np.asarray(labels_init, bool)
    session = MemorySession(predictor.model, vol, window=window)
    lo, hi, lo_r, hi_r = _bounds(shape[0], anchors, settings)
    reads0 = session.frames.reads
    for z in sorted(anchors):
        a = anchors[z]
        if isinstance(a, Prompt):
            session.add_prompt(z, a)
        else:
            session.add_mask(z, a)

    def tick(z, done, total):
        if progress is not None:
            progress(done, total, z)

    cancelled = False
    try:
        merged = session.propagate(tick, _CancelFlag(cancel), lo=lo, hi=hi)
        tracked = session.tracked()
        scores = session.best_scores()
    except Cancelled:
        cancelled = True
        masks, visited, score_maps = session.partial
        merged = masks["forward"] | masks["reverse"]
        merged = keep_largest_component(merged) if session.largest_component else merged
        tracked = visited["forward"] | visited["reverse"]
        scores = _best(score_maps)
    return _result(session, vol, merged, tracked, scores, dict(anchors), settings, window, old, locked,
                   (lo, hi, lo_r, hi_r), cancelled, session.frames.reads - reads0)


def repropagate_with_memory(volume: np.ndarray, result: PropagationResult, z: int, corrected_mask: np.ndarray, *,
                            locked=None, cancel=None, progress=None) -> PropagationResult:
    """A corrected slice ``z`` re-tracks from ``z`` with the memory ``result.memory`` holds.

    Slices a direction tracked before ``z`` keep their masks; the rest of
    that direction is tracked again (SAM 2's video predictor with a new
    conditioning frame).  ``result`` is not modified.

    Examples
    --------
    >>> res2 = repropagate_with_memory(vol, res, 5, fixed_mask)       # doctest: +SKIP
    """
    session: MemorySession = result.memory
    vol = np.asarray(volume)
    z = int(z)
    s = result.settings
    reads0 = session.frames.reads
    counter = [0]
    lo, hi = session.limits

    def tick(zz):
        counter[0] += 1
        if progress is not None:
            progress(counter[0], max(hi - lo + 1, counter[0]), zz)

    anchors = dict(result.anchors)
    anchors[z] = np.asarray(corrected_mask, bool)
    cancelled = False
    # slices painted since (anchors the session has not seen) are corrections too, before z
    extra = [e for e in sorted(anchors) if e != z and e not in session.anchor_slices
             and not isinstance(anchors[e], Prompt)]
    try:
        for e in extra + [z]:
            session.add_mask(e, anchors[e], tick, _CancelFlag(cancel))
    except Cancelled:
        cancelled = True  # the directions keep what they re-tracked up to here
    merged = session.result()
    bounds = _bounds(vol.shape[0], anchors, s)
    base = np.asarray(result.mask, bool)
    # the previous result's mask carries labels_init outside the tracks (and the user's locks)
    return _result(session, vol, merged, session.tracked(), session.best_scores(), anchors, s, result.window,
                   base, locked, (lo, hi) + bounds[2:], cancelled, session.frames.reads - reads0)


def _best(score_maps: dict) -> dict:
    return {z: max(m[z] for m in score_maps.values() if z in m) for m in score_maps.values() for z in m}


def _result(session, vol, merged, tracked, scores, anchors, s, window, old, locked, bounds, cancelled,
            encoded) -> PropagationResult:
    lo, hi, lo_r, hi_r = bounds
    out = old.copy()
    zs = np.flatnonzero(tracked)
    out[zs] = merged[zs]
    if locked is not None:
        lock = np.asarray(locked, bool)
        out = np.where(lock, old, out)
    first, last = min(anchors), max(anchors)
    records = {}
    for z in (int(v) for v in zs):
        area = int(out[z].sum())
        if area == 0 and z not in anchors:
            continue  # SAM 2 says the object is absent here: not a kept slice
        near = z if z in anchors else (first if z < first else max(a for a in anchors if a < z))
        step = -1 if z < first else 1
        prev = z - step
        i = ratio = None
        if z not in anchors and 0 <= prev < out.shape[0] and tracked[prev]:
            i = iou(out[prev], out[z])
            prev_area = int(out[prev].sum())
            ratio = area / prev_area if prev_area else None
        score = float(scores.get(z, 1.0))
        flags = slice_flags(s, score, i, ratio)
        source = "anchor" if z in anchors else "propagated"
        records[z] = SliceRecord(z, score, i, area, ratio, source, flags, z if z in anchors else near)
    stops = [_stop("down", first, lo, lo_r, -1, out, tracked, records, cancelled),
             _stop("up", last, hi, hi_r, +1, out, tracked, records, cancelled)]
    res = PropagationResult(out, records, stops, anchors, s, window, STRATEGY, None, cancelled, encoded)
    return replace(res, memory=session)


def _stop(direction, start, bound, reason, step, out, tracked, records, cancelled) -> StopInfo:
    """Why the track from ``start`` going ``step`` ended: the first empty slice, the bound, or cancel."""
    z, last_kept = start, start
    while True:
        nxt = z + step
        if (step < 0 and nxt < bound) or (step > 0 and nxt > bound):
            if cancelled and not tracked[bound]:
                return StopInfo(direction, start, "cancelled", None, None, last_kept)
            if last_kept in records and records[last_kept].area > 0 and reason in ("volume_end", "z_limit"):
                records[last_kept].flags.add("edge")
            return StopInfo(direction, start, reason, nxt if 0 <= nxt < out.shape[0] else None, None, last_kept)
        if not tracked[nxt]:
            return StopInfo(direction, start, "cancelled" if cancelled else reason, nxt, None, last_kept)
        if not out[nxt].any():
            return StopInfo(direction, start, "empty", nxt, 1, last_kept)
        z = last_kept = nxt
