"""The "Segment all" dock: automatic instances of the chosen image as one Labels layer.

Thin: :func:`napari_samlab.instances.segment_everything` does the work in a
napari ``thread_worker``; this panel turns the settings into arguments,
shows progress, puts the result in a Labels layer (one value per object)
and lists the objects (label, area/volume, mean intensity, score).
Clicking a row selects the object and centres the view on it; Delete and
Merge edit the objects through :mod:`napari_samlab.instances.objects`.
"""
from __future__ import annotations

import logging
import threading
import traceback
from typing import Optional, Sequence

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel,
                            QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..errors import Cancelled, SamlabError
from ..session.segments import Action, History
from ._common import Notifier, progress_and_cancel, wait_until
from ._session import session_for

log = logging.getLogger(__name__)

RESULT_LAYER = "samlab instances"
COLUMNS = ("label", "size", "mean intensity", "score")


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(int, int)


class _Failure:
    """An error the worker caught, carried to the GUI thread."""

    def __init__(self, error: BaseException):
        self.error = error


class EverythingWidget(QWidget):
    """Segment every object of an image layer; table, selection, delete and merge.

    Scripted use (napari console or tests)::

        w = EverythingWidget(viewer)
        w.set_image_layer("nuclei"); w.set_object_size(22)     # 0 = estimate
        layer = w.run(wait=True)                                # the Labels layer
        w.rows                                                  # the object table
        w.select(3); w.delete([3]); w.merge([1, 2])
    """

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session_for(viewer)
        self.notes = Notifier()
        self.rows: list = []
        self.scores: Optional[np.ndarray] = None
        self.history = History()  # runs, deletes and merges of the result layer (Commit moves it into the segments)
        self._worker = None
        self._cancel: Optional[threading.Event] = None
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._build()
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()

    # -- layout ----------------------------------------------------------
    def _build(self):
        form = QFormLayout()
        self.image_box = QComboBox()
        self.engine_box = QComboBox()
        self.engine_box.addItems(["classic (no weights)", "model of the Model panel (SAM)"])
        self.size_box = QDoubleSpinBox()
        self.size_box.setRange(0, 10000)
        self.size_box.setSpecialValueText("estimate")
        self.size_box.setToolTip("typical object diameter; 0 = estimated from the image")
        self.unit_box = QComboBox()
        self.unit_box.addItems(["px", "µm"])
        size_row = QHBoxLayout()
        size_row.addWidget(self.size_box)
        size_row.addWidget(self.unit_box)
        self.min_box = QDoubleSpinBox()
        self.min_box.setRange(0, 1e9)
        self.min_box.setSpecialValueText("auto")
        self.min_box.setToolTip("smallest object kept in pixels (voxels); auto = 15% of a typical object")
        form.addRow("image", self.image_box)
        form.addRow("engine", self.engine_box)
        form.addRow("object size", size_row)
        form.addRow("min size", self.min_box)
        self.run_button = QPushButton("Segment all")
        self.run_button.clicked.connect(lambda: self.run())
        self.progress, self.cancel_button = progress_and_cancel("stop segmenting", self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.status = QLabel("")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.delete_button = QPushButton("Delete selected")
        self.delete_button.clicked.connect(lambda: self.delete(self._selected_labels()))
        self.merge_button = QPushButton("Merge selected")
        self.merge_button.clicked.connect(lambda: self.merge(self._selected_labels()))
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("undo the last run, delete or merge of this dock")
        self.undo_button.clicked.connect(lambda: self.undo())
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(lambda: self.redo())
        self.commit_button = QPushButton("Commit to segments")
        self.commit_button.setToolTip("add every object as a segment of the Segment panel (one undo step there)")
        self.commit_button.clicked.connect(lambda: self._slot(self.commit, "committing objects"))
        edits = QHBoxLayout()
        for b in (self.delete_button, self.merge_button, self.undo_button, self.redo_button):
            edits.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.table)
        lay.addLayout(edits)
        lay.addWidget(self.commit_button)

    def _refresh_layers(self, *_):
        from napari.layers import Image

        current = self.image_box.currentText()
        names = [l.name for l in self.viewer.layers if isinstance(l, Image)]
        self.image_box.blockSignals(True)
        self.image_box.clear()
        self.image_box.addItems(names)
        if current in names:
            self.image_box.setCurrentText(current)
        self.image_box.blockSignals(False)

    # -- settings for scripts ------------------------------------------------
    def set_image_layer(self, name: str) -> None:
        self._refresh_layers()
        self.image_box.setCurrentText(name)

    def set_object_size(self, value: float, unit: str = "px") -> None:
        self.size_box.setValue(float(value))
        self.unit_box.setCurrentText(unit)

    def set_min_size(self, value: float) -> None:
        self.min_box.setValue(float(value))

    def set_engine(self, engine: str) -> None:
        """``"classic"`` or ``"model"`` (the Model panel's loaded checkpoint)."""
        self.engine_box.setCurrentIndex(0 if engine == "classic" else 1)

    @property
    def labels_layer(self):
        return self.viewer.layers[RESULT_LAYER] if RESULT_LAYER in self.viewer.layers else None

    # -- run -------------------------------------------------------------
    def _arguments(self):
        layer = self.viewer.layers[self.image_box.currentText()]
        data = np.asarray(layer.data)
        rgb = bool(getattr(layer, "rgb", False))
        nd = data.ndim - (1 if rgb else 0)
        scale = np.asarray(layer.scale[-nd:], float)
        kwargs = {"rgb": rgb, "spacing": tuple(scale * 1000.0)}  # layers are in mm; µm for the engine
        size = self.size_box.value()
        if size > 0:
            kwargs["object_size" if self.unit_box.currentText() == "px" else "object_size_um"] = size
        if self.min_box.value() > 0:
            kwargs["min_size"] = self.min_box.value()
        model = None if self.engine_box.currentIndex() == 0 else self.session.ensure_model()
        return layer, data, model, kwargs

    def run(self, wait: bool = False, timeout: float = 600.0):
        """Start segmenting; with ``wait`` block (running the event loop) and return the Labels layer."""
        from napari.qt.threading import create_worker

        from ..instances.api import segment_everything

        if self._worker is not None:
            self.notes.warning("segmenting is already running: wait or press Cancel")
            return None
        try:
            layer, data, model, kwargs = self._arguments()
        except Exception as err:  # noqa: BLE001 - widget slot boundary
            log.debug("bad settings", exc_info=True)
            self.notes.exception(err, "reading the settings")
            return None
        self._cancel = threading.Event()
        cancel = self._cancel

        def work():
            try:
                return segment_everything(data, model=model, progress=self._relay.progressed.emit, cancel=cancel,
                                          return_result=True, **kwargs)
            except Cancelled:
                return None
            except SamlabError as err:  # the user's input: one line, no traceback
                return _Failure(err)  # wrapped: a worker that returns an exception re-raises it
            except Exception as err:  # noqa: BLE001 - worker-thread boundary: shown as one line, logged in full
                log.warning("segment all failed: %s", "".join(traceback.format_exception(err)))
                return _Failure(err)

        self._done = False
        self._source = layer
        worker = create_worker(work)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("segmenting…")
        worker.start()
        if wait:
            wait_until(lambda: self._done, timeout)
            return self.labels_layer
        return worker

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _on_error(self, err) -> None:
        if isinstance(err, Cancelled):
            self.status.setText("cancelled; nothing changed")
            return
        log.error("segment all failed", exc_info=(type(err), err, err.__traceback__))
        self.status.setText(self.notes.exception(err, "segmenting all objects"))

    def _on_finished(self) -> None:
        self._worker = None
        self._done = True
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_result(self, result) -> None:
        if result is None:
            self.status.setText("cancelled; nothing changed")
            return
        if isinstance(result, _Failure):
            self.status.setText(self.notes.exception(result.error, "segmenting all objects"))
            return
        src = self._source
        nd = result.labels.ndim
        kwargs = {"scale": tuple(src.scale[-nd:]), "translate": tuple(src.translate[-nd:])}
        if self.labels_layer is None:
            self.viewer.add_labels(np.zeros_like(result.labels), name=RESULT_LAYER, **kwargs)
        self._apply(result.labels, result.scores, "segment all")
        for w in result.warnings:
            self.notes.warning(f"segment all: {w}")
        size = f"{result.diameter_px:.1f} px ({'estimated' if result.estimated else 'given'})" if result.diameter_px else "n/a"
        self.status.setText(f"{int(result.labels.max())} objects ({result.engine}); object diameter {size}")
        self._fill_table()

    # -- table, selection, edits -------------------------------------------
    def _fill_table(self) -> None:
        from ..instances.objects import object_table

        layer = self.labels_layer
        if layer is None:
            return
        src = self._source if getattr(self, "_source", None) is not None else None
        intensity = np.asarray(src.data) if src is not None else None
        self.rows = object_table(layer.data, intensity, self.scores, spacing=tuple(layer.scale))
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            vals = (r["label"], f"{r['size']:.4g}", "" if r["mean_intensity"] is None else f"{r['mean_intensity']:.4g}",
                    "" if r["score"] is None else f"{r['score']:.3f}")
            for j, v in enumerate(vals):
                self.table.setItem(i, j, QTableWidgetItem(str(v)))
        self.table.blockSignals(False)

    def _selected_labels(self) -> list:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [self.rows[r]["label"] for r in rows if r < len(self.rows)]

    def _on_row_selected(self) -> None:
        labels = self._selected_labels()
        if labels:
            self.select(labels[-1])

    def select(self, label: int) -> None:
        """Make ``label`` the Labels layer's selected value and centre the view (and slice) on it."""
        layer = self.labels_layer
        row = next((r for r in self.rows if r["label"] == int(label)), None)
        if layer is None or row is None:
            return
        layer.selected_label = int(label)
        layer.show_selected_label = False
        world = np.asarray(layer.data_to_world(np.asarray(row["centre"])))
        if world.size == 3:
            self.viewer.dims.set_point(list(range(self.viewer.dims.ndim))[-3], world[0])
        self.viewer.camera.center = tuple(world[-2:])

    def _apply(self, labels: np.ndarray, scores, text: str) -> None:
        """Show ``labels`` in the result layer as one undoable step of this dock."""
        before = (np.array(self.labels_layer.data, copy=True), self.scores)
        after = (labels, scores)
        self._show(*after)
        self.history.push(Action(text, lambda: self._show(*before), lambda: self._show(*after)))

    def _show(self, labels: np.ndarray, scores) -> None:
        layer = self.labels_layer
        if layer is None:
            return
        if layer.data.shape == labels.shape:
            layer.data[...] = labels  # in place: the layer keeps its identity and view
            layer.refresh()
        else:
            layer.data = labels
        self.scores = scores
        self._fill_table()

    def undo(self) -> Optional[str]:
        """Undo the last run, delete or merge of this dock; returns its description."""
        action = self.history.undo()
        return action.text if action else None

    def redo(self) -> Optional[str]:
        action = self.history.redo()
        return action.text if action else None

    def commit(self, name: str = "object") -> dict:
        """Enter every object as a segment of the Segment panel, one undo step there (Ctrl+Z undoes it).

        Opens the Segment panel when it is not open.  Returns
        :meth:`SegmentStore.apply_result`'s ``{"labels", "written", "skipped"}``.
        """
        from ._session import segment_panel_for

        layer = self.labels_layer
        if layer is None or not np.any(layer.data):
            raise SamlabError("there are no objects to commit: run Segment all first")
        source = getattr(self, "_source", None)
        if source is None or source not in self.viewer.layers:
            raise SamlabError("the image of these objects is gone: run Segment all on an open image")
        seg = segment_panel_for(self.viewer)
        if seg is None:
            from .segmentation_widget import SegmentationWidget

            seg = SegmentationWidget(self.viewer)
            self.viewer.window.add_dock_widget(seg, name="Segment", area="right")
        out = seg.apply_result(np.asarray(layer.data), name=name, image=source)
        self.status.setText(f"committed {len(out['labels'])} objects as segments "
                            f"{out['labels'][0]}..{out['labels'][-1]}" if out["labels"] else "nothing committed")
        return out

    def _slot(self, fn, doing: str):
        try:
            return fn()
        except SamlabError as err:
            self.status.setText(err.for_gui())
        except Exception as err:  # noqa: BLE001 - widget slot boundary
            self.status.setText(self.notes.exception(err, doing))
        return None

    def delete(self, labels: Sequence[int]) -> None:
        from ..instances.objects import delete_objects

        if self.labels_layer is None or not labels:
            return
        self._apply(*delete_objects(self.labels_layer.data, labels, self.scores), f"delete {len(labels)} objects")

    def merge(self, labels: Sequence[int]) -> None:
        from ..instances.objects import merge_objects

        if self.labels_layer is None:
            return
        try:
            self._apply(*merge_objects(self.labels_layer.data, labels, self.scores), f"merge {len(labels)} objects")
        except Exception as err:  # noqa: BLE001 - widget slot boundary
            self.notes.exception(err, "merging objects")
