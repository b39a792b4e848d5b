"""Slice-to-slice propagation of a 2D mask through a volume.

Every slice the user prompted or corrected is an *anchor*.  From each anchor
two *runs* go outward (down and up).  A run prompts each next slice from the
previous slice's result (a box around it, points inside it, its low-res
logits, or a combination) and stops when a limit or a stop rule is reached.
Between two anchors the two runs fill from both ends and meet in the middle.
All runs advance one slice per round (see :mod:`.plan`), so a cancelled
propagation has grown evenly around every anchor.

The module never imports napari or Qt; the CLI, the Python API and the
widget all call :func:`propagate_volume` / :func:`repropagate`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Union

import numpy as np

from ..base.prompts import Prompt, validate_prompt
from ..base.windowing import Window, resolve_window
from ..errors import Cancelled, SamlabError
from ..models.families import family_of
from .engine import Engine, RunState
from .plan import make_runs, z_limits
from .quality import SliceRecord, iou
from .settings import PropagationResult, PropagationSettings
from .strategy import default_strategy

__all__ = [
    "PropagationSettings",
    "PropagationResult",
    "propagate_volume",
    "propagate_from_prompt",
    "repropagate",
    "default_strategy",
]


def _check_volume(volume) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim == 4 and vol.shape[-1] in (3, 4):
        return vol
    if vol.ndim != 3:
        raise SamlabError(f"propagation needs a 3D volume (z, y, x), not an array of shape {vol.shape}: open a volume or segment a single slice instead")
    return vol


def _check_anchors(anchors, vol, model) -> dict:
    if not anchors:
        raise SamlabError("propagation needs at least one prompted or painted slice: draw a box or click on one slice first")
    Z, H, W = vol.shape[:3]
    out = {}
    for z, a in anchors.items():
        zi = int(z)
        if not 0 <= zi < Z:
            raise SamlabError(f"slice {z} is outside the volume (0..{Z - 1}): choose a slice in range")
        if isinstance(a, Prompt):
            # the one prompt check, on every anchor before the first encode
            out[zi] = validate_prompt(a, (H, W), model, where=f" on slice {zi}")
        else:
            m = np.asarray(a)
            if m.shape != (H, W):
                raise SamlabError(f"the mask for slice {zi} has shape {m.shape} but slices are {(H, W)}: paint on the same volume")
            out[zi] = m.astype(bool)
    return out


def _locked_volume(locked, shape) -> Optional[np.ndarray]:
    if locked is None:
        return None
    if isinstance(locked, np.ndarray) and locked.shape == shape:
        return locked.astype(bool)
    if isinstance(locked, np.ndarray) and locked.ndim == 3:
        raise SamlabError(f"locked voxels have shape {locked.shape} but the volume is {shape}: lock voxels of the same volume")
    lv = np.zeros(shape, bool)
    for z in locked:
        if 0 <= int(z) < shape[0]:
            lv[int(z)] = True
    return lv


def _settings(settings, spacing=None) -> PropagationSettings:
    s = PropagationSettings() if settings is None else replace(settings)
    if spacing is not None:
        s.spacing = tuple(float(v) for v in spacing)
    s.stop_slices = {int(z) for z in (s.stop_slices or ())}
    if s.max_empty < 1:
        raise SamlabError(f"max_empty must be at least 1, not {s.max_empty}")
    return s


def _segment_all(predictor, vol, anchors, s, win, out, labels, locked, old, cancel, progress):
    """Prompt-free families (SAMed): every slice in the limits is segmented."""
    lo, hi, _, _ = z_limits(vol.shape[0], s)
    zs = [z for z in range(lo, hi + 1) if z not in s.stop_slices]
    records, done = {}, 0
    cancelled = False
    for z in zs:
        if cancel is not None and cancel():
            cancelled = True
            break
        a = anchors.get(z)
        if a is not None and not isinstance(a, Prompt):
            mask, score, lab, src = np.asarray(a, bool), 1.0, None, "anchor"
        else:
            try:
                predictor.set_image(vol[z], window=win)
            except Cancelled:
                cancelled = True
                break
            pred = predictor.predict_prompt(Prompt())
            mask, score, lab, src = np.asarray(pred.mask, bool), float(pred.score), pred.labels, "propagated"
        if locked is not None:
            mask = np.where(locked[z], old[z], mask)
        out[z] = mask
        if labels is not None:
            labels[z] = np.where(mask, lab if lab is not None else 1, 0).astype(np.uint8)
        prev = records.get(z - 1)
        i = iou(out[z - 1], mask) if prev is not None else None
        ratio = (mask.sum() / prev.area) if prev is not None and prev.area else None
        flags = set()
        if s.flag_min_score > 0 and score < s.flag_min_score:
            flags.add("low_score")
        records[z] = SliceRecord(z, score, i, int(mask.sum()), ratio, src, flags, None)
        done += 1
        if progress is not None:
            progress(done, len(zs), z)
    return records, cancelled


# ----------------------------------------------------------------------
def propagate_volume(predictor, volume, anchors: dict, *, window: Union[str, tuple, Window, None] = "auto",
                     modality: Optional[str] = None, settings: Optional[PropagationSettings] = None,
                     labels_init: Optional[np.ndarray] = None, locked=None,
                     cancel: Optional[Callable[[], bool]] = None,
                     progress: Optional[Callable[[int, int, Optional[int]], None]] = None,
                     spacing: Optional[tuple] = None) -> PropagationResult:
    """Propagate anchor slices through a volume in both directions.

    Parameters
    ----------
    predictor : SlicePredictor
        Its embedding cache is what makes re-propagation cheap.
    volume : ndarray, (Z, Y, X)
        The raw volume (windowing is applied per slice).
    anchors : dict int -> Prompt or ndarray of bool (Y, X)
        A prompt to segment on that slice, or a painted / corrected mask used
        as it is.  Every anchor starts two runs.
    window : str, (level, width), Window or None
        Resolved once on the whole volume with ``resolve_window`` so every
        slice gets the same mapping.
    modality : str, optional
        ``"CT"`` / ``"MR"`` when known (DICOM).
    settings : PropagationSettings, optional
        Strategy, limits, stop rules, flags.
    labels_init : ndarray of bool (Z, Y, X), optional
        Starting mask volume: slices propagation does not reach keep it.
    locked : ndarray of bool (Z, Y, X) or iterable of int, optional
        Voxels (or whole slices) whose ``labels_init`` value is never
        overwritten.
    cancel : callable, optional
        Called between slices; returning True ends propagation with what is
        done (``result.cancelled``).
    progress : callable, optional
        ``progress(done, total, z)`` after each slice.
    spacing : tuple of 3 floats, optional
        Voxel size (slice, row, column) in mm; sets ``settings.spacing``
        (thick slices let the object change more between slices).

    Returns
    -------
    PropagationResult

    Notes
    -----
    A family declared with ``memory_propagation`` (``models/families/``)
    propagates with SAM 2's memory unless ``settings.strategy`` is set:
    :func:`napari_samlab.propagate.memory_result.propagate_with_memory`
    (MedSAM2's recipe behind the same :class:`PropagationResult`;
    ``result.memory`` keeps the session for corrections).

    Examples
    --------
    >>> from napari_samlab import load_model, SlicePredictor                     # doctest: +SKIP
    >>> predictor = SlicePredictor(load_model(family="classic"))                 # doctest: +SKIP
    >>> res = propagate_volume(predictor, vol, {40: Prompt(box=(60, 50, 130, 140))})  # doctest: +SKIP
    >>> res.mask.shape == vol.shape, res.stop_reasons                             # doctest: +SKIP
    (True, {'down': 'empty', 'up': 'low_iou'})
    """
    vol = _check_volume(volume)
    s = _settings(settings, spacing)
    model = predictor.model
    anchors = _check_anchors(anchors if anchors is not None else {}, vol, model) if (anchors or model.needs_prompt) else {}
    shape = vol.shape[:3]
    win = resolve_window(window, vol, predictor.model, modality)
    old = np.zeros(shape, bool) if labels_init is None else np.asarray(labels_init).astype(bool)
    if old.shape != shape:
        raise SamlabError(f"initial labels have shape {old.shape} but the volume is {shape}: pass labels of the same volume")
    out = old.copy()
    lock = _locked_volume(locked, shape)
    calls0 = predictor.encoder_calls

    if not predictor.model.needs_prompt:
        labels = np.zeros(shape, np.uint8)
        records, cancelled = _segment_all(predictor, vol, anchors, s, win, out, labels, lock, old, cancel, progress)
        return PropagationResult(out, records, [], anchors, s, win, "all-slices", labels, cancelled,
                                 predictor.encoder_calls - calls0)

    fam = family_of(model)
    if fam is not None and fam.memory_propagation and not s.strategy:
        # the engine carries the object through the volume with its own memory (SAM2-style)
        from .memory_result import propagate_with_memory

        return propagate_with_memory(predictor, vol, anchors, window=win, settings=s, labels_init=old,
                                     locked=lock, cancel=cancel, progress=progress)

    strategy = s.strategy or default_strategy(predictor.model)
    eng = Engine(predictor, vol, s, win, strategy, out, lock, old, cancel, progress)
    lo, hi, _, _ = z_limits(shape[0], s)
    eng.total = len(set(range(lo, hi + 1)) - s.stop_slices | set(anchors))
    runs = _start_runs(eng, anchors, make_runs(anchors, shape[0], s), write=set(anchors))
    eng.run_all(runs)
    return PropagationResult(out, eng.records, eng.stops, anchors, s, win, strategy, None, eng.cancelled,
                             predictor.encoder_calls - calls0)


def _start_runs(eng: Engine, anchors: dict, specs, write: set):
    state = {}
    for z in sorted(anchors):
        if eng.check_cancel():
            break
        needed = z in write or any(sp.start == z for sp in specs)
        if needed:
            try:
                state[z] = eng.anchor_state(z, anchors[z], write=z in write)
            except Cancelled:
                eng.cancelled = True
                break
    runs = []
    for sp in specs:
        if sp.start not in state:
            continue
        mask, logits, fb_box, fb_pts = state[sp.start]
        run = RunState(sp, mask, logits, fb_box, fb_pts)
        run.stats = eng.anchor_stats.get(sp.start)
        run.ref_mean = eng.mean_intensity(sp.start, mask)
        if sp.start in eng.records and eng.records[sp.start].intensity is None:
            eng.records[sp.start].intensity = run.ref_mean
        runs.append(run)
    if eng.cancelled:
        for r in runs:
            eng.stop(r, "cancelled")
        return []
    return runs


def propagate_from_prompt(predictor, volume, z: int, prompt: Prompt, window="auto", modality=None,
                          settings: Optional[PropagationSettings] = None, cancel=None,
                          progress=None, spacing=None) -> PropagationResult:
    """One prompt on slice ``z``, propagated both ways (``samlab segment --propagate``).

    Parameters
    ----------
    predictor : SlicePredictor
    volume : ndarray (Z, Y, X)
    z : int
        The prompted slice.
    prompt : Prompt
        Box and/or points on slice ``z`` (array indices).
    window, modality, settings, cancel, progress, spacing
        As for :func:`propagate_volume`.

    Returns
    -------
    PropagationResult

    Examples
    --------
    >>> res = propagate_from_prompt(predictor, vol, 30, Prompt(box=(10, 20, 60, 80)))  # doctest: +SKIP
    >>> labels = res.mask.astype(np.uint8)                                             # doctest: +SKIP
    """
    return propagate_volume(predictor, volume, {int(z): prompt}, window=window, modality=modality,
                            settings=settings, cancel=cancel, progress=progress, spacing=spacing)


def repropagate(predictor, volume, result: PropagationResult, z: int, corrected_mask: np.ndarray, *,
                locked=None, window=None, modality=None, settings: Optional[PropagationSettings] = None,
                cancel=None, progress=None) -> PropagationResult:
    """Make a corrected slice an anchor and recompute only what depends on it.

    The slices from ``z`` outward up to the next anchor on each side (or to
    the limit, where no anchor lies beyond) are recomputed; between ``z``
    and a neighbouring anchor the two ends fill towards the middle again.
    Every other slice keeps its value and record.  Slices already visited
    come from the predictor's embedding cache: no slice is encoded twice.

    Parameters
    ----------
    predictor : SlicePredictor
        The one used for ``result`` (its cache holds the embeddings).
    volume : ndarray (Z, Y, X)
    result : PropagationResult
        The current result; its ``mask`` is the starting point (pass a
        result whose mask holds the user's paint edits to keep them).
    z : int
        The corrected slice.
    corrected_mask : ndarray of bool (Y, X)
        The user's mask for slice ``z``, used as it is.
    locked : ndarray of bool (Z, Y, X) or iterable of int, optional
        Committed voxels (or whole slices) that are never overwritten.
    window : optional
        Defaults to ``result.window`` (same cache keys).
    modality : str, optional
    settings : PropagationSettings, optional
        Defaults to ``result.settings``.
    cancel, progress
        As for :func:`propagate_volume`.

    Returns
    -------
    PropagationResult
        A new result; ``result`` is not modified.

    Examples
    --------
    >>> res2 = repropagate(predictor, vol, res, 37, fixed_mask, locked={12, 13})  # doctest: +SKIP
    """
    vol = _check_volume(volume)
    shape = vol.shape[:3]
    z = int(z)
    s = _settings(settings if settings is not None else result.settings)
    new_anchors = dict(result.anchors)
    new_anchors.update(_check_anchors({z: corrected_mask}, vol, predictor.model))
    win = result.window if window is None else resolve_window(window, vol, predictor.model, modality)
    old = np.asarray(result.mask, bool)
    out = old.copy()
    lock = _locked_volume(locked, shape)
    calls0 = predictor.encoder_calls
    fam = family_of(predictor.model)
    if fam is not None and fam.memory_propagation and not s.strategy:
        memory = result.memory
        if memory is not None and memory.model is predictor.model and window is None:
            # SAM 2's memory: the correction re-tracks from z with what the session remembers
            from .memory_result import repropagate_with_memory

            return repropagate_with_memory(vol, replace(result, settings=s), z, new_anchors[z], locked=lock,
                                           cancel=cancel, progress=progress)
        # another model or window: the video predictor starts again from every anchor
        return propagate_volume(predictor, vol, new_anchors, window=win, settings=s, labels_init=old, locked=lock,
                                cancel=cancel, progress=progress)
    if not predictor.model.needs_prompt:
        out[z] = new_anchors[z] if lock is None else np.where(lock[z], old[z], new_anchors[z])
        records = dict(result.records)
        records[z] = SliceRecord(z, 1.0, None, int(out[z].sum()), None, "anchor", set(), z)
        return PropagationResult(out, records, list(result.stops), new_anchors, s, win, result.strategy,
                                 result.labels, False, 0)

    below = [a for a in new_anchors if a < z]
    above = [a for a in new_anchors if a > z]
    lo_lim, hi_lim, _, _ = z_limits(shape[0], s)
    lo = max(below) + 1 if below else min(lo_lim, z)
    hi = min(above) - 1 if above else max(hi_lim, z)
    runs_keys = [(z, -1), (z, +1)]
    if below:
        runs_keys.append((max(below), +1))
    if above:
        runs_keys.append((min(above), -1))
    specs = make_runs(new_anchors, shape[0], s, only=runs_keys)

    # the range is recomputed from scratch (locked voxels aside)
    rng = np.arange(lo, hi + 1)
    out[rng] = False
    if lock is not None:
        out[rng] = np.where(lock[rng], old[rng], False)
    records = {k: v for k, v in result.records.items() if not lo <= k <= hi}
    for nb in (max(below) if below else None, min(above) if above else None):
        if nb is not None and nb in records:
            # the neighbour's flags described runs that are recomputed now
            records[nb] = replace(records[nb], flags=set(records[nb].flags) - {"stopped_here", "edge", "seam"})
    replaced = {(k[0], "up" if k[1] > 0 else "down") for k in runs_keys}
    stops = [st for st in result.stops if (st.start, st.direction) not in replaced]

    strategy = result.strategy or s.strategy or default_strategy(predictor.model)
    if s.strategy:
        strategy = s.strategy
    eng = Engine(predictor, vol, s, win, strategy, out, lock, old, cancel, progress)
    eng.records = records
    eng.visited = set(range(0, shape[0])) - set(range(lo, hi + 1))
    eng.total = hi - lo + 1
    anchor_sub = {k: new_anchors[k] for k in {sp.start for sp in specs} | {z}}
    runs = _start_runs(eng, anchor_sub, specs, write={z})
    eng.run_all(runs)
    return PropagationResult(out, eng.records, stops + eng.stops, new_anchors, s, win, strategy, None,
                             eng.cancelled, predictor.encoder_calls - calls0)
