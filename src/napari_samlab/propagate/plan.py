"""The order in which propagation visits slices, for background encoding.

Propagation advances every *run* (one anchor, one direction) by one slice
per round, so results grow around all anchors at once and two runs between
neighbouring anchors meet in the middle.  :class:`PropagationPlan` replays
that schedule without a model (as if no stop rule fired), so a UI can encode
the slices next in line while the user looks at results; the predictor's
embedding cache makes those encodes count when propagation gets there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import numpy as np

__all__ = ["PropagationPlan", "RunSpec", "make_runs", "visit_order", "next_slices_to_encode", "slices_around",
           "encode_slices"]


@dataclass(frozen=True)
class RunSpec:
    """One run: from anchor ``start`` stepping ``step`` (-1/+1) to ``bound``.

    ``bound`` is the last slice the run may visit (inclusive); ``kind`` is
    ``"outward"`` (ends at a limit, a stop slice or a stop rule) or ``"gap"``
    (between two anchors; ends where it meets the run from the other end).
    ``limit_reason`` is what ends an outward run at ``bound``.
    """

    start: int
    step: int
    bound: int
    kind: str
    limit_reason: str = "volume_end"

    @property
    def direction(self) -> str:
        return "up" if self.step > 0 else "down"


def z_limits(n_slices: int, settings=None) -> tuple:
    """``(lo, hi, lo_reason, hi_reason)``: the slices propagation may visit."""
    lo, hi = 0, int(n_slices) - 1
    lo_r = hi_r = "volume_end"
    if settings is not None and settings.z_min is not None and int(settings.z_min) > 0:
        lo, lo_r = min(int(settings.z_min), hi), "z_limit"
    if settings is not None and settings.z_max is not None and int(settings.z_max) < hi:
        hi, hi_r = max(int(settings.z_max), 0), "z_limit"
    return lo, hi, lo_r, hi_r


def make_runs(anchor_zs: Iterable[int], n_slices: int, settings=None,
              only: Optional[Sequence[tuple]] = None) -> List[RunSpec]:
    """The runs that propagation from ``anchor_zs`` consists of, in schedule order.

    Parameters
    ----------
    anchor_zs : iterable of int
        Anchor slices.
    n_slices : int
        Number of slices in the volume.
    settings : PropagationSettings, optional
        For ``z_min`` / ``z_max``.
    only : sequence of (start, step), optional
        Keep only these runs (re-propagation recomputes a few).

    Examples
    --------
    >>> [(r.start, r.direction, r.bound, r.kind) for r in make_runs([3, 8], 12)]
    [(3, 'down', 0, 'outward'), (3, 'up', 7, 'gap'), (8, 'down', 4, 'gap'), (8, 'up', 11, 'outward')]
    """
    zs = sorted({int(z) for z in anchor_zs})
    lo, hi, lo_r, hi_r = z_limits(n_slices, settings)
    runs = []
    for i, a in enumerate(zs):
        if i == 0:
            runs.append(RunSpec(a, -1, lo, "outward", lo_r))
        else:
            runs.append(RunSpec(a, -1, zs[i - 1] + 1, "gap", "anchor"))
        if i == len(zs) - 1:
            runs.append(RunSpec(a, +1, hi, "outward", hi_r))
        else:
            runs.append(RunSpec(a, +1, zs[i + 1] - 1, "gap", "anchor"))
    if only is not None:
        keep = {(int(s), int(d)) for s, d in only}
        runs = [r for r in runs if (r.start, r.step) in keep]
    return runs


def visit_order(anchor_zs: Iterable[int], n_slices: int, settings=None) -> List[int]:
    """Slices in the order propagation visits them when no stop rule fires.

    Anchors come first, then one slice per run per round.

    Examples
    --------
    >>> visit_order([2, 6], 9)
    [2, 6, 1, 3, 5, 7, 0, 4, 8]
    """
    zs = sorted({int(z) for z in anchor_zs})
    stops = set(getattr(settings, "stop_slices", None) or ())
    lo, hi, _, _ = z_limits(n_slices, settings)
    order = list(zs)
    seen = set(zs)
    runs = [[r, r.start, True] for r in make_runs(zs, n_slices, settings)]
    while any(state[2] for state in runs):
        for state in runs:
            r, cur, active = state
            if not active:
                continue
            z = cur + r.step
            if (r.step < 0 and z < r.bound) or (r.step > 0 and z > r.bound) or not (lo <= z <= hi) \
                    or z in stops or z in seen:
                state[2] = False
                continue
            order.append(z)
            seen.add(z)
            state[1] = z
    return order


class PropagationPlan:
    """The visit schedule for a set of anchors, replayable without a model.

    Parameters
    ----------
    n_slices : int
        Number of slices in the volume.
    anchors : iterable of int
        Anchor slices (the keys of the anchors dict).
    settings : PropagationSettings, optional
        ``z_min``, ``z_max`` and ``stop_slices`` shape the schedule.

    Examples
    --------
    >>> plan = PropagationPlan(9, [4])
    >>> plan.order()
    [4, 3, 5, 2, 6, 1, 7, 0, 8]
    >>> plan.remaining(done={4, 3, 5}, n=3)
    [2, 6, 1]
    """

    def __init__(self, n_slices: int, anchors: Iterable[int], settings=None):
        self.n_slices = int(n_slices)
        self.anchors = sorted({int(z) for z in anchors})
        self.settings = settings

    def order(self) -> List[int]:
        """All slices in visit order (see :func:`visit_order`)."""
        return visit_order(self.anchors, self.n_slices, self.settings)

    def remaining(self, done: Iterable[int] = (), n: Optional[int] = None) -> List[int]:
        """The next ``n`` slices of the schedule that are not in ``done``."""
        done = set(int(z) for z in done)
        out = [z for z in self.order() if z not in done]
        return out if n is None else out[: max(int(n), 0)]

    def __iter__(self):
        return iter(self.order())


def next_slices_to_encode(source, n: int = 4, *, n_slices: Optional[int] = None, settings=None,
                          encoded: Iterable[int] = ()) -> List[int]:
    """The slices a UI should encode next, in the background.

    Parameters
    ----------
    source : PropagationResult or dict or iterable of int
        A (possibly cancelled) result: slices it has not visited yet, in
        schedule order; or anchors (a dict z -> prompt/mask, or the slice
        numbers) before propagation starts.
    n : int
        How many slices to return.
    n_slices : int
        Number of slices; required unless ``source`` is a result.
    settings : PropagationSettings, optional
        Defaults to the result's settings.
    encoded : iterable of int
        Slices already encoded (skipped).

    Returns
    -------
    list of int

    Examples
    --------
    >>> next_slices_to_encode({10: None}, 3, n_slices=20)
    [10, 9, 11]
    """
    done = set(int(z) for z in encoded)
    if hasattr(source, "records") and hasattr(source, "anchors"):
        n_slices = source.mask.shape[0] if n_slices is None else n_slices
        settings = source.settings if settings is None else settings
        anchors = list(source.anchors)
        done |= set(source.records)
    else:
        if n_slices is None:
            raise ValueError("n_slices is required when source is not a PropagationResult")
        anchors = list(source.keys()) if isinstance(source, dict) else [int(z) for z in source]
    return PropagationPlan(n_slices, anchors, settings).remaining(done, n)


def slices_around(z: int, n_slices: int, n: int = 5, direction: int = 1, encoded: Iterable[int] = ()) -> List[int]:
    """The slice the user looks at, then its neighbours by distance.

    At each distance the neighbour in the direction the user last moved
    comes first (scrolling up, the slice above is likely next).  Near the
    ends of the volume the other side fills in.

    Parameters
    ----------
    z : int
        The displayed slice.
    n_slices : int
        Number of slices in the volume.
    n : int
        How many slices to return (including ``z``).
    direction : int
        The last movement: > 0 towards higher slice numbers, < 0 towards
        lower ones (0 counts as up).
    encoded : iterable of int
        Slices already encoded (skipped).

    Returns
    -------
    list of int

    Examples
    --------
    >>> slices_around(10, 20, 5, direction=-1)
    [10, 9, 11, 8, 12]
    >>> slices_around(10, 20, 4)
    [10, 11, 9, 12]
    >>> slices_around(1, 20, 4, direction=-1)
    [1, 0, 2, 3]
    """
    z, n_slices, n = int(z), int(n_slices), max(int(n), 0)
    first = -1 if direction < 0 else 1
    done = {int(e) for e in encoded}
    out = [z] if 0 <= z < n_slices and z not in done else []
    for d in range(1, n_slices):
        if len(out) >= n:
            break
        for zz in (z + first * d, z - first * d):
            if 0 <= zz < n_slices and zz not in done:
                out.append(zz)
    return out[:n]


def encode_slices(predictor, volume: np.ndarray, zs: Iterable[int], window="auto", modality=None,
                  cancel=None) -> int:
    """Encode slices ahead of time so propagation finds them in the cache.

    The window is resolved on the whole volume exactly as
    :func:`propagate_volume` does, so the cache keys match.  The predictor's
    current slice changes: call this between propagations, or give a
    background thread its own lock around the predictor.

    Parameters
    ----------
    predictor : SlicePredictor
    volume : ndarray (Z, Y, X)
    zs : iterable of int
        E.g. :func:`next_slices_to_encode`.
    window, modality
        As for :func:`propagate_volume`.
    cancel : callable, optional
        Returns True to stop between slices.

    Returns
    -------
    int
        How many slices were really encoded (not already cached).

    Examples
    --------
    >>> encode_slices(predictor, vol, next_slices_to_encode({30: p}, 4, n_slices=len(vol)))  # doctest: +SKIP
    4
    """
    from ..base.windowing import resolve_window

    win = resolve_window(window, volume, predictor.model, modality)
    before = predictor.encoder_calls
    for z in zs:
        if cancel is not None and cancel():
            break
        predictor.set_image(volume[int(z)], window=win)
    return predictor.encoder_calls - before
