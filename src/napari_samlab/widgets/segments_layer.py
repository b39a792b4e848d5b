"""The "samlab segments" Labels layer of an image and the :class:`SegmentStore` behind it.

The layer's data *is* the store's label volume, so a commit written by the
core shows in napari after a refresh, and napari's brush edits are counted
back (``events.paint``).  One store per layer: switching images and back
finds the segments (and their names, colours, states) again.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Optional

import numpy as np

from ..session.segments import History, SegmentStore, default_color
from ._plane import spatial_shape

SEGMENTS_NAME = "samlab segments"


def voxel_mm3(image) -> float:
    """mm³ per voxel of an image layer (mm² per pixel in 2D), from the reader's spacing or the layer's scale."""
    geo = image.metadata.get("samlab") if isinstance(image.metadata.get("samlab"), dict) else {}
    spacing = geo.get("spacing")
    if spacing and len(spacing) == len(spatial_shape(image)):
        return float(np.prod(spacing))
    return float(np.prod(np.abs(image.scale)))


class SegmentsLayer:
    """Finds or creates the segments layer of the bound image; keeps a store per layer.

    Parameters
    ----------
    viewer : napari.Viewer
    history : History
        The panel's undo history, shared by every store.
    on_change : callable
        Called after any change of the store (commit, undo, state, brush).
    """

    def __init__(self, viewer, history: History, on_change: Callable[[], None]):
        self.viewer = viewer
        self.history = history
        self.on_change = on_change
        self.image = None
        self._layer = None
        self._stores: Dict[int, SegmentStore] = {}

    @property
    def layer(self):
        """The segments layer of the bound image (None until the first commit or when deleted)."""
        if self._layer is not None and self._layer not in self.viewer.layers:
            self._layer = None
        return self._layer

    @property
    def store(self) -> Optional[SegmentStore]:
        return self._stores.get(id(self.layer)) if self.layer is not None else None

    def bind(self, image, transform_kwargs: dict) -> None:
        """Follow ``image``; an existing segments layer of it is picked up at once."""
        self.image = image
        self._layer = None
        if image is not None and self._find() is not None:
            self.ensure(transform_kwargs)

    def _find(self):
        im = self.image
        for layer in self.viewer.layers:
            if (layer.metadata.get("samlab_role") == "segments" and layer.metadata.get("samlab_image") == im.name
                    and tuple(layer.data.shape) == spatial_shape(im)):
                return layer
        return None

    def ensure(self, transform_kwargs: dict):
        """The segments layer of the bound image, created (on its grid, with its geometry) when missing."""
        if self.layer is not None:
            return self._layer
        im = self.image
        tgt = self._find()
        if tgt is None:
            meta = copy.deepcopy(dict(im.metadata))
            meta.setdefault("samlab", {})
            if isinstance(meta["samlab"], dict):
                meta["samlab"]["channels"] = 1  # a label image: one value per voxel
            meta["samlab_role"] = "segments"
            meta["samlab_image"] = im.name
            active = self.viewer.layers.selection.active
            tgt = self.viewer.add_labels(np.zeros(spatial_shape(im), np.uint16), name=SEGMENTS_NAME, opacity=0.7,
                                         metadata=meta, **transform_kwargs)
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        self._layer = tgt
        if id(tgt) not in self._stores:
            store = SegmentStore(tgt.data, voxel_mm3(im), is2d=len(spatial_shape(im)) == 2, history=self.history)
            store.changed.append(self.on_change)
            self._stores[id(tgt)] = store
            tgt.events.paint.connect(self._on_painted)
        return tgt

    def protected_mask(self, label: int) -> Optional[np.ndarray]:
        """Voxels of completed/locked segments other than ``label`` (None when there are none)."""
        return None if self.store is None else self.store.protected_mask(label)

    def mask_of(self, label: int) -> Optional[np.ndarray]:
        """Committed voxels of ``label`` (None before any commit)."""
        return None if self.layer is None else np.asarray(self.layer.data) == int(label)

    def _on_painted(self, event=None) -> None:
        if self.store is not None:
            self.store.recount()

    def color(self, preview, current_color: tuple, takes_prompts: bool) -> None:
        """Segments in their own colours; the preview in the colour of the label it will be committed as."""
        from napari.utils.colormaps import DirectLabelColormap

        store = self.store
        if store is not None:
            colors = {None: (1.0, 1.0, 0.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
            colors.update({lab: tuple(s.color) for lab, s in store.segments.items()})
            self._layer.colormap = DirectLabelColormap(color_dict=colors)
        if preview is not None:
            colors = {None: tuple(current_color), 0: (0.0, 0.0, 0.0, 0.0)}
            if not takes_prompts:  # prompt-free families: one colour per class
                colors.update({v: default_color(v) for v in range(1, 256)})
            preview.colormap = DirectLabelColormap(color_dict=colors)
