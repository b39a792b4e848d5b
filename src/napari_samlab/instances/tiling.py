"""Tiles with overlap over the last two axes, and stitching of objects across tiles.

Each tile is processed with a margin around its *core*; an object is kept
by the tile whose core holds the object's centre (its first pixel in
raster order when the centre falls outside it, for crescent shapes), so
every object is produced exactly once and by a tile that sees all of it
when the margin exceeds the object's extent.  Objects are pasted with new
consecutive values; where two kept objects claim the same pixel (only
possible for objects larger than the margin) the first one keeps it.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
from scipy import ndimage as ndi

from ..errors import Cancelled

__all__ = ["tiles", "run_tiled"]


def tiles(shape: Tuple[int, ...], tile: int, margin: int) -> Iterator[Tuple[tuple, tuple]]:
    """Yield ``(outer, core)`` slice tuples covering the last two axes of ``shape``.

    Examples
    --------
    >>> [c for _, c in tiles((10, 10), 6, 2)][:2]
    [(slice(0, 6, None), slice(0, 6, None)), (slice(0, 6, None), slice(6, 10, None))]
    """
    h, w = shape[-2:]
    lead = (slice(None),) * (len(shape) - 2)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            outer = lead + (slice(max(0, y0 - margin), min(h, y1 + margin)), slice(max(0, x0 - margin), min(w, x1 + margin)))
            yield outer, lead + (slice(y0, y1), slice(x0, x1))


def run_tiled(shape: Tuple[int, ...], segment: Callable[[tuple], np.ndarray], tile: int, margin: int,
              progress: Optional[Callable[[int, int], None]] = None, cancel: Optional[threading.Event] = None) -> np.ndarray:
    """Run ``segment(outer_slices) -> labels of that region`` tile by tile and stitch.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the whole image.
    segment : callable
        Returns int labels (0 background) for the region ``outer``.
    tile, margin : int
        Core side and overlap in pixels.
    progress : callable, optional
        ``progress(done, total)`` after each tile.
    cancel : threading.Event, optional
        Checked before each tile; raises :class:`~napari_samlab.errors.Cancelled`.

    Returns
    -------
    ndarray of int32
        Labels 1..N over the whole image (consecutive).

    Examples
    --------
    >>> img = np.zeros((20, 20), bool); img[2:6, 2:6] = img[12:18, 12:18] = True
    >>> int(run_tiled(img.shape, lambda o: ndi.label(img[o])[0], tile=10, margin=5).max())
    2
    """
    out = np.zeros(shape, np.int32)
    plan = list(tiles(shape, tile, margin))
    nxt = 1
    for i, (outer, core) in enumerate(plan):
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped on request")
        lab = np.asarray(segment(outer))
        n = int(lab.max())
        if n:
            offs = np.array([s.start for s in outer[-2:]])
            ids = np.arange(1, n + 1)
            present = np.bincount(lab.ravel(), minlength=n + 1)[1:] > 0
            com = np.asarray(ndi.center_of_mass(np.ones_like(lab, np.uint8), lab, ids[present])).reshape(-1, lab.ndim)[:, -2:]
            cen = np.full((n, 2), -1, int)
            cen[present] = np.round(com).astype(int) + offs
            c_lo = np.array([core[-2].start, core[-1].start])
            c_hi = np.array([core[-2].stop, core[-1].stop])
            keep = np.all((cen >= c_lo) & (cen < c_hi), axis=1)
            # a centre outside every object (crescent) still lands in exactly one core: fine as is
            lut = np.zeros(n + 1, np.int32)
            kept = np.flatnonzero(keep) + 1
            lut[kept] = np.arange(nxt, nxt + len(kept), dtype=np.int32)
            nxt += len(kept)
            new = lut[lab]
            view = out[outer]
            free = (view == 0) & (new > 0)
            view[free] = new[free]
        if progress is not None:
            progress(i + 1, len(plan))
    # values lost entirely to earlier objects leave gaps: make them consecutive
    ids = np.unique(out)
    ids = ids[ids > 0]
    if len(ids) and ids[-1] != len(ids):
        lut = np.zeros(int(out.max()) + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1)
        out = lut[out]
    return out
