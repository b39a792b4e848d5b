"""``segment_everything``: automatic instance segmentation of a 2D image or a volume.

Engines: ``classic`` (weight-free seeded watershed, :mod:`.classic`; true
3D on volumes, tiled on large images) and SAM checkpoints (point-grid
automatic mask generation, :mod:`.amg`; per slice, linked across slices
in a volume, :mod:`.linking`).
"""
from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import SamlabError
from .channels import is_rgb, nucleus_channel
from .classic import ClassicSettings, finish, instances_in, prepare
from .size import estimate_diameter, radius_per_axis

__all__ = ["segment_everything", "EverythingResult", "DEFAULT_TILE"]

log = logging.getLogger(__name__)

# 2048² tiles keep the classic engine's per-tile working set around 100 MB
DEFAULT_TILE = 2048


@dataclass
class EverythingResult:
    """Labels plus what was done: ``labels`` (int32), ``scores`` (per object, index label-1),
    ``diameter_px`` (used), ``estimated`` (the size came from the image), ``engine``, ``tiles``."""

    labels: np.ndarray
    scores: np.ndarray
    diameter_px: Optional[float]
    estimated: bool
    engine: str
    tiles: int = 1
    warnings: list = field(default_factory=list)


def _spatial_shape(arr: np.ndarray, rgb: bool) -> tuple:
    return arr.shape[:-1] if rgb else arr.shape


def segment_everything(image, model=None, object_size: Optional[float] = None, spacing: Optional[Sequence[float]] = None,
                       object_size_um: Optional[float] = None, min_size: Optional[float] = None,
                       rgb: Optional[bool] = None, stain: str = "auto", tile_size: Optional[int] = None,
                       points_per_side: Optional[int] = None, window="auto",
                       progress: Optional[Callable[[int, int], None]] = None,
                       cancel: Optional[threading.Event] = None, return_result: bool = False):
    """Find every object (nucleus, cell) of an image and give each its own label value.

    Parameters
    ----------
    image : ndarray
        (y, x), (y, x, 3) RGB (e.g. H&E) or (z, y, x) volume.
    model : SegmentationModel or str, optional
        None or ``"classic"``: the weight-free engine.  A loaded ``sam``
        model: SAM's automatic mask generator.  Other families raise.
    object_size : float, optional
        Typical object diameter in in-plane pixels.
    spacing : sequence of float, optional
        Pixel size per array axis, (z, y, x) or (y, x), in micrometres;
        used for ``object_size_um`` and for anisotropic volumes.
    object_size_um : float, optional
        Typical object diameter in micrometres (needs ``spacing``).
        Without either size the engine estimates it from the image.
    min_size : float, optional
        Smallest object kept, in pixels (voxels in 3D); default 15 % of the
        typical object's area (volume).
    rgb : bool, optional
        Whether the last axis is colour (default: guessed).
    stain : {"auto", "he", "fluorescence", "dark"}
        See :func:`.channels.nucleus_channel`.
    tile_size : int, optional
        Process 2D images in tiles of this side (with overlap) and stitch
        them; default: tiles only when a side exceeds 2048 px.
    points_per_side : int, optional
        SAM only: the prompt grid (default: from the object size, else 32).
    window : str
        SAM only: intensity window (as :meth:`SlicePredictor.set_image`).
    progress : callable, optional
        ``progress(done, total)``.
    cancel : threading.Event, optional
        Set it to stop; :class:`~napari_samlab.errors.Cancelled` is raised.
    return_result : bool
        Return an :class:`EverythingResult` instead of the labels alone.

    Returns
    -------
    ndarray of int32 (or EverythingResult)
        The spatial shape of ``image``; 0 background, 1..N one value per
        object; in a volume an object keeps its value across slices.  An
        empty or constant image gives all zeros (with a warning).

    Raises
    ------
    SamlabError
        Absurd object sizes, a model family that cannot do it, bad arrays.

    Examples
    --------
    >>> from napari_samlab.instances import segment_everything
    >>> from napari_samlab.instances.synthetic import synthetic_nuclei
    >>> img, truth = synthetic_nuclei((128, 128), radius=7, seed=0)
    >>> labels = segment_everything(img, object_size=16)
    >>> labels.shape, bool(labels.max() > 10)
    ((128, 128), True)
    """
    arr = np.asarray(image)
    colour = is_rgb(arr, rgb)
    shape = _spatial_shape(arr, colour)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise SamlabError(f"cannot segment an array of shape {arr.shape}: give a 2D image (y, x), RGB (y, x, 3) or a volume (z, y, x)")
    if len(shape) == 3 and colour:
        raise SamlabError("RGB volumes are not supported: convert to one channel per slice first")
    engine = "classic" if model is None or model == "classic" or getattr(model, "family", None) == "classic" else None
    if isinstance(model, str) and engine is None:
        raise SamlabError(f"model {model!r}: pass a loaded model (napari_samlab.load_model) or 'classic'")
    if engine is None:
        from .amg import check_family

        check_family(model)
        engine = "sam"
    sp = None if spacing is None else np.asarray(spacing, float).ravel()
    if sp is not None and sp.size != len(shape):
        raise SamlabError(f"spacing has {sp.size} values but the image has {len(shape)} spatial axes: give one per axis ({'z, y, x' if len(shape) == 3 else 'y, x'})")
    if min_size is not None and (not np.isfinite(min_size) or min_size < 0):
        raise SamlabError(f"minimum size {min_size!r} must be a number >= 0 (pixels)")
    given = object_size is not None or object_size_um is not None
    if object_size is not None and object_size_um is not None:
        raise SamlabError("give the object size once: in pixels or in micrometres, not both")
    radius = radius_per_axis(shape, object_size, object_size_um, sp) if given else None
    channel = nucleus_channel(arr, rgb=colour, stain=stain) if engine == "classic" else None
    notes = []
    if engine == "classic":
        if float(channel.max() - channel.min()) <= 1e-6:
            return _empty(shape, "the image is constant: nothing to segment", return_result, engine)
        if radius is None:
            d = estimate_diameter(channel, sp)
            if d is None:
                return _empty(shape, "no objects stand out from the background", return_result, engine)
            d = float(np.clip(d, 4.0, min(shape[-2:]) / 2.0))
            radius = radius_per_axis(shape, diameter_px=d, spacing=sp)
        labels, scores, ntiles = _classic(channel, radius, sp, min_size, tile_size, progress, cancel)
    else:
        labels, scores, ntiles = _sam(model, arr, colour, shape, radius, min_size, points_per_side, window, progress, cancel)
    diam = float(2 * radius[-1]) if radius is not None else None
    if labels.max() == 0:
        notes.append("no objects found")
        warnings.warn("segment everything: no objects found", stacklevel=2)
    if return_result:
        return EverythingResult(labels, scores, diam, not given, engine, ntiles, notes)
    return labels


def _empty(shape, why: str, return_result: bool, engine: str):
    warnings.warn(f"segment everything: {why}; the result is empty", stacklevel=3)
    labels = np.zeros(shape, np.int32)
    if return_result:
        return EverythingResult(labels, np.zeros(0), None, True, engine, 0, [why])
    return labels


def _classic(channel, radius, sp, min_size, tile_size, progress, cancel):
    from .tiling import run_tiled

    settings = ClassicSettings()
    p = prepare(channel, radius, sp, min_size, settings)
    side = max(channel.shape[-2:])
    tile = int(tile_size) if tile_size else (DEFAULT_TILE if side > DEFAULT_TILE else 0)
    if tile and tile < 4 * radius[-1]:
        raise SamlabError(f"tile size {tile} px is smaller than four object diameters' worth ({int(4 * radius[-1])} px): use larger tiles")
    if not tile:
        if cancel is not None and cancel.is_set():
            from ..errors import Cancelled

            raise Cancelled("stopped on request")
        labels = instances_in(p, None, settings)
        if progress is not None:
            progress(1, 1)
        labels, scores = finish(labels, p)
        return labels, scores, 1
    # margin: objects of up to ~2.5 diameters are seen whole by the tile that keeps them; background
    # (4 r box) and distance (capped at 2 r) are local within it
    margin = int(np.ceil(5 * radius[-1])) + 8
    labels = run_tiled(channel.shape, lambda outer: instances_in(p, outer, settings), tile, margin, progress, cancel)
    labels, scores = finish(labels, p)
    from .tiling import tiles

    return labels, scores, len(list(tiles(channel.shape, tile, margin)))


def _sam(model, arr, colour, shape, radius, min_size, points_per_side, window, progress, cancel):
    from ..predict.predictor import SlicePredictor
    from .amg import sam_instances
    from .linking import link_slices

    if points_per_side is None and radius is not None:
        # about one point per object radius along the longer side, within SAM's usual 16..64
        points_per_side = int(np.clip(round(max(shape[-2:]) / (1.5 * radius[-1])), 16, 64))
    area = float(np.pi * radius[-1] * radius[-2]) if radius is not None else 0.0
    ms = float(min_size) if min_size is not None else 0.15 * area
    predictor = SlicePredictor(model)
    if len(shape) == 2:
        labels, scores = sam_instances(predictor, arr, window, ms, points_per_side, progress=progress, cancel=cancel)
        return labels, scores, 1
    from ..base.windowing import resolve_window

    win = resolve_window(window, arr, model, None)  # one mapping for every slice
    stack = np.zeros(shape, np.int32)
    score_of = {}
    for z in range(shape[0]):
        lab, sc = sam_instances(predictor, arr[z], win, ms, points_per_side, cancel=cancel)
        stack[z] = lab
        for v, s in enumerate(sc, start=1):
            score_of[(z, v)] = s
        if progress is not None:
            progress(z + 1, shape[0])
    linked = link_slices(stack)
    scores = np.zeros(int(linked.max()))
    for (z, v), s in score_of.items():  # an object's score: its best slice's
        ids = np.unique(linked[z][stack[z] == v])
        for i in ids[ids > 0]:
            scores[i - 1] = max(scores[i - 1], s)
    return linked, scores, 1
