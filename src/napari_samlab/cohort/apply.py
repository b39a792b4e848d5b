"""Apply a list of prompt entries to an image: the one code path shared by
``samlab segment --prompts``, ``samlab batch`` and ``samlab replay``.

Because all three call :func:`segment_image_with`, a batch output equals the
single-image result voxel for voxel (same model, window and prompts).  This
is also the only module of :mod:`napari_samlab.cohort` that uses the
engine's helpers beyond the public API (``Prompt``, the window resolver and
the prompt validator), so a reorganisation of ``predict``/``models`` touches
one import block here.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..errors import SamlabError
from .prompts import PromptEntry, check_entries_fit


def _engine():
    """The engine pieces used here, imported late (torch-free import of cohort)."""
    from ..base.prompts import Prompt, validate_prompt
    from ..predict.predictor import SlicePredictor
    from ..base.windowing import resolve_window
    from ..propagate import propagate_from_prompt

    return Prompt, SlicePredictor, validate_prompt, resolve_window, propagate_from_prompt


def window_request(window):
    """Normalise a window request for records: a name, or ``[level, width]``.

    Examples
    --------
    >>> window_request((40, 400)), window_request("AUTO")
    ([40.0, 400.0], 'auto')
    """
    if window is None:
        return "none"
    if isinstance(window, (tuple, list)):
        if len(window) != 2:
            raise SamlabError(f"window {window!r} is not valid: give a name (auto, none, ct-lung, ...) or [level, width]")
        return [float(window[0]), float(window[1])]
    return str(window).lower()


def _window_arg(window):
    return tuple(window) if isinstance(window, list) else window


def label_array(shape: tuple, labels: Sequence[int], num_classes: int = 1) -> np.ndarray:
    """An empty label image big enough for ``labels`` (uint8, else uint16)."""
    top = max([int(v) for v in labels] + [int(num_classes)])
    return np.zeros(shape, np.uint16 if top > 255 else np.uint8)


def to_prompt(entry: PromptEntry, plane_shape: tuple, where: str):
    """The engine's ``Prompt`` for ``entry``, checked against a slice of ``plane_shape``."""
    Prompt, _, validate_prompt, _, _ = _engine()
    points = [tuple(p) for p in entry.points] + [tuple(p) for p in entry.negatives]
    flags = [1] * len(entry.points) + [0] * len(entry.negatives)
    prompt = Prompt(box=tuple(entry.box) if entry.box is not None else None,
                    points=points or None, point_labels=flags or None)
    try:
        return validate_prompt(prompt, plane_shape)
    except SamlabError as err:
        raise SamlabError(f"{where}: {err}") from None


def segment_with_prompts(image, model, entries: Sequence[PromptEntry], window="auto", cache_dir=None,
                         source: str = "prompts") -> np.ndarray:
    """Segment ``image`` with each entry in turn; later entries win on overlap.

    Every entry is checked (slice inside the image, box and points inside
    the slice, the family takes that kind of prompt) before anything is
    encoded, so a bad entry costs no model time.

    Parameters
    ----------
    image : napari_samlab.Image
        From :func:`napari_samlab.read_image`.
    model : SegmentationModel
        From :func:`napari_samlab.load_model`; a family that takes prompts.
    entries : sequence of PromptEntry
    window : str or (level, width)
        ``"auto"`` (the family's own), ``"none"``, a preset name or a pair;
        resolved once on the whole volume.
    cache_dir : path, optional
        On-disk embedding cache.
    source : str
        How to name the entries in messages (e.g. the prompts file's name).

    Returns
    -------
    ndarray of uint8 or uint16
        ``image.spatial_shape``; 0 where no entry claimed a voxel.

    Examples
    --------
    >>> labels = segment_with_prompts(read_image("ct.nrrd"), load_model(family="classic"),
    ...                               load_prompts("ct.prompts.json"))   # doctest: +SKIP
    """
    _, SlicePredictor, _, resolve_window, propagate_from_prompt = _engine()
    if not model.needs_prompt:
        raise SamlabError(f"{model.family} segments without prompts: use segment_without_prompts")
    if not entries:
        raise SamlabError(f"{source} holds no prompts: {model.family} needs at least one box or point per object")
    shape = tuple(image.spatial_shape)
    is3d = len(shape) == 3
    check_entries_fit(entries, shape, source)
    plane_shape = shape[1:] if is3d else shape
    prompts = []
    for i, entry in enumerate(entries):
        where = f"{source}: entry {i + 1}"
        prompt = to_prompt(entry, plane_shape, where)
        try:
            model.check_prompt(prompt, plane_shape)
        except SamlabError as err:
            raise SamlabError(f"{where}: {err}") from None
        prompts.append(prompt)

    volume = image.array
    modality = image.metadata.get("modality")
    win = resolve_window(_window_arg(window), volume, model, modality)
    predictor = SlicePredictor(model, cache_dir=cache_dir)
    labels = label_array(shape, [e.label for e in entries])
    for entry, prompt in zip(entries, prompts):
        if is3d and entry.propagate:
            result = propagate_from_prompt(predictor, volume, entry.slice, prompt, window=win, modality=modality,
                                           spacing=image.spacing[::-1])
            labels[result.mask] = entry.label
            continue
        predictor.set_image(volume[entry.slice] if is3d else volume, window=win)
        mask = predictor.predict_prompt(prompt).mask
        if is3d:
            labels[entry.slice][mask] = entry.label
        else:
            labels[mask] = entry.label
    return labels


def segment_without_prompts(image, model, window="auto", only_slice: Optional[int] = None, cache_dir=None,
                            predictor=None, modality: Optional[str] = None) -> np.ndarray:
    """Automatic segmentation (SAMed): the model's classes on every slice.

    Parameters
    ----------
    image : napari_samlab.Image
    model : SegmentationModel
        A family with ``needs_prompt`` False.
    window : str or (level, width)
    only_slice : int, optional
        Segment this slice only (the rest stays 0), as ``samlab segment --slice``.
    predictor : SlicePredictor, optional
        Reuse this one (its caches); default: a new one with ``cache_dir``.
    modality : str, optional
        ``"CT"``/``"MR"`` when the caller knows it; default: the image's metadata.

    Returns
    -------
    ndarray
        Class index per voxel (0 background).

    Examples
    --------
    >>> organs = segment_without_prompts(read_image("abdomen.nii.gz"), samed)   # doctest: +SKIP
    """
    Prompt, SlicePredictor, _, resolve_window, _ = _engine()
    volume = image.array
    shape = tuple(image.spatial_shape)
    is3d = len(shape) == 3
    win = resolve_window(_window_arg(window), volume, model, modality or image.metadata.get("modality"))
    predictor = predictor if predictor is not None else SlicePredictor(model, cache_dir=cache_dir)
    labels = label_array(shape, [], model.num_classes)
    slices: List[Optional[int]] = list(range(shape[0])) if is3d else [None]
    if is3d and only_slice is not None:
        if not 0 <= only_slice < shape[0]:
            raise SamlabError(f"slice {only_slice} is outside the volume (0..{shape[0] - 1})")
        slices = [only_slice]
    for z in slices:
        predictor.set_image(volume[z] if z is not None else volume, window=win)
        pred = predictor.predict_prompt(Prompt())
        cls = pred.labels if pred.labels is not None else pred.mask.astype(np.uint8)
        if z is None:
            labels[...] = cls
        else:
            labels[z] = cls
    return labels


def segment_image_with(image, model, entries: Sequence[PromptEntry], window="auto", cache_dir=None,
                       only_slice: Optional[int] = None, source: str = "prompts") -> np.ndarray:
    """Prompts for prompt families, automatic classes for SAMed (prompts ignored).

    Examples
    --------
    >>> labels = segment_image_with(image, model, entries, window="ct-lung")   # doctest: +SKIP
    """
    if model.needs_prompt:
        return segment_with_prompts(image, model, entries, window, cache_dir, source)
    return segment_without_prompts(image, model, window, only_slice, cache_dir)
