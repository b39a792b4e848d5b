"""The segmentation panel: prompts in, live preview, commit into named segments.

The panel only translates.  Prompts live on two napari layers ("samlab
points", "samlab boxes") that carry the image's transforms; for every plane
that holds prompts it cuts the 2D slice that napari shows, turns the prompts
into the slice's array indices (x = column, y = row, SPEC.md) and asks the
shared :class:`~napari_samlab.predict.predictor.SlicePredictor` in a worker
thread.  Each answer is written back into *its own* plane of the "samlab
preview" layer, and only if it is the newest request for that plane, so
scrolling while a slice is being encoded never puts a mask on the wrong
slice.  Commit copies the preview into a label layer on the image's grid and
records the segment (name, colour, voxels, mL, state).

Everything the buttons do is a public method, so sessions can be scripted
from napari's console (see :class:`SegmentationWidget`).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QCheckBox, QColorDialog, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox,
    QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton, QSpinBox,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..errors import SamlabError
from ..models.base import Prompt
from ..base.windowing import PRESET_NAMES, resolve_window
from ._common import Notifier, progress_and_cancel, wait_until
from ._plane import (
    Plane, box_on_plane, current_plane, displayed_order_for, layer_array, spatial_shape, to_image_data,
)
from ._segments import (
    STATES, Action, History, SegmentTable, default_color, plan_commit,
)
from ._session import ModelSession, session_for

POINTS_NAME = "samlab points"
BOXES_NAME = "samlab boxes"
PREVIEW_NAME = "samlab preview"
SEGMENTS_NAME = "samlab segments"
WINDOW_CHOICES = (*PRESET_NAMES, "manual")
POSITIVE_COLOR = (0.1, 0.85, 0.2, 1.0)
NEGATIVE_COLOR = (0.95, 0.15, 0.15, 1.0)
DEBOUNCE_MS = 150

# napari key names; shown in tooltips and returned by SegmentationWidget.shortcuts()
SHORTCUTS = {
    "segment": "Shift-S",
    "commit": "Shift-C",
    "toggle polarity": "N",
    "next slice": "Shift-Right",
    "previous slice": "Shift-Left",
    "undo": "Control-Z",
    "redo": "Control-Shift-Z",
    "next flagged slice": "Shift-F",
}


def _pretty(key: str) -> str:
    return key.replace("Control", "Ctrl").replace("-", "+")


@dataclass
class _Request:
    """One plane to encode (and decode, when ``prompt`` is set) in a worker."""

    rid: int
    plane: Plane
    prompt: Optional[Prompt]
    window: object
    extract: Callable[[], np.ndarray]
    generation: int
    image_id: int


def _run_requests(session: ModelSession, predictor, requests: List[_Request]):
    """Worker body: encode/decode each request, yielding after every slice.

    Yielding between slices is what lets Cancel (``worker.quit()``) stop a
    multi-slice encode part way.
    """
    for i, req in enumerate(requests):
        image2d = req.extract()
        with session.lock:
            predictor.set_image(image2d, window=req.window)
            pred = predictor.predict_prompt(req.prompt) if req.prompt is not None else None
        yield (i + 1, len(requests), req, pred)


def _alive(widget) -> bool:
    """False once Qt deleted the widget (napari closed) while a worker still ran."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return not getattr(widget, "_closed", False)


def _while_alive(method):
    """Decorator for callbacks from workers and napari events: skip once the panel is gone."""

    def wrapper(self, *args, **kwargs):
        if not _alive(self):
            return None
        return method(self, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _prompt_key(prompt: Optional[Prompt]):
    if prompt is None:
        return None
    pts = tuple(tuple(p) for p in (prompt.points or ()))
    return (prompt.box, pts, tuple(prompt.point_labels or ()))


class SegmentationWidget(QWidget):
    """Segmentation panel for the selected image layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Examples
    --------
    A scripted session in napari's console (x = column, y = row of the
    displayed slice)::

        from napari_samlab.widgets import SegmentationWidget
        seg = SegmentationWidget(viewer)
        viewer.window.add_dock_widget(seg, name="Segment")
        seg.set_image_layer("CT chest")
        seg.set_window("ct-lung")
        seg.set_slice(30)
        seg.set_box(260, 200, 330, 260)
        seg.segment(wait=True)            # preview mask of the slice
        seg.commit(name="tumour", label=1)
        seg.segments                      # [{'label': 1, 'voxels': ..., 'volume_ml': ...}]
        seg.undo(); seg.redo()
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: ModelSession = session_for(napari_viewer)
        self.notes = Notifier()
        self.history = History()
        self.last_error: Optional[str] = None
        self.last_score: Optional[float] = None
        self.discarded = 0  # results dropped because newer prompts had replaced them

        self._image = None
        self._points = None
        self._boxes = None
        self._preview = None
        self._target = None
        self._tables: Dict[int, SegmentTable] = {}
        self._positive = True
        self._rid = itertools.count(1)
        self._latest: Dict[tuple, int] = {}
        self._queue: "OrderedDict[tuple, _Request]" = OrderedDict()
        self._computed: Dict[tuple, object] = {}  # plane key -> prompt key last sent
        self._preview_planes: Dict[tuple, Plane] = {}
        self._worker = None
        self._encode_worker = None
        self._window_cache: Dict[tuple, object] = {}
        self._restoring = 0
        self._suspend_record = 0
        self._setting_contrast = False
        self._prompt_state = None
        self._next_color = None
        self._closed = False

        self.session.ensure_model()
        self._build_ui()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._update)

        self.viewer.layers.events.inserted.connect(self._refresh_image_choices)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.viewer.dims.events.order.connect(self._on_dims)
        self.viewer.dims.events.ndisplay.connect(self._on_dims)
        self.session.about_to_change.connect(self._on_model_about_to_change)
        self.session.changed.connect(self._on_model_changed)
        self._bind_keys(self.viewer)
        self._refresh_image_choices()
        active = self.viewer.layers.selection.active
        if self._is_image(active):
            self.set_image_layer(active)

    # ======================================================================
    # UI
    # ======================================================================
    def _build_ui(self) -> None:
        sc = {k: _pretty(v) for k, v in SHORTCUTS.items()}
        lay = QVBoxLayout(self)

        src = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("image layer to segment (follows the selected layer)")
        self.image_combo.currentTextChanged.connect(self._on_image_combo)
        src.addRow("Image", self.image_combo)
        self.source_combo = QComboBox()
        self.source_combo.addItems(["this layer", "composite (visible layers)"])
        self.source_combo.setToolTip("microscopy with one layer per channel: segment the selected channel, "
                                     "or a colour composite of the visible channel layers as displayed")
        self.source_combo.currentTextChanged.connect(lambda _: self._on_window_inputs_changed())
        src.addRow("Channels", self.source_combo)
        wrow = QHBoxLayout()
        self.window_combo = QComboBox()
        self.window_combo.addItems(WINDOW_CHOICES)
        self.window_combo.setToolTip("what the model sees; the layer's contrast limits are set to the same range "
                                     "(auto = the model family's own preprocessing)")
        self.level_spin = QDoubleSpinBox()
        self.width_spin = QDoubleSpinBox()
        for s, v in ((self.level_spin, 40.0), (self.width_spin, 400.0)):
            s.setRange(-1e6, 1e6)
            s.setDecimals(1)
            s.setValue(v)
            s.setEnabled(False)
        self.level_spin.setToolTip("window level (manual)")
        self.width_spin.setToolTip("window width (manual)")
        self.window_combo.currentTextChanged.connect(self._on_window_combo)
        self.level_spin.editingFinished.connect(self._on_window_inputs_changed)
        self.width_spin.editingFinished.connect(self._on_window_inputs_changed)
        wrow.addWidget(self.window_combo)
        wrow.addWidget(QLabel("L"))
        wrow.addWidget(self.level_spin)
        wrow.addWidget(QLabel("W"))
        wrow.addWidget(self.width_spin)
        src.addRow("Window", wrow)
        vrow = QHBoxLayout()
        for view in ("axial", "coronal", "sagittal"):
            b = QPushButton(view)
            b.setToolTip(f"prompt on the {view} plane of a volume")
            b.clicked.connect(lambda _=False, v=view: self._guard(lambda: self.set_view(v), f"showing the {v} plane"))
            vrow.addWidget(b)
        src.addRow("View", vrow)
        lay.addLayout(src)

        pbox = QGroupBox("Prompts")
        pl = QVBoxLayout(pbox)
        row = QHBoxLayout()
        self.points_button = QPushButton("Points")
        self.points_button.setToolTip("click on the image to add points (green = object, red = background)")
        self.points_button.clicked.connect(lambda: self._guard(self.start_points, "adding points"))
        self.polarity_button = QPushButton("+ object")
        self.polarity_button.setCheckable(True)
        self.polarity_button.setToolTip(f"polarity of the next point; toggles selected points in select mode [{sc['toggle polarity']}]")
        self.polarity_button.clicked.connect(lambda: self._guard(self.toggle_polarity, "toggling polarity"))
        self.box_button = QPushButton("Box")
        self.box_button.setToolTip("drag a rectangle around the object (one box per slice)")
        self.box_button.clicked.connect(lambda: self._guard(self.start_box, "drawing a box"))
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("remove all prompts and the preview")
        self.clear_button.clicked.connect(lambda: self._guard(self.clear_prompts, "clearing prompts"))
        for b in (self.points_button, self.polarity_button, self.box_button, self.clear_button):
            row.addWidget(b)
        pl.addLayout(row)
        row = QHBoxLayout()
        self.live_check = QCheckBox("live")
        self.live_check.setChecked(True)
        self.live_check.setToolTip("update the preview as prompts are added, moved or deleted")
        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip(f"segment the prompted slices now [{sc['segment']}]")
        self.segment_button.clicked.connect(lambda: self._guard(self.segment, "segmenting"))
        self.encode_button = QPushButton("Encode slices")
        self.encode_button.setToolTip("embed every slice along the current axis in the background, "
                                      "so prompting on any of them answers at once")
        self.encode_button.clicked.connect(lambda: self._guard(self.encode_slices, "encoding slices"))
        row.addWidget(self.live_check)
        row.addWidget(self.segment_button)
        row.addWidget(self.encode_button)
        pl.addLayout(row)
        row = QHBoxLayout()
        self.progress, self.cancel_button = progress_and_cancel(
            "stop encoding after the current slice", lambda: self._guard(self.cancel, "cancelling"))
        row.addWidget(self.progress)
        row.addWidget(self.cancel_button)
        pl.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        pl.addWidget(self.status)
        lay.addWidget(pbox)

        from .propagation_panel import PropagationPanel

        self.propagation = PropagationPanel(self)
        lay.addWidget(self.propagation)

        cbox = QGroupBox("Commit")
        cf = QFormLayout(cbox)
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setValue(1)
        self.label_spin.setToolTip("label value written into the segments layer")
        self.label_spin.valueChanged.connect(self._on_label_changed)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("segment 1")
        self.color_button = QPushButton("")
        self.color_button.setToolTip("segment colour")
        self.color_button.clicked.connect(lambda: self._guard(self._pick_color, "choosing a colour"))
        row = QHBoxLayout()
        row.addWidget(self.label_spin)
        row.addWidget(self.name_edit, 1)
        row.addWidget(self.color_button)
        cf.addRow("Label", row)
        self.overwrite_check = QCheckBox("overwrite completed/locked segments")
        self.overwrite_check.setToolTip("off: voxels of completed or locked segments are never overwritten")
        cf.addRow(self.overwrite_check)
        row = QHBoxLayout()
        self.commit_button = QPushButton("Commit")
        self.commit_button.setToolTip(f"write the preview into the segments layer [{sc['commit']}]")
        self.commit_button.clicked.connect(lambda: self._guard(self.commit, "committing"))
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip(f"undo the last prompt or commit [{sc['undo']}]")
        self.undo_button.clicked.connect(lambda: self._guard(self.undo, "undoing"))
        self.redo_button = QPushButton("Redo")
        self.redo_button.setToolTip(f"redo [{sc['redo']}]")
        self.redo_button.clicked.connect(lambda: self._guard(self.redo, "redoing"))
        row.addWidget(self.commit_button)
        row.addWidget(self.undo_button)
        row.addWidget(self.redo_button)
        cf.addRow(row)
        lay.addWidget(cbox)

        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["", "label", "name", "voxels", "volume (mL)", "state"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.table.horizontalHeader()
        for col in (0, 1, 3, 4, 5):
            header.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.Stretch)
        self.table.setMinimumHeight(120)
        self.table.setToolTip("click a row to add to that segment; set its state to completed or locked to protect it")
        self.table.cellClicked.connect(self._on_table_clicked)
        lay.addWidget(self.table, 1)

        keys = QLabel("Keys: " + ", ".join(f"{v} {k}" for k, v in sc.items()))
        keys.setWordWrap(True)
        keys.setStyleSheet("color: gray")
        lay.addWidget(keys)
        self.setToolTip("Shortcuts:\n" + "\n".join(f"{v}: {k}" for k, v in sc.items()))
        self._update_color_button()

    # ======================================================================
    # public, scriptable API
    # ======================================================================
    @staticmethod
    def shortcuts() -> Dict[str, str]:
        """Keyboard shortcuts, action -> key (as napari writes them, e.g. ``"Shift+S"``)."""
        return {k: _pretty(v) for k, v in SHORTCUTS.items()}

    @property
    def image_layer(self):
        return self._image

    @property
    def points_layer(self):
        return self._points

    @property
    def boxes_layer(self):
        return self._boxes

    @property
    def preview_layer(self):
        return self._preview

    @property
    def target_layer(self):
        return self._target

    @property
    def busy(self) -> bool:
        """Whether prompts are waiting or a worker is running."""
        return (self._worker is not None or self._encode_worker is not None or bool(self._queue)
                or self._debounce.isActive() or self.propagation.running)

    @property
    def segments(self) -> List[dict]:
        """The segment list: label, name, colour, voxels, volume_ml (area_mm2 for 2D), state."""
        table = self._table()
        return table.rows() if table is not None else []

    @property
    def positive(self) -> bool:
        """Polarity of the next point (True = object)."""
        return self._positive

    def set_image_layer(self, layer) -> None:
        """Segment ``layer`` (a napari Image layer or its name)."""
        if isinstance(layer, str):
            layer = self.viewer.layers[layer]
        if not self._is_image(layer):
            raise SamlabError(f"{getattr(layer, 'name', layer)!r} is not an image layer: choose an image to segment")
        if layer is self._image:
            return
        self.cancel()
        if self._image is not None:
            with contextlib.suppress(Exception):
                self._image.events.contrast_limits.disconnect(self._on_user_contrast)
            self._detach_helpers()
        self._image = layer
        layer.events.contrast_limits.connect(self._on_user_contrast)
        if self.image_combo.currentText() != layer.name:
            self.image_combo.blockSignals(True)
            self.image_combo.setCurrentText(layer.name)
            self.image_combo.blockSignals(False)
        self._target = None
        if self._find_target() is not None:  # segments made earlier for this image
            self._ensure_target()
        self.source_combo.setEnabled(not layer.rgb)
        self._apply_window()
        self._sync_label_fields()
        self._refresh_table()
        self._show_status()
        self.propagation.schedule_prefetch()

    def set_window(self, preset: str = "auto", level: Optional[float] = None, width: Optional[float] = None) -> None:
        """Choose the model input window and set the layer's contrast limits to it.

        ``preset`` is one of auto, none, ct-abdomen, ct-lung, ct-bone,
        ct-brain, mr, or manual (with ``level`` and ``width``).  Giving only
        ``level`` and ``width`` means manual.
        """
        if level is not None and width is not None:
            preset = "manual"
        preset = str(preset).lower()
        if preset not in WINDOW_CHOICES:
            raise SamlabError(f"unknown window {preset!r}: use one of {', '.join(WINDOW_CHOICES)}")
        if preset == "manual":
            if level is None or width is None:
                level, width = self.level_spin.value(), self.width_spin.value()
            if float(width) <= 0:
                raise SamlabError(f"window width {width} is not positive: give a width > 0")
            self.level_spin.setValue(float(level))
            self.width_spin.setValue(float(width))
        self.window_combo.blockSignals(True)
        self.window_combo.setCurrentText(preset)
        self.window_combo.blockSignals(False)
        self.level_spin.setEnabled(preset == "manual")
        self.width_spin.setEnabled(preset == "manual")
        self._on_window_inputs_changed()

    @property
    def window(self):
        """The resolved :class:`~napari_samlab.base.windowing.Window` (None = values as they are)."""
        return self._resolved_window()

    def set_source(self, source: str) -> None:
        """``"layer"`` (the selected channel) or ``"composite"`` (visible channel layers as displayed)."""
        self.source_combo.setCurrentIndex(1 if str(source).startswith("comp") else 0)

    def set_view(self, view: str) -> None:
        """Show the ``"axial"``, ``"coronal"`` or ``"sagittal"`` plane of the volume."""
        layer = self._require_image()
        self.viewer.dims.ndisplay = 2
        self.viewer.dims.order = displayed_order_for(view, layer.ndim, self.viewer.dims.ndim)

    def set_slice(self, index: int, axis: Optional[int] = None) -> None:
        """Go to slice ``index`` along data ``axis`` (default: the axis the view steps through)."""
        layer = self._require_image()
        plane = self.current_plane()
        if not plane.index:
            raise SamlabError("the image is 2D: there are no slices to go to")
        if axis is None:
            axis = plane.index[-1][0]
        shape = spatial_shape(layer)
        if not 0 <= int(index) < shape[axis]:
            raise SamlabError(f"slice {index} is outside the image: choose 0..{shape[axis] - 1}")
        offset = self.viewer.dims.ndim - layer.ndim
        data_pt = np.asarray(layer.world_to_data(np.asarray(self.viewer.dims.point, float)), float)
        data_pt[axis] = int(index)
        world = np.asarray(layer.data_to_world(data_pt), float)
        self.viewer.dims.set_point(offset + axis, float(world[axis]))

    def next_slice(self, step: int = 1) -> None:
        """Step through the volume along the axis that is not displayed."""
        plane = self.current_plane()
        if not plane.index:
            return
        axis, idx = plane.index[-1]
        n = spatial_shape(self._image)[axis]
        self.set_slice(min(max(idx + step, 0), n - 1), axis)

    def previous_slice(self) -> None:
        self.next_slice(-1)

    def current_plane(self) -> Plane:
        """The plane of the image layer that the viewer displays now."""
        return current_plane(self.viewer, self._require_image())

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        """Add a point prompt at column ``x``, row ``y`` of the displayed slice."""
        plane = self.current_plane()
        self._check_xy(plane, x, y)
        pts = self._ensure_points()
        coord = self._to_prompt_coords(pts, plane.data_point(x, y))
        old = self._positive
        self._positive = bool(positive)
        self._update_feature_defaults()
        try:
            pts.add(coord)
        finally:
            self._positive = old
            self._update_feature_defaults()

    def set_box(self, x0: float, y0: float, x1: float, y1: float, replace: bool = True) -> None:
        """Box prompt ``(x0, y0, x1, y1)`` (pixel indices, inclusive) on the displayed slice.

        With ``replace`` the slice's previous box is removed (one box per slice).
        """
        plane = self.current_plane()
        if x1 < x0 or y1 < y0:
            raise SamlabError(f"box ({x0}, {y0}, {x1}, {y1}) is empty: give x1 >= x0 and y1 >= y0")
        self._check_xy(plane, x0, y0)
        self._check_xy(plane, x1, y1)
        boxes = self._ensure_boxes()
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        verts = np.stack([self._to_prompt_coords(boxes, plane.data_point(x, y)) for x, y in corners])
        with self._batch("box"):
            if replace:
                self._remove_boxes_on(plane)
            boxes.add_rectangles(verts)

    def clear_prompts(self) -> None:
        """Remove every point and box (one undo step); the preview follows."""
        with self._batch("clear prompts"):
            self._clear_prompt_layers()

    def toggle_polarity(self) -> None:
        """Flip the polarity of selected points (select mode) or of the next point."""
        pts = self._points
        if pts is not None and pts in self.viewer.layers and pts.mode == "select" and pts.selected_data:
            idx = np.array(sorted(pts.selected_data))
            with self._batch("polarity"):
                pos = pts.features["positive"].to_numpy(bool).copy()
                pos[idx] = ~pos[idx]
                feats = pts.features.copy()
                feats["positive"] = pos
                pts.features = feats
                self._recolor_points()
            self._request_update()
        else:
            self._positive = not self._positive
            self._update_feature_defaults()
        self.polarity_button.blockSignals(True)
        self.polarity_button.setChecked(not self._positive)
        self.polarity_button.setText("+ object" if self._positive else "− background")
        self.polarity_button.blockSignals(False)

    def start_points(self) -> None:
        """Make the points layer active in add mode (click to prompt)."""
        pts = self._ensure_points()
        self.viewer.layers.selection.active = pts
        pts.mode = "add"

    def start_box(self) -> None:
        """Make the boxes layer active in rectangle mode (drag to prompt)."""
        boxes = self._ensure_boxes()
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"

    def segment(self, wait: bool = False, timeout: float = 300) -> Optional[np.ndarray]:
        """Segment every prompted plane that changed, and the displayed one.

        With ``wait=True`` (scripts) returns the preview mask of the
        displayed slice (bool, rows x columns) once it is there, and raises
        :class:`SamlabError` if segmenting failed.
        """
        self._debounce.stop()
        self.last_error = None
        try:
            plane = self.current_plane()
            if self._model_takes_prompts() and self._collect().get(plane.key, (None, None))[1] is None:
                self.notes.info(f"nothing to segment on {plane.name}: draw a box or click on the object first")
            self._update(force=[plane])
        except SamlabError as exc:
            self.notes.error(str(exc))
            if wait:
                raise
            return None
        if not wait:
            return None
        if not wait_until(lambda: not self.busy, timeout):
            raise SamlabError(f"segmenting did not finish within {timeout:g} s: press Cancel or use a faster model")
        if self.last_error:
            raise SamlabError(self.last_error)
        return self.preview_mask(plane)

    def preview_mask(self, plane: Optional[Plane] = None) -> np.ndarray:
        """The preview of ``plane`` (default: displayed) as bool rows x columns."""
        plane = plane or self.current_plane()
        if self._preview is None:
            return np.zeros(plane.shape2d(spatial_shape(self._require_image())), bool)
        return plane.view(self._preview.data) > 0

    def encode_slices(self, indices=None, wait: bool = False, timeout: float = 3600) -> None:
        """Embed slices along the stepping axis in the background (Cancel stops between slices).

        Parameters
        ----------
        indices : sequence of int, optional
            Slices to encode; default all slices along the axis not displayed.
        """
        plane = self.current_plane()
        if self._encode_worker is not None:
            self.notes.warning("slices are already being encoded: wait, or press Cancel")
            return
        if plane.index:
            axis = plane.index[-1][0]
            n = spatial_shape(self._image)[axis]
            indices = range(n) if indices is None else indices
            planes = []
            for i in indices:
                idx = tuple((a, int(i) if a == axis else v) for a, v in plane.index)
                planes.append(Plane(plane.axes, idx, plane.ndim))
        else:
            planes = [plane]
        reqs = [self._make_request(p, None) for p in planes]
        self.propagation.stop_prefetch()
        self._encode_worker = self._start_worker(reqs, determinate=True, what="encoding")
        self._update_progress()
        if wait:
            wait_until(lambda: self._encode_worker is None, timeout)

    def cancel(self) -> None:
        """Stop work: drop waiting prompts, stop encoding after the current slice."""
        self._debounce.stop()
        self._queue.clear()
        for w in (self._worker, self._encode_worker):
            if w is not None:
                w.quit()
        self.propagation.cancel()
        # whatever is in flight now answers prompts that are no longer wanted
        for key in list(self._latest):
            self._latest[key] = next(self._rid)
        self._computed.clear()
        self._show_status("cancelled")

    def commit(self, name: Optional[str] = None, label: Optional[int] = None, color=None,
               overwrite: Optional[bool] = None, state: Optional[str] = None) -> dict:
        """Write the preview into the segments layer as ``label``.

        Voxels of completed or locked segments are kept unless ``overwrite``
        (default: the panel's checkbox).  Prompts and preview are cleared for
        the next object.  Returns ``{"label", "written", "skipped"}``.
        """
        self._require_image()
        if self.busy:  # the preview must reflect the latest prompts
            self._debounce.stop()
            self._update()
            wait_until(lambda: not self.busy, 300)
        if self._preview is None or not np.any(self._preview.data):
            self.notes.warning("nothing to commit: draw a box or click points on the object first")
            return {"label": None, "written": 0, "skipped": 0}
        target = self._ensure_target()
        table = self._table()
        label = int(label if label is not None else self.label_spin.value())
        name = name or self.name_edit.text().strip() or None
        color = _to_rgba(color) if color is not None else (self._next_color if self._next_color is not None and label not in table.segments else None)
        overwrite = self.overwrite_check.isChecked() if overwrite is None else bool(overwrite)
        pv = self._preview.data
        flat_pv = np.flatnonzero(pv)
        multiclass = pv.max() > 1 and not self._model_takes_prompts()
        seg_before = table.snapshot()
        writes = []  # (idx, old, label)
        skipped = 0
        try:
            if multiclass:  # prompt-free multi-organ models: class index = label value
                values = pv.ravel()[flat_pv]
                for v in np.unique(values):
                    idx, old, sk = plan_commit(target.data, flat_pv[values == v], int(v), table, overwrite)
                    table.ensure(int(v), None, None)
                    writes.append((idx, old, int(v)))
                    skipped += sk
            else:
                idx, old, skipped = plan_commit(target.data, flat_pv, label, table, overwrite)
                table.ensure(label, name, color)
                writes.append((idx, old, label))
        except SamlabError as exc:
            table.restore(seg_before)
            self.notes.error(str(exc))
            return {"label": label, "written": 0, "skipped": 0}
        if state:
            if state not in STATES:
                raise SamlabError(f"unknown state {state!r}: use {', '.join(STATES)}")
            table.segments[label].state = state
        flat_t = target.data.reshape(-1)  # a view: we created it contiguous
        for idx, old, lab in writes:
            flat_t[idx] = lab
            table.apply_counts(old, lab)
        seg_after = table.snapshot()
        prompts_before = self._prompt_snapshot()
        preview_before = (flat_pv, pv.ravel()[flat_pv].copy(), dict(self._preview_planes))
        computed_before = dict(self._computed)
        self._clear_after_commit()
        tkey = id(target)

        def undo():
            for idx, old, lab in writes:
                target.data.reshape(-1)[idx] = old
            self._tables[tkey].restore(seg_before)
            self._restore_prompts(prompts_before, recompute=False)
            self._restore_preview(preview_before)
            self._computed = dict(computed_before)
            target.refresh()
            self._after_segments_change()

        def redo():
            for idx, old, lab in writes:
                target.data.reshape(-1)[idx] = lab
            self._tables[tkey].restore(seg_after)
            self._clear_after_commit()
            target.refresh()
            self._after_segments_change()

        self.history.push(Action(f"commit {label}", undo, redo))
        target.refresh()
        self._after_segments_change()
        written = int(sum(len(w[0]) for w in writes))
        if skipped:
            self.notes.warning(f"{skipped} voxels belong to completed or locked segments and were left as they are: "
                               "tick 'overwrite' to replace them")
        self._next_color = None
        self.label_spin.setValue(table.next_label())
        return {"label": label, "written": written, "skipped": skipped}

    # -- propagation (the work is in propagation_panel.PropagationPanel) ----
    def propagate(self, wait: bool = False, timeout: float = 3600, **settings):
        """Propagate the displayed orientation's prompts through the volume into the preview.

        Keyword arguments are :class:`~napari_samlab.propagate.PropagationSettings`
        fields (``z_min``, ``z_max``, ``stop_slices``, ``max_empty``,
        ``stop_min_iou``, ``stop_area_factor``, ``stop_min_score``, ...).
        With ``wait=True`` returns the
        :class:`~napari_samlab.propagate.PropagationResult`.  Nothing is
        committed until :meth:`commit` (which commits every slice).
        """
        return self.propagation.propagate(wait=wait, timeout=timeout, **settings)

    def repropagate_from(self, z: Optional[int] = None, wait: bool = False, timeout: float = 3600):
        """After correcting slice ``z`` (default: displayed) re-propagate from it to the next anchor or limit."""
        return self.propagation.repropagate_from(z, wait=wait, timeout=timeout)

    def next_flagged(self, step: int = 1) -> Optional[int]:
        """Go to the next flagged slice of the last propagation [Shift+F]; returns it (None if none)."""
        return self.propagation.next_flagged(step)

    def fill_between(self, slices=None, method: str = "sdf") -> List[int]:
        """Model-free: interpolate shapes between annotated slices into the preview; returns the filled slices."""
        return self.propagation.fill_between(slices, method=method)

    @property
    def propagation_result(self):
        """The last :class:`~napari_samlab.propagate.PropagationResult` (None before propagating or after a commit)."""
        return self.propagation.result

    def set_segment_state(self, label: int, state: str) -> None:
        """Mark segment ``label`` in progress, completed or locked (undoable)."""
        table = self._table()
        if table is None or int(label) not in table.segments:
            raise SamlabError(f"there is no segment {label}: commit one first")
        if state not in STATES:
            raise SamlabError(f"unknown state {state!r}: use {', '.join(STATES)}")
        seg = table.segments[int(label)]
        old = seg.state
        if old == state:
            return
        tkey = id(self._target)

        def apply(s):
            self._tables[tkey].segments[int(label)].state = s
            self._refresh_table()

        apply(state)
        self.history.push(Action(f"state {label}", lambda: apply(old), lambda: apply(state)))

    def undo(self) -> Optional[str]:
        """Undo the last prompt change or commit; returns its description."""
        return self._undo_redo(self.history.undo)

    def redo(self) -> Optional[str]:
        """Redo what :meth:`undo` undid."""
        return self._undo_redo(self.history.redo)

    def shutdown(self) -> None:
        """Stop workers and timers (called when the panel closes)."""
        self._closed = True
        self.cancel()
        wait_until(lambda: self._worker is None and self._encode_worker is None, 30)
        self.propagation.shutdown()

    def closeEvent(self, event):  # noqa: N802 - Qt name
        self.shutdown()
        super().closeEvent(event)

    # ======================================================================
    # layers
    # ======================================================================
    @staticmethod
    def _is_image(layer) -> bool:
        from napari.layers import Image

        return isinstance(layer, Image)

    def _require_image(self):
        if self._image is None or self._image not in self.viewer.layers:
            self._image = None
            raise SamlabError("no image selected: open an image (File > Open, or File > Open Sample > napari-samlab) "
                              "and choose it in the Segment panel")
        return self._image

    def _transform_kwargs(self) -> dict:
        im = self._image
        return {"scale": im.scale, "translate": im.translate, "rotate": im.rotate, "shear": im.shear,
                "affine": im.affine.affine_matrix}

    def _helper(self, attr: str):
        layer = getattr(self, attr)
        if layer is not None and layer in self.viewer.layers:
            return layer
        setattr(self, attr, None)
        return None

    def _ensure_points(self):
        pts = self._helper("_points")
        if pts is not None:
            return pts
        im = self._require_image()
        shape = spatial_shape(im)
        size = max(3.0, 0.015 * max(shape[-2:]))
        pts = self.viewer.add_points(
            np.zeros((0, im.ndim)), ndim=im.ndim, name=POINTS_NAME, size=size,
            features={"positive": np.zeros(0, bool), "axes": np.zeros(0, object)},
            border_color="white", border_width=0.1, out_of_slice_display=False,
            metadata={"samlab_role": "points", "samlab_image": im.name}, **self._transform_kwargs())
        self._points = pts
        self._update_feature_defaults()
        pts.events.data.connect(self._on_prompt_event)
        self._bind_keys(pts)
        self._arrange_layers()
        self.viewer.layers.selection.active = pts
        pts.mode = "add"
        return pts

    def _ensure_boxes(self):
        boxes = self._helper("_boxes")
        if boxes is not None:
            return boxes
        im = self._require_image()
        shape = spatial_shape(im)
        boxes = self.viewer.add_shapes(
            ndim=im.ndim, name=BOXES_NAME, edge_color="yellow", face_color="transparent",
            edge_width=max(1.0, 0.004 * max(shape[-2:])), features={"axes": np.zeros(0, object)},
            metadata={"samlab_role": "boxes", "samlab_image": im.name}, **self._transform_kwargs())
        self._boxes = boxes
        self._update_feature_defaults()
        boxes.events.data.connect(self._on_prompt_event)
        self._bind_keys(boxes)
        self._arrange_layers()
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        return boxes

    def _ensure_preview(self):
        pv = self._helper("_preview")
        if pv is not None:
            return pv
        im = self._require_image()
        active = self.viewer.layers.selection.active
        pv = self.viewer.add_labels(np.zeros(spatial_shape(im), np.uint8), name=PREVIEW_NAME, opacity=0.6,
                                    metadata={"samlab_role": "preview", "samlab_image": im.name},
                                    **self._transform_kwargs())
        self._preview = pv
        self._preview_planes.clear()
        self._bind_keys(pv)
        self._color_preview()
        self._arrange_layers()
        if active is not None and active in self.viewer.layers:  # keep the user prompting
            self.viewer.layers.selection.active = active
        return pv

    def _arrange_layers(self) -> None:
        """Keep image < segments < preview < boxes < points, so prompts stay clickable on top."""
        layers = self.viewer.layers
        order = [self._helper(a) for a in ("_target", "_preview", "_boxes", "_points")]
        order = [layer for layer in order if layer is not None]
        for layer in order:
            i = layers.index(layer)
            if i != len(layers) - 1:
                layers.move(i, len(layers))

    def _find_target(self):
        im = self._image
        for layer in self.viewer.layers:
            if (layer.metadata.get("samlab_role") == "segments" and layer.metadata.get("samlab_image") == im.name
                    and tuple(layer.data.shape) == spatial_shape(im)):
                return layer
        return None

    def _ensure_target(self):
        tgt = self._helper("_target")
        if tgt is not None:
            return tgt
        im = self._require_image()
        tgt = self._find_target()
        if tgt is None:
            meta = copy.deepcopy(dict(im.metadata))
            meta.setdefault("samlab", {})
            if isinstance(meta["samlab"], dict):
                meta["samlab"]["channels"] = 1  # a label image: one value per voxel
            meta["samlab_role"] = "segments"
            meta["samlab_image"] = im.name
            active = self.viewer.layers.selection.active
            tgt = self.viewer.add_labels(np.zeros(spatial_shape(im), np.uint16), name=SEGMENTS_NAME, opacity=0.7,
                                         metadata=meta, **self._transform_kwargs())
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        self._target = tgt
        self._arrange_layers()
        tgt.events.paint.connect(self._on_target_painted)
        self._table()
        self._color_target()
        return tgt

    def _table(self) -> Optional[SegmentTable]:
        tgt = self._target
        if tgt is None:
            return None
        table = self._tables.get(id(tgt))
        if table is None:
            table = SegmentTable(self._voxel_mm3(), is2d=len(spatial_shape(self._image)) == 2)
            if np.any(tgt.data):
                table.recount(tgt.data)
            self._tables[id(tgt)] = table
        return table

    def _voxel_mm3(self) -> float:
        im = self._image
        geo = im.metadata.get("samlab") if isinstance(im.metadata.get("samlab"), dict) else {}
        spacing = geo.get("spacing")
        if spacing and len(spacing) == len(spatial_shape(im)):
            return float(np.prod(spacing))
        return float(np.prod(np.abs(im.scale)))

    def _detach_helpers(self) -> None:
        """Prompts and preview belong to one image: remove them when switching."""
        for attr in ("_points", "_boxes", "_preview"):
            layer = self._helper(attr)
            if layer is not None:
                with contextlib.suppress(Exception):
                    self.viewer.layers.remove(layer)
            setattr(self, attr, None)
        self._target = None
        self._latest.clear()
        self._queue.clear()
        self._computed.clear()
        self._preview_planes.clear()
        self._prompt_state = None
        self.history.clear()
        self.propagation.forget()

    def _to_prompt_coords(self, prompt_layer, data_point) -> np.ndarray:
        im = self._image
        same = to_image_data(prompt_layer, im, np.asarray(data_point)[None])  # identity when aligned
        if np.allclose(same[0], data_point):
            return np.asarray(data_point, float)
        return np.asarray(prompt_layer.world_to_data(im.data_to_world(data_point)), float)

    def _check_xy(self, plane: Plane, x: float, y: float) -> None:
        h, w = plane.shape2d(spatial_shape(self._image))
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise SamlabError(f"({x:g}, {y:g}) is outside the {w}x{h} slice: give x in 0..{w - 1} and y in 0..{h - 1}")

    # ======================================================================
    # prompts -> requests
    # ======================================================================
    def _update_feature_defaults(self) -> None:
        try:
            axes = current_plane(self.viewer, self._image).axes_text if self._image is not None else ""
        except SamlabError:
            axes = ""
        if self._helper("_points") is not None:
            self._points.feature_defaults = {"positive": self._positive, "axes": axes}
        if self._helper("_boxes") is not None:
            self._boxes.feature_defaults = {"axes": axes}

    def _recolor_points(self) -> None:
        pts = self._points
        if pts is None or len(pts.data) == 0:
            return
        pos = pts.features["positive"].to_numpy(bool)
        colors = np.where(pos[:, None], np.array(POSITIVE_COLOR), np.array(NEGATIVE_COLOR))
        if not np.allclose(pts.face_color, colors):
            pts.face_color = colors

    def _collect(self) -> Dict[tuple, tuple]:
        """Every prompted plane: key -> (Plane, Prompt or None)."""
        im = self._image
        out: Dict[tuple, list] = {}
        if im is None:
            return {}
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

        pts = self._helper("_points")
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
        boxes = self._helper("_boxes")
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
                prompt = None  # only negative clicks so far: wait for an object prompt
            else:
                prompt = Prompt(box=box, points=points or None, point_labels=labels or None)
            result[key] = (plane, prompt)
        return result

    def _model_takes_prompts(self) -> bool:
        m = self.session.model
        return m is None or getattr(m, "needs_prompt", True)

    @_while_alive
    def _update(self, force: Optional[List[Plane]] = None, all_planes: bool = False) -> None:
        """Send changed planes to the worker; clear planes whose prompts are gone."""
        if self._image is None or self._closed:
            return
        prompts = self._collect()
        keys = set(prompts) | set(self._computed) | set(self._preview_planes)
        forced = {p.key: p for p in (force or [])}
        if all_planes:
            for k in set(prompts) | set(self._preview_planes):
                forced.setdefault(k, prompts[k][0] if k in prompts else self._preview_planes[k])
        for key in keys | set(forced):
            plane, prompt = prompts.get(key, (forced.get(key) or self._preview_planes.get(key), None))
            if plane is None:
                continue
            if prompt is None and key in forced and not self._model_takes_prompts():
                prompt = Prompt()  # SAMed: segments with no prompt, on request
            pkey = _prompt_key(prompt)
            if key not in forced and self._computed.get(key, None) == pkey and (pkey is not None or key not in self._preview_planes):
                continue
            self._computed[key] = pkey
            rid = next(self._rid)
            self._latest[key] = rid
            if prompt is None:
                self._queue.pop(key, None)
                if key in self._preview_planes:
                    self._write_preview(plane, None)
                continue
            self._queue[key] = self._make_request(plane, prompt, rid)
        self._pump()

    def _make_request(self, plane: Plane, prompt: Optional[Prompt], rid: int = 0) -> _Request:
        im = self._require_image()
        return _Request(rid, plane, prompt, self._resolved_window(), self._extractor(plane),
                        self.session.generation, id(im))

    def _extractor(self, plane: Plane) -> Callable[[], np.ndarray]:
        im = self._image
        if self.source_combo.currentIndex() == 1 and not im.rgb:
            layers = self._composite_layers()
            limits = [tuple(layer.contrast_limits) for layer in layers]
            datas = [layer_array(layer) for layer in layers]

            def composite():
                chans = []
                for d, (lo, hi) in zip(datas, limits):
                    c = plane.extract(d).astype(np.float32)
                    chans.append(np.clip((c - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(c))
                if len(chans) == 1:
                    return chans[0]
                while len(chans) < 3:
                    chans.append(np.zeros_like(chans[0]))
                return np.stack(chans[:3], -1)

            return composite
        data = layer_array(im)
        return lambda: plane.extract(data)

    def _composite_layers(self) -> list:
        im = self._image
        shape = spatial_shape(im)
        layers = [layer for layer in self.viewer.layers if self._is_image(layer) and not layer.rgb and layer.visible
                  and spatial_shape(layer) == shape]
        if im not in layers:
            layers.insert(0, im)
        return layers[:3]

    def _pump(self) -> None:
        if self._worker is not None or not self._queue:
            self._update_progress()
            return
        _, req = self._queue.popitem(last=False)
        self.propagation.stop_prefetch(keep=req.plane)  # the user's prompt goes first
        self._worker = self._start_worker([req], determinate=False, what=f"segmenting {req.plane.name}")
        self._update_progress()

    def _start_worker(self, reqs: List[_Request], determinate: bool, what: str):
        from napari.qt.threading import create_worker

        predictor = self.session.predictor
        worker = create_worker(_run_requests, self.session, predictor, reqs, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(lambda item: self._on_result(item, determinate))
        worker.errored.connect(lambda exc: self._on_worker_error(exc, what))
        worker.finished.connect(lambda: self._on_worker_finished(worker))
        if determinate:
            self.progress.setRange(0, len(reqs))
            self.progress.setValue(0)
        self._show_status(what + "…")
        worker.start()
        return worker

    @_while_alive
    def _on_result(self, item, determinate: bool) -> None:
        done, total, req, pred = item
        if determinate:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self._show_status(f"encoded {done}/{total} slices")
        if pred is None or self._closed:
            return
        stale = (self._latest.get(req.plane.key) != req.rid or req.generation != self.session.generation
                 or self._image is None or req.image_id != id(self._image))
        if stale:
            self.discarded += 1
            return  # answered a prompt/slice/model the user has moved on from
        values = pred.labels if pred.labels is not None and not self._model_takes_prompts() else pred.mask
        self._write_preview(req.plane, values)
        self.last_score = float(pred.score)
        self._show_status(f"{req.plane.name}: {int(np.count_nonzero(values))} px, score {pred.score:.2f}")

    @_while_alive
    def _on_worker_error(self, exc: BaseException, what: str) -> None:
        self.last_error = self.notes.exception(exc, what)
        # let the next change of the same prompts try again
        self._computed.clear()

    def _on_worker_finished(self, worker) -> None:
        try:
            self.objectName()
        except RuntimeError:
            return  # napari closed while the worker ran
        if worker is self._worker:
            self._worker = None
        if worker is self._encode_worker:
            self._encode_worker = None
        self._pump()
        self._update_progress()
        if not self.busy and not self._closed:
            self._show_status()
            self.propagation.schedule_prefetch()  # the user looks at the answer: encode around it

    def _update_progress(self, *_) -> None:
        running = self._worker is not None or self._encode_worker is not None
        self.cancel_button.setEnabled(running or bool(self._queue))
        if self._encode_worker is None:
            if running or self._queue:
                self.progress.setRange(0, 0)  # busy indicator
            elif self.progress.maximum() == 0:  # busy indicator: show "done"
                self.progress.setRange(0, 1)
                self.progress.setValue(1)

    def _write_preview(self, plane: Plane, values: Optional[np.ndarray]) -> None:
        if values is None:
            if self._helper("_preview") is None:
                self._preview_planes.pop(plane.key, None)
                return
            plane.view(self._preview.data)[...] = 0
            self._preview_planes.pop(plane.key, None)
        else:
            pv = self._ensure_preview()
            plane.view(pv.data)[...] = np.asarray(values).astype(np.uint8)
            self._preview_planes[plane.key] = plane
        self._preview.refresh()

    def _restore_preview(self, snap) -> None:
        idx, vals, planes = snap
        pv = self._ensure_preview()
        pv.data[...] = 0
        pv.data.reshape(-1)[idx] = vals
        self._preview_planes = dict(planes)
        pv.refresh()

    # ======================================================================
    # prompt history
    # ======================================================================
    def _prompt_snapshot(self):
        pts = self._helper("_points")
        boxes = self._helper("_boxes")
        p = None
        if pts is not None:
            f = pts.features
            p = (np.array(pts.data, float, copy=True),
                 f["positive"].to_numpy(bool).copy() if "positive" in f else np.ones(len(pts.data), bool),
                 f["axes"].to_numpy().copy() if "axes" in f else np.array([None] * len(pts.data), object))
        b = None
        if boxes is not None:
            f = boxes.features
            b = ([np.array(d, float, copy=True) for d in boxes.data], list(boxes.shape_type),
                 f["axes"].to_numpy().copy() if "axes" in f else np.array([None] * len(boxes.data), object))
        return (p, b)

    @staticmethod
    def _same_state(a, b) -> bool:
        if a is None or b is None:
            return a is b
        (pa, ba), (pb, bb) = a, b
        n = lambda p: 0 if p is None else len(p[0])  # noqa: E731
        nb = lambda x: 0 if x is None else len(x[0])  # noqa: E731
        if n(pa) != n(pb) or nb(ba) != nb(bb):
            return False
        if n(pa) and not (np.array_equal(pa[0], pb[0]) and np.array_equal(pa[1], pb[1])):
            return False
        if nb(ba) and not all(np.array_equal(x, y) for x, y in zip(ba[0], bb[0])):
            return False
        return True

    @_while_alive
    def _on_prompt_event(self, event=None) -> None:
        if self._restoring:
            return
        action = str(getattr(event, "action", "changed"))
        # the user's prompt goes first: free the model now (unless it is encoding this very slice)
        try:
            plane = self.current_plane()
        except SamlabError:
            plane = None
        self.propagation.stop_prefetch(keep=plane)
        if action.endswith("ed"):  # added / removed / changed: record; *ing: only preview
            if action.endswith("added") and event.source is self._points:
                self._recolor_points()
            if not self._suspend_record:
                self._record_prompts("prompt")
        self._request_update()

    def _record_prompts(self, text: str) -> None:
        new = self._prompt_snapshot()
        old = self._prompt_state
        if old is not None and self._same_state(old, new):
            return
        if old is None:
            old = (None, None)
        self._prompt_state = new
        self.history.push(Action(text, lambda: self._restore_prompts(old), lambda: self._restore_prompts(new)))

    @contextlib.contextmanager
    def _batch(self, text: str):
        """Several layer edits that undo as one step."""
        self._suspend_record += 1
        try:
            yield
        finally:
            self._suspend_record -= 1
            if not self._suspend_record:
                self._record_prompts(text)
                self._request_update()

    def _restore_prompts(self, state, recompute: bool = True) -> None:
        import pandas as pd

        p, b = state if state is not None else (None, None)
        self._restoring += 1
        try:
            pts = self._helper("_points")
            if p is not None or pts is not None:
                pts = self._ensure_points()
                data, pos, axes = p if p is not None else (np.zeros((0, pts.ndim)), np.zeros(0, bool), np.zeros(0, object))
                pts.selected_data = set()
                pts.data = data
                pts.features = pd.DataFrame({"positive": np.asarray(pos, bool), "axes": np.asarray(axes, object)})
                self._recolor_points()
            boxes = self._helper("_boxes")
            if b is not None or boxes is not None:
                boxes = self._ensure_boxes()
                verts, types, axes = b if b is not None else ([], [], np.zeros(0, object))
                boxes.selected_data = set()
                boxes.data = []
                if verts:
                    boxes.add(verts, shape_type=types)
                boxes.features = pd.DataFrame({"axes": np.asarray(axes, object)})
            self._update_feature_defaults()
        finally:
            self._restoring -= 1
        self._prompt_state = self._prompt_snapshot()
        if recompute:
            self._request_update()

    def _clear_prompt_layers(self) -> None:
        pts = self._helper("_points")
        if pts is not None and len(pts.data):
            pts.selected_data = set()
            pts.data = np.zeros((0, pts.ndim))
        boxes = self._helper("_boxes")
        if boxes is not None and len(boxes.data):
            boxes.selected_data = set()
            boxes.data = []

    def _remove_boxes_on(self, plane: Plane) -> None:
        boxes = self._boxes
        if boxes is None or not len(boxes.data):
            return
        axes = boxes.features["axes"].to_numpy() if "axes" in boxes.features else [None] * len(boxes.data)
        drop = set()
        for i, (verts, a) in enumerate(zip(boxes.data, axes)):
            vd = to_image_data(boxes, self._image, verts)
            if (a in (None, "") or a == plane.axes_text) and plane.contains(vd[0]):
                drop.add(i)
        if drop:
            boxes.selected_data = drop
            boxes.remove_selected()

    def _clear_after_commit(self) -> None:
        self._restoring += 1
        try:
            self._clear_prompt_layers()
        finally:
            self._restoring -= 1
        self._prompt_state = self._prompt_snapshot()
        self._queue.clear()
        for key in list(self._latest):
            self._latest[key] = next(self._rid)
        self._computed.clear()
        if self._helper("_preview") is not None:
            self._preview.data[...] = 0
            self._preview.refresh()
        self._preview_planes.clear()
        self.propagation.forget()  # its result described the preview just committed

    def _undo_redo(self, fn) -> Optional[str]:
        self._debounce.stop()
        if self._worker is not None or self._queue:
            self._update()
            wait_until(lambda: self._worker is None and not self._queue, 300)
        try:
            action = fn()
        except Exception as exc:  # noqa: BLE001 - never let undo take napari down
            self.notes.exception(exc, "undo/redo")
            return None
        if action is None:
            self.notes.info("nothing to " + ("undo" if fn == self.history.undo else "redo"))
            return None
        self._show_status(("undid " if fn == self.history.undo else "redid ") + action.text)
        return action.text

    def _request_update(self) -> None:
        if self.live_check.isChecked():
            self._debounce.start()

    # ======================================================================
    # window / contrast
    # ======================================================================
    def _window_spec(self):
        text = self.window_combo.currentText()
        if text == "manual":
            return (self.level_spin.value(), self.width_spin.value())
        return text

    def _resolved_window(self):
        im = self._image
        if im is None:
            return None
        if self.source_combo.currentIndex() == 1 and not im.rgb:
            return None  # composite: channels are already scaled by their own contrast limits
        spec = self._window_spec()
        model = self.session.ensure_model()
        key = (id(im), str(spec), model.fingerprint() if hasattr(model, "fingerprint") else id(model))
        if key not in self._window_cache:
            geo = im.metadata.get("samlab") if isinstance(im.metadata.get("samlab"), dict) else {}
            # the whole volume, as the CLI does: every slice gets the same mapping
            self._window_cache[key] = resolve_window(spec, np.asarray(layer_array(im)), model, geo.get("modality"))
        return self._window_cache[key]

    def _apply_window(self) -> None:
        im = self._image
        if im is None:
            return
        try:
            win = self._resolved_window()
        except SamlabError as exc:
            self.notes.error(str(exc))
            return
        if self.source_combo.currentIndex() == 1 and not im.rgb:
            return
        if win is None:
            lo, hi = im.contrast_limits_range
        else:
            lo, hi = win.lo, win.hi
        if hi <= lo:
            hi = lo + 1
        self._setting_contrast = True
        try:
            rlo, rhi = im.contrast_limits_range
            if lo < rlo or hi > rhi:  # let the slider reach the window
                im.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
            im.contrast_limits = (float(lo), float(hi))
        finally:
            self._setting_contrast = False
        if win is not None and self.window_combo.currentText() != "manual":
            level, width = win.level_width
            self.level_spin.setValue(level)
            self.width_spin.setValue(width)

    def _on_window_combo(self, text: str) -> None:
        self._guard(lambda: self.set_window(text), "setting the window")

    def _on_window_inputs_changed(self) -> None:
        self._apply_window()
        self._update(all_planes=True)
        self._restart_prefetch()

    @_while_alive
    def _on_user_contrast(self, event=None) -> None:
        """Dragging the contrast slider changes what the model sees too (manual window)."""
        if self._setting_contrast or self._image is None or self._image.rgb:
            return
        if self.source_combo.currentIndex() == 1:
            self._request_update_all()
            return
        lo, hi = self._image.contrast_limits
        win = self._resolved_window()
        if win is not None and np.isclose(win.lo, lo) and np.isclose(win.hi, hi):
            return
        self.level_spin.setValue((lo + hi) / 2.0)
        self.width_spin.setValue(max(hi - lo, 1e-6))
        self.window_combo.blockSignals(True)
        self.window_combo.setCurrentText("manual")
        self.window_combo.blockSignals(False)
        self.level_spin.setEnabled(True)
        self.width_spin.setEnabled(True)
        self._request_update_all()

    def _request_update_all(self) -> None:
        self._computed.clear()
        self._request_update()
        self._restart_prefetch()

    def _restart_prefetch(self) -> None:
        """What the model sees changed (window, channels): embeddings made for the old input are no use."""
        self.propagation.stop_prefetch()
        self.propagation.schedule_prefetch()

    @_while_alive
    def _on_model_about_to_change(self, session=None) -> None:
        self.propagation.stop_prefetch()  # so the install does not wait for an encode

    @_while_alive
    def _on_model_changed(self, session=None) -> None:
        self._window_cache.clear()
        self.propagation.stop_prefetch()  # it encodes with the old model
        if self._image is not None:
            self._apply_window()
            self._update(all_planes=True)
            self.propagation.schedule_prefetch()

    # ======================================================================
    # segments: colours, table
    # ======================================================================
    def _color_target(self) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        tgt, table = self._target, self._table()
        if tgt is None or table is None:
            return
        colors = {None: (1.0, 1.0, 0.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
        colors.update({lab: tuple(s.color) for lab, s in table.segments.items()})
        tgt.colormap = DirectLabelColormap(color_dict=colors)

    def _current_color(self) -> tuple:
        table = self._table()
        lab = self.label_spin.value()
        if table is not None and lab in table.segments:
            return tuple(table.segments[lab].color)
        return self._next_color if self._next_color is not None else default_color(lab)

    def _color_preview(self) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        if self._preview is None:
            return
        colors = {None: self._current_color(), 0: (0.0, 0.0, 0.0, 0.0)}
        if not self._model_takes_prompts():
            colors.update({v: default_color(v) for v in range(1, 256)})
        self._preview.colormap = DirectLabelColormap(color_dict=colors)

    def _update_color_button(self) -> None:
        r, g, b, _ = (int(255 * c) for c in self._current_color())
        self.color_button.setStyleSheet(f"background-color: rgb({r},{g},{b}); min-width: 24px")

    def _pick_color(self) -> None:
        r, g, b, _ = (int(255 * c) for c in self._current_color())
        col = QColorDialog.getColor(QColor(r, g, b), self, "Segment colour")
        if col.isValid():
            rgba = (col.redF(), col.greenF(), col.blueF(), 1.0)
            table = self._table()
            lab = self.label_spin.value()
            if table is not None and lab in table.segments:
                table.segments[lab].color = rgba
                self._after_segments_change()
            else:
                self._next_color = rgba
            self._update_color_button()
            self._color_preview()

    def _on_label_changed(self, _=None) -> None:
        self._next_color = None
        self._sync_label_fields()

    def _sync_label_fields(self) -> None:
        table = self._table()
        lab = self.label_spin.value()
        seg = table.segments.get(lab) if table is not None else None
        self.name_edit.setPlaceholderText(seg.name if seg else f"segment {lab}")
        if seg is None:
            self.name_edit.clear()
        self._update_color_button()
        self._color_preview()

    def _after_segments_change(self) -> None:
        self._color_target()
        self._refresh_table()
        self._sync_label_fields()

    def _refresh_table(self) -> None:
        rows = self.segments
        vol_key = "area_mm2" if rows and "area_mm2" in rows[0] else "volume_ml"
        self.table.setHorizontalHeaderItem(4, QTableWidgetItem("area (mm²)" if vol_key == "area_mm2" else "volume (mL)"))
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            sw = QTableWidgetItem("")
            sw.setBackground(QColor.fromRgbF(*row["color"][:3]))
            self.table.setItem(r, 0, sw)
            self.table.setItem(r, 1, QTableWidgetItem(str(row["label"])))
            self.table.setItem(r, 2, QTableWidgetItem(row["name"]))
            self.table.setItem(r, 3, QTableWidgetItem(str(row["voxels"])))
            self.table.setItem(r, 4, QTableWidgetItem(f"{row[vol_key]:.3f}" if vol_key == "volume_ml" else f"{row[vol_key]:.1f}"))
            combo = QComboBox()
            combo.addItems(STATES)
            combo.setCurrentText(row["state"])
            combo.currentTextChanged.connect(
                lambda s, lab=row["label"]: self._guard(lambda: self.set_segment_state(lab, s), "changing the state"))
            self.table.setCellWidget(r, 5, combo)

    def _on_table_clicked(self, row: int, col: int) -> None:
        rows = self.segments
        if 0 <= row < len(rows):
            self.label_spin.setValue(rows[row]["label"])
            self.name_edit.setText(rows[row]["name"])

    @_while_alive
    def _on_target_painted(self, event=None) -> None:
        table = self._table()
        if table is not None:
            table.recount(self._target.data)
            self._after_segments_change()

    # ======================================================================
    # viewer events, keys
    # ======================================================================
    @_while_alive
    def _refresh_image_choices(self, event=None) -> None:
        names = [layer.name for layer in self.viewer.layers if self._is_image(layer)]
        current = self._image.name if self._image is not None else None
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self._image is None and names and event is not None:
            layer = event.value if self._is_image(getattr(event, "value", None)) else None
            if layer is not None:
                self._guard(lambda: self.set_image_layer(layer), "choosing the image")

    @_while_alive
    def _on_layer_removed(self, event=None) -> None:
        if self._image is not None and self._image not in self.viewer.layers:
            self.cancel()
            self._image = None
            self._detach_helpers()
            self._refresh_table()
        self._refresh_image_choices()

    @_while_alive
    def _on_active_layer(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if self._is_image(layer) and layer is not self._image:
            self._guard(lambda: self.set_image_layer(layer), "choosing the image")

    def _on_image_combo(self, name: str) -> None:
        if name and (self._image is None or self._image.name != name) and name in self.viewer.layers:
            self._guard(lambda: self.set_image_layer(self.viewer.layers[name]), "choosing the image")

    @_while_alive
    def _on_step(self, event=None) -> None:
        if self._image is not None:
            self._show_status()

    @_while_alive
    def _on_dims(self, event=None) -> None:
        if self._image is None or self._closed:
            return
        self._update_feature_defaults()
        self._show_status()

    def _show_status(self, text: Optional[str] = None) -> None:
        if text is None:
            try:
                plane = current_plane(self.viewer, self._image) if self._image is not None else None
            except SamlabError:
                plane = None
            model = self.session.model
            text = (f"{plane.name if plane else 'no plane'} · {getattr(model, 'family', '?')}"
                    + (f" · last score {self.last_score:.2f}" if self.last_score is not None else ""))
        self.status.setText(text)

    def _bind_keys(self, target) -> None:
        actions = {
            "segment": lambda: self._guard(self.segment, "segmenting"),
            "commit": lambda: self._guard(self.commit, "committing"),
            "toggle polarity": lambda: self._guard(self.toggle_polarity, "toggling polarity"),
            "next slice": lambda: self.next_slice(1),
            "previous slice": lambda: self.next_slice(-1),
            "undo": lambda: self._guard(self.undo, "undoing"),
            "redo": lambda: self._guard(self.redo, "redoing"),
            "next flagged slice": lambda: self._guard(self.next_flagged, "going to the next flagged slice"),
        }
        for name, key in SHORTCUTS.items():
            fn = actions[name]

            def handler(_layer_or_viewer, fn=fn, name=name):
                if self._closed:
                    return
                self._guard(fn, name)

            with contextlib.suppress(Exception):
                target.bind_key(key, handler, overwrite=True)

    def _guard(self, fn, doing: str):
        """Run a UI action; errors become notifications, never tracebacks."""
        try:
            return fn()
        except RuntimeError as exc:
            if "has been deleted" in str(exc):  # panel closed under a key binding
                return None
            self.notes.exception(exc, doing)
        except Exception as exc:  # noqa: BLE001 - the GUI must survive anything
            self.notes.exception(exc, doing)
        return None


def _to_rgba(color) -> tuple:
    from napari.utils.colormaps.standardize_color import transform_color

    return tuple(float(c) for c in transform_color(color)[0])
