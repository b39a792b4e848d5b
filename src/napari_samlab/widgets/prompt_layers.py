"""The napari layers that carry one image's prompts and preview, and their translation to the core.

"samlab points" (green = object, red = background), "samlab boxes" and
"samlab preview" belong to the bound image and carry its transforms.
:class:`PromptLayers` creates them on demand, reads every prompted plane
from them (:meth:`collect`: array indices of the plane, SPEC.md), and takes
and records prompt edits as undo steps.  No algorithm here.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional

import numpy as np

from ..errors import SamlabError
from ..base.prompts import Prompt
from ..session.segments import Action
from ._plane import Plane, box_on_plane, current_plane, spatial_shape, to_image_data

POINTS_NAME = "samlab points"
BOXES_NAME = "samlab boxes"
PREVIEW_NAME = "samlab preview"
POSITIVE_COLOR = (0.1, 0.85, 0.2, 1.0)
NEGATIVE_COLOR = (0.95, 0.15, 0.15, 1.0)


def point_colors(positive) -> np.ndarray:
    """Face colours (N, 4) for points of the given polarity: green = object, red = background."""
    pos = np.asarray(positive, bool)
    return np.where(pos[:, None], np.array(POSITIVE_COLOR), np.array(NEGATIVE_COLOR)).reshape(len(pos), 4)


class PromptLayers:
    """Points, boxes and preview layers of one image layer.

    Parameters
    ----------
    viewer : napari.Viewer
    image : napari.layers.Image
        The bound image; the helper layers take its transforms.
    on_prompt_event : callable
        Connected to the points' and boxes' ``events.data``.
    bind_keys : callable
        Called with each new layer, so the panel's shortcuts work on it.
    history : History
        Where prompt edits go as undo steps.
    on_restored : callable
        Called with ``recompute`` after undo/redo put prompts back.
    """

    def __init__(self, viewer, image, on_prompt_event: Callable, bind_keys: Callable, history=None,
                 on_restored: Callable = lambda recompute: None):
        self.history = history
        self.on_restored = on_restored
        self.recorded = None  # the prompts as the last undo step left them
        self.restoring = 0  # > 0 while the layers are changed by undo/commit, not by the user
        self.suspended = 0  # > 0 inside batch(): several edits, one undo step
        self.viewer = viewer
        self.image = image
        self.on_prompt_event = on_prompt_event
        self.bind_keys = bind_keys
        self.positive = True  # polarity of the next point
        self.planes: Dict[tuple, Plane] = {}  # preview planes that hold a result
        self._points = None
        self._boxes = None
        self._preview = None

    # -- the layers, created on demand -----------------------------------
    def _alive(self, layer):
        return layer if layer is not None and layer in self.viewer.layers else None

    @property
    def points(self):
        self._points = self._alive(self._points)
        return self._points

    @property
    def boxes(self):
        self._boxes = self._alive(self._boxes)
        return self._boxes

    @property
    def preview(self):
        self._preview = self._alive(self._preview)
        if self._preview is None:
            self.planes.clear()
        return self._preview

    def transform_kwargs(self) -> dict:
        im = self.image
        return {"scale": im.scale, "translate": im.translate, "rotate": im.rotate, "shear": im.shear,
                "affine": im.affine.affine_matrix}

    def _keep_active(self, active) -> None:
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def ensure_points(self):
        if self.points is not None:
            return self._points
        im = self.image
        shape = spatial_shape(im)
        size = max(3.0, 0.015 * max(shape[-2:]))
        pts = self.viewer.add_points(
            np.zeros((0, im.ndim)), ndim=im.ndim, name=POINTS_NAME, size=size,
            features={"positive": np.zeros(0, bool), "axes": np.zeros(0, object)},
            border_color="white", border_width=0.1, out_of_slice_display=False,
            metadata={"samlab_role": "points", "samlab_image": im.name}, **self.transform_kwargs())
        self._points = pts
        self.update_defaults()
        pts.events.data.connect(self.on_prompt_event)
        self.bind_keys(pts)
        self.viewer.layers.selection.active = pts
        pts.mode = "add"
        return pts

    def ensure_boxes(self):
        if self.boxes is not None:
            return self._boxes
        im = self.image
        shape = spatial_shape(im)
        boxes = self.viewer.add_shapes(
            ndim=im.ndim, name=BOXES_NAME, edge_color="yellow", face_color="transparent",
            edge_width=max(1.0, 0.004 * max(shape[-2:])), features={"axes": np.zeros(0, object)},
            metadata={"samlab_role": "boxes", "samlab_image": im.name}, **self.transform_kwargs())
        self._boxes = boxes
        self.update_defaults()
        boxes.events.data.connect(self.on_prompt_event)
        self.bind_keys(boxes)
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        return boxes

    def ensure_preview(self):
        if self.preview is not None:
            return self._preview
        im = self.image
        active = self.viewer.layers.selection.active
        pv = self.viewer.add_labels(np.zeros(spatial_shape(im), np.uint8), name=PREVIEW_NAME, opacity=0.6,
                                    metadata={"samlab_role": "preview", "samlab_image": im.name},
                                    **self.transform_kwargs())
        self._preview = pv
        self.planes.clear()
        self.bind_keys(pv)
        self._keep_active(active)  # keep the user prompting
        return pv

    def arrange(self, target=None) -> None:
        """Keep image < segments < preview < boxes < points, so prompts stay clickable on top."""
        layers = self.viewer.layers
        for layer in [la for la in (target, self.preview, self.boxes, self.points) if la is not None and la in layers]:
            i = layers.index(layer)
            if i != len(layers) - 1:
                layers.move(i, len(layers))

    def remove(self) -> None:
        """Remove the helper layers (the image is being unbound)."""
        for layer in (self.points, self.boxes, self.preview):
            if layer is not None:
                with contextlib.suppress(ValueError, KeyError):
                    self.viewer.layers.remove(layer)
        self._points = self._boxes = self._preview = None
        self.planes.clear()

    # -- polarity and colours --------------------------------------------
    def update_defaults(self) -> None:
        """New points take the current polarity and the displayed orientation."""
        try:
            axes = current_plane(self.viewer, self.image).axes_text
        except SamlabError:
            axes = ""
        if self.points is not None:
            self._points.feature_defaults = {"positive": self.positive, "axes": axes}
            self._points.current_face_color = POSITIVE_COLOR if self.positive else NEGATIVE_COLOR
        if self.boxes is not None:
            self._boxes.feature_defaults = {"axes": axes}

    def recolor_points(self) -> None:
        pts = self.points
        if pts is None or len(pts.data) == 0:
            return
        colors = point_colors(pts.features["positive"].to_numpy(bool))
        if not np.allclose(pts.face_color, colors):
            pts.face_color = colors

    def flip_selected(self) -> bool:
        """Flip the polarity of the selected points (select mode); False when none is selected."""
        pts = self.points
        if pts is None or pts.mode != "select" or not pts.selected_data:
            return False
        idx = np.array(sorted(pts.selected_data))
        pos = pts.features["positive"].to_numpy(bool).copy()
        pos[idx] = ~pos[idx]
        feats = pts.features.copy()
        feats["positive"] = pos
        pts.features = feats
        self.recolor_points()
        return True

    # -- reading prompts ---------------------------------------------------
    def collect(self) -> Dict[tuple, tuple]:
        """Every prompted plane: key -> (Plane, Prompt or None); None = only background clicks so far."""
        im = self.image
        out: Dict[tuple, list] = {}
        shape = spatial_shape(im)
        ndim = len(shape)
        try:
            cur_axes = current_plane(self.viewer, im).axes
        except SamlabError:
            cur_axes = (ndim - 2, ndim - 1)

        def axes_of(text) -> tuple:
            if isinstance(text, str) and text:
                return tuple(int(a) for a in text.split(","))
            return cur_axes

        pts = self.points
        if pts is not None and len(pts.data):
            coords = to_image_data(pts, im, pts.data)
            pos = pts.features["positive"].to_numpy(bool) if "positive" in pts.features else np.ones(len(coords), bool)
            axes = pts.features["axes"].to_numpy() if "axes" in pts.features else [None] * len(coords)
            for c, p, a in zip(coords, pos, axes):
                plane = Plane.of_point(c, axes_of(a), ndim)
                h, w = plane.shape2d(shape)
                x, y = plane.to_xy(c)
                xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
                if not (0 <= xi < w and 0 <= yi < h) or not all(0 <= i < shape[ax] for ax, i in plane.index):
                    continue  # a click beside the image: nothing to segment there
                entry = out.setdefault(plane.key, [plane, None, [], []])
                entry[2].append((xi, yi))
                entry[3].append(1 if p else 0)
        boxes = self.boxes
        if boxes is not None and len(boxes.data):
            axes = boxes.features["axes"].to_numpy() if "axes" in boxes.features else [None] * len(boxes.data)
            for verts, st, a in zip(boxes.data, boxes.shape_type, axes):
                if st != "rectangle":
                    continue
                vd = to_image_data(boxes, im, verts)
                plane = Plane.of_point(vd[0], axes_of(a), ndim)
                if not all(0 <= i < shape[ax] for ax, i in plane.index):
                    continue
                box = box_on_plane(vd, plane, plane.shape2d(shape))
                if box is None:
                    continue
                entry = out.setdefault(plane.key, [plane, None, [], []])
                entry[1] = box  # one box per slice: the newest one counts
        result = {}
        for key, (plane, box, points, labels) in out.items():
            if box is None and not any(labels):
                prompt = None
            else:
                prompt = Prompt(box=box, points=points or None, point_labels=labels or None)
            result[key] = (plane, prompt)
        return result

    def prompts_along(self, axes: tuple) -> Dict[int, Prompt]:
        """``{slice: Prompt}`` of the planes with displayed ``axes`` (a volume's propagation anchors)."""
        return {int(p.index[0][1]): pr for p, pr in self.collect().values()
                if tuple(p.axes) == tuple(axes) and pr is not None and len(p.index) == 1}

    # -- writing prompts ---------------------------------------------------
    def to_prompt_coords(self, prompt_layer, data_point) -> np.ndarray:
        im = self.image
        same = to_image_data(prompt_layer, im, np.asarray(data_point)[None])  # identity when aligned
        if np.allclose(same[0], data_point):
            return np.asarray(data_point, float)
        return np.asarray(prompt_layer.world_to_data(im.data_to_world(data_point)), float)

    def add_point(self, plane: Plane, x: float, y: float, positive: bool) -> None:
        pts = self.ensure_points()
        coord = self.to_prompt_coords(pts, plane.data_point(x, y))
        old = self.positive
        self.positive = bool(positive)
        self.update_defaults()
        try:
            pts.add(coord)
        finally:
            self.positive = old
            self.update_defaults()

    def add_box(self, plane: Plane, x0, y0, x1, y1, replace: bool) -> None:
        boxes = self.ensure_boxes()
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        verts = np.stack([self.to_prompt_coords(boxes, plane.data_point(x, y)) for x, y in corners])
        if replace:
            self.remove_boxes_on(plane)
        boxes.add_rectangles(verts)

    def remove_boxes_on(self, plane: Plane) -> None:
        boxes = self.boxes
        if boxes is None or not len(boxes.data):
            return
        axes = boxes.features["axes"].to_numpy() if "axes" in boxes.features else [None] * len(boxes.data)
        drop = set()
        for i, (verts, a) in enumerate(zip(boxes.data, axes)):
            vd = to_image_data(boxes, self.image, verts)
            if (a in (None, "") or a == plane.axes_text) and plane.contains(vd[0]):
                drop.add(i)
        if drop:
            boxes.selected_data = drop
            boxes.remove_selected()

    def clear(self) -> None:
        """Remove every point and box."""
        pts = self.points
        if pts is not None and len(pts.data):
            pts.selected_data = set()
            pts.data = np.zeros((0, pts.ndim))
        boxes = self.boxes
        if boxes is not None and len(boxes.data):
            boxes.selected_data = set()
            boxes.data = []

    # -- snapshots for undo --------------------------------------------------
    def snapshot(self):
        """The prompts as plain arrays: ``(points, boxes)``, each None when its layer does not exist."""
        p = b = None
        pts, boxes = self.points, self.boxes
        if pts is not None:
            f = pts.features
            p = (np.array(pts.data, float, copy=True),
                 f["positive"].to_numpy(bool).copy() if "positive" in f else np.ones(len(pts.data), bool),
                 f["axes"].to_numpy().copy() if "axes" in f else np.array([None] * len(pts.data), object))
        if boxes is not None:
            f = boxes.features
            b = ([np.array(d, float, copy=True) for d in boxes.data], list(boxes.shape_type),
                 f["axes"].to_numpy().copy() if "axes" in f else np.array([None] * len(boxes.data), object))
        return (p, b)

    @staticmethod
    def same_snapshot(a, b) -> bool:
        if a is None or b is None:
            return a is b
        (pa, ba), (pb, bb) = a, b
        n = lambda p: 0 if p is None else len(p[0])  # noqa: E731
        if n(pa) != n(pb) or n(ba) != n(bb):
            return False
        if n(pa) and not (np.array_equal(pa[0], pb[0]) and np.array_equal(pa[1], pb[1])):
            return False
        if n(ba) and not all(np.array_equal(x, y) for x, y in zip(ba[0], bb[0])):
            return False
        return True

    def restore(self, state) -> None:
        """Put the prompts of a :meth:`snapshot` back on the layers."""
        import pandas as pd

        p, b = state if state is not None else (None, None)
        if p is not None or self.points is not None:
            pts = self.ensure_points()
            data, pos, axes = p if p is not None else (np.zeros((0, pts.ndim)), np.zeros(0, bool), np.zeros(0, object))
            pts.selected_data = set()
            pts.data = data
            pts.features = pd.DataFrame({"positive": np.asarray(pos, bool), "axes": np.asarray(axes, object)})
            self.recolor_points()
        if b is not None or self.boxes is not None:
            boxes = self.ensure_boxes()
            verts, types, axes = b if b is not None else ([], [], np.zeros(0, object))
            boxes.selected_data = set()
            boxes.data = []
            if verts:
                boxes.add(verts, shape_type=types)
            boxes.features = pd.DataFrame({"axes": np.asarray(axes, object)})
        self.update_defaults()

    # -- undo steps --------------------------------------------------------------
    def record(self, text: str) -> None:
        """Push the change since the last recorded state as one undo step (nothing if unchanged)."""
        new = self.snapshot()
        old = self.recorded
        if old is not None and self.same_snapshot(old, new):
            return
        old = old if old is not None else (None, None)
        self.recorded = new
        self.history.push(Action(text, lambda: self.put_back(old), lambda: self.put_back(new)))

    @contextlib.contextmanager
    def batch(self, text: str):
        """Several layer edits that undo as one step."""
        self.suspended += 1
        try:
            yield
        finally:
            self.suspended -= 1
            if not self.suspended:
                self.record(text)

    @contextlib.contextmanager
    def quietly(self):
        """Layer edits that are not the user's (undo, commit): no undo step, no live update."""
        self.restoring += 1
        try:
            yield
        finally:
            self.restoring -= 1
        self.recorded = self.snapshot()

    def put_back(self, state, recompute: bool = True) -> None:
        """Undo/redo: the prompts of ``state`` go back on the layers."""
        with self.quietly():
            self.restore(state)
        self.on_restored(recompute)

    # -- preview -------------------------------------------------------------
    def write_preview(self, plane: Plane, values: Optional[np.ndarray]) -> None:
        """Write one plane's result into the preview (None clears it)."""
        if values is None:
            if self.preview is not None:
                plane.view(self._preview.data)[...] = 0
                self._preview.refresh()
            self.planes.pop(plane.key, None)
            return
        pv = self.ensure_preview()
        plane.view(pv.data)[...] = np.asarray(values).astype(np.uint8)
        self.planes[plane.key] = plane
        pv.refresh()

    def preview_snapshot(self):
        pv = self.preview
        if pv is None:
            return (np.zeros(0, np.int64), np.zeros(0, np.uint8), {})
        idx = np.flatnonzero(pv.data)
        return (idx, pv.data.ravel()[idx].copy(), dict(self.planes))

    def restore_preview(self, snap) -> None:
        idx, vals, planes = snap
        pv = self.ensure_preview()
        pv.data[...] = 0
        pv.data.reshape(-1)[idx] = vals
        self.planes = dict(planes)
        pv.refresh()

    def clear_preview(self) -> None:
        if self.preview is not None:
            self._preview.data[...] = 0
            self._preview.refresh()
        self.planes.clear()
