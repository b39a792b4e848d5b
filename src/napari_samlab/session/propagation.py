"""One object propagated through a volume, and the user's corrections since.

:class:`PropagationState` keeps what the last propagation wrote (to tell the
user's paint edits and re-segmented slices from model output), turns prompts
and edits into anchors, and runs :mod:`napari_samlab.propagate` (propagate,
re-propagate).  :func:`fill_gaps` is the model-free "fill between": it only
fills slices that hold no mask, never replacing model output or edits.
Volumes here are seen with the propagation axis first (``(Z, Y, X)``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..errors import SamlabError
from ..base.cancel import cancellable
from ..propagate import PropagationResult, interpolate_slices, propagate_volume, repropagate


def nonempty_slices(volume: np.ndarray) -> List[int]:
    """Slices (along axis 0) holding any non-zero voxel."""
    v = np.asarray(volume)
    return [int(z) for z in np.flatnonzero(v.reshape(v.shape[0], -1).any(1))]


def fill_gaps(preview: np.ndarray, source: Optional[np.ndarray] = None, slices: Optional[Iterable[int]] = None,
              locked: Optional[np.ndarray] = None, method: str = "sdf") -> Tuple[List[int], Dict[int, np.ndarray]]:
    """Fill the empty slices between annotated slices by shape interpolation, in place.

    Only slices of ``preview`` with no mask at all are written: model output
    and the user's edits are never replaced.

    Parameters
    ----------
    preview : ndarray (Z, Y, X)
        The mask volume to fill (changed in place; values 0/1).
    source : ndarray (Z, Y, X), optional
        Where the annotated shapes come from (default ``preview``); e.g. a
        committed segment when the preview is empty.  Annotated slices that
        are empty in ``preview`` get the source's shape too.
    slices : iterable of int, optional
        The annotated slices (default: every non-empty slice of ``source``).
        An annotated empty slice means "no object here".
    locked : ndarray of bool (Z, Y, X), optional
        Voxels never written (completed/locked segments).
    method : str
        See :func:`~napari_samlab.propagate.interpolate_slices`.

    Returns
    -------
    filled : list of int
        The slices filled by interpolation.
    old : dict int -> ndarray
        The previous content of every slice written (for undo): the filled
        ones and annotated ones copied from ``source``.

    Raises
    ------
    SamlabError
        Fewer than two annotated slices.

    Examples
    --------
    >>> pv = np.zeros((3, 9, 9), np.uint8); pv[0, 3:6, 3:6] = 1; pv[2, 1:8, 1:8] = 1
    >>> filled, old = fill_gaps(pv); filled, int(pv[1].sum())
    ([1], 25)
    """
    src = (preview if source is None else source) > 0
    keys = sorted({int(z) for z in slices}) if slices is not None else nonempty_slices(src)
    if len(keys) < 2:
        raise SamlabError("fill between needs at least two annotated slices: paint, segment or commit the object on "
                          "two slices with a gap between them")
    out = interpolate_slices(src, keys, method=method)
    has_mask = set(nonempty_slices(preview))
    key_set = set(keys)
    targets = [z for z in range(keys[0], keys[-1] + 1) if z not in has_mask and (z not in key_set or src[z].any())]
    old = {}
    for z in targets:
        new = out[z] if z not in key_set else src[z]
        if locked is not None:
            new = new & ~locked[z]
        if not new.any():
            continue
        old[z] = preview[z].copy()
        preview[z] = np.where(new, 1, 0).astype(preview.dtype)
    return sorted(z for z in old if z not in key_set), old


class PropagationState:
    """The last propagation of the displayed object and what the user changed since.

    ``key`` identifies the image and orientation the result belongs to; a
    result of another key is ignored by :meth:`anchors` and refused by
    :meth:`repropagate_job`.

    For families with SAM 2's memory (MedSAM2, SAM 2) the result carries its
    :class:`~napari_samlab.propagate.memory.MemorySession` (``result.memory``):
    it lives as long as the result (one per image, orientation and model), and
    :meth:`repropagate_job` hands corrections to it, so they re-track from the
    corrected slice with the memory instead of from scratch.

    Examples
    --------
    >>> st = PropagationState()
    >>> job = st.propagate_job(predictor, lock, vol, {20: Prompt(box=b)}, window=None)  # doctest: +SKIP
    >>> st.accept(job(), preview, key="axial")                                          # doctest: +SKIP
    """

    def __init__(self):
        self.result: Optional[PropagationResult] = None
        self.key = None
        self.baseline: Optional[np.ndarray] = None  # preview as the last propagation wrote it

    def same(self, key) -> bool:
        return self.result is not None and self.key == key

    def forget(self) -> None:
        """Drop the result (after a commit, or when the image changes)."""
        self.result, self.key, self.baseline = None, None, None

    def edited(self, preview: Optional[np.ndarray]) -> List[int]:
        """Slices whose preview differs from what the last propagation wrote (painted or re-segmented)."""
        if preview is None or self.baseline is None or self.baseline.shape != preview.shape:
            return []
        return nonempty_slices((preview > 0) != self.baseline)

    def anchors(self, prompts: Dict[int, object], preview: Optional[np.ndarray], key) -> dict:
        """Anchors for a new propagation: the prompts, plus slices edited since the last one.

        With no prompts and no earlier propagation, the slices painted into
        the preview are the anchors.
        """
        anchors = dict(prompts)
        if self.same(key):
            for z in self.edited(preview):
                anchors.setdefault(z, preview[z] > 0)
        elif not anchors and preview is not None:
            for z in nonempty_slices(preview):
                anchors[z] = preview[z] > 0
        return anchors

    @staticmethod
    def propagate_job(predictor, lock, volume, anchors: dict, *, window, settings=None, locked=None,
                      cancel=None, progress=None) -> Callable[[], PropagationResult]:
        """A callable (for a worker thread) that propagates ``anchors`` through ``volume``.

        ``cancel`` is a :class:`threading.Event`: set it to stop between
        slices and inside an encode.
        """
        def job():
            with lock, cancellable(cancel):
                return propagate_volume(predictor, volume, anchors, window=window, settings=settings, locked=locked,
                                        cancel=cancel.is_set, progress=progress)

        return job

    def repropagate_job(self, predictor, lock, volume, preview: np.ndarray, z: int, key, *, settings=None,
                        locked=None, cancel=None, progress=None) -> Callable[[], PropagationResult]:
        """A callable that makes slice ``z`` of ``preview`` an anchor and recomputes what depends on it.

        Other slices changed since the last propagation become anchors too,
        so their edits survive.

        Raises
        ------
        SamlabError
            No propagation yet, one of another image/orientation, or ``z``
            outside the volume.
        """
        if self.result is None:
            raise SamlabError("nothing to re-propagate yet: press Propagate first")
        if not self.same(key):
            raise SamlabError("the last propagation ran on another image or orientation: propagate again first")
        n = volume.shape[0]
        if not 0 <= int(z) < n:
            raise SamlabError(f"slice {z} is outside the volume (0..{n - 1}): choose a slice in range")
        z = int(z)
        current = preview > 0
        anchors = dict(self.result.anchors)
        for e in self.edited(preview):
            if e != z:
                anchors[e] = current[e].copy()
        base = replace(self.result, mask=current.copy(), anchors=anchors)
        corrected = current[z].copy()

        def job():
            with lock, cancellable(cancel):
                return repropagate(predictor, volume, base, z, corrected, locked=locked, settings=settings,
                                   cancel=cancel.is_set, progress=progress)

        return job

    def accept(self, result: PropagationResult, preview: np.ndarray, key) -> None:
        """Write ``result`` into ``preview`` (all slices) and remember it as the baseline for edits."""
        preview[...] = result.labels if result.labels is not None else result.mask
        self.result = result
        self.key = key
        self.baseline = preview > 0
