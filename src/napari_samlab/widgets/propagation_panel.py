"""The "Propagate" section of the segmentation panel: thin translation to the core.

* the prompts of the *displayed* plane's orientation become anchors, the
  image is viewed with the plane's normal axis first (axial by default), and
  :class:`~napari_samlab.session.PropagationState` runs propagation in
  napari's ``thread_worker`` with progress and Cancel; its mask goes into every slice of the
  "samlab preview" layer (nothing is committed until the user commits);
* a table lists the per-slice quality records (flagged rows highlighted); a row or Shift+F goes to the slice;
* "Re-propagate from here" makes the displayed slice of the preview an anchor (other slices changed
  since keep their edits; completed/locked segments are passed as ``locked``);
* "Fill between" (:func:`~napari_samlab.session.fill_gaps`) fills only the empty slices between annotated ones,
  never model output, in one undo step;
* background prefetch (:class:`~napari_samlab.session.Prefetcher`) of the
  displayed slice and its neighbours, or of the slices next in a
  propagation's schedule; any user action cancels it mid-encode.

The panel talks to the segmentation panel only through its public methods.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Iterable, List, Optional

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QCheckBox, QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
    QLineEdit, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout,
)

from ..errors import Cancelled, SamlabError
from ..propagate import FLAGS, PropagationResult, PropagationSettings, next_slices_to_encode
from ..propagate.plan import slices_around
from ..session import Prefetcher, PropagationState, fill_gaps, worth_prefetching
from ._common import log, progress_and_cancel, wait_until
from ._plane import layer_array, spatial_shape

FLAG_COLOR = QColor(255, 205, 195)
PREFETCH_N = 4
PREFETCH_IDLE_MS = 400
#: neighbours encoded around the displayed slice (besides the slice itself)
PREFETCH_AROUND = 4
#: settings the panel shows (PropagationSettings field -> label)
SHOWN_SETTINGS = ("z_min", "z_max", "stop_slices", "max_empty", "stop_min_iou", "stop_area_factor", "stop_min_score")


@dataclass
class _Context:
    """One image viewed with the propagation axis first: ``vol = data.transpose(order)``."""

    image: object
    order: tuple  # (normal axis, row axis, column axis) of the layer data
    vol: np.ndarray
    z: int  # displayed slice along the normal axis
    axes: tuple  # displayed axes of the plane (rows, columns)
    generation: int
    spacing: tuple = None  # the layer's scale (mm) along ``order``: thick slices matter to propagation

    @property
    def axis(self) -> int:
        return self.order[0]

    @property
    def key(self) -> tuple:
        """What a propagation result belongs to: this image seen along this axis."""
        return (id(self.image), self.order)


class _Relay(QObject):
    """Carries progress from the worker thread to the Qt thread (queued signal)."""

    progressed = Signal(int, int, int)


class PropagationPanel(QGroupBox):
    """Propagation controls, quality table and prefetch for a :class:`SegmentationWidget`.

    Reached as ``seg.propagation``; the main actions are also methods of the
    segmentation panel (``seg.propagate``, ``seg.repropagate_from``,
    ``seg.next_flagged``, ``seg.fill_between``, ``seg.propagation_result``).
    """

    def __init__(self, seg, parent=None):
        super().__init__("Propagate", parent)
        self.seg = seg
        self.state = PropagationState()
        self.prefetcher = Prefetcher(seg.session)
        self.last_error: Optional[str] = None
        self._ctx: Optional[_Context] = None
        self._worker = None
        self._pending = False  # a (re-)propagation waiting for the live preview
        self._cancel = threading.Event()
        self._last_pos = None  # (image id, axis, z) of the last slice shown
        self._direction = 1  # last movement along that axis
        self._extra: dict = {}  # PropagationSettings fields not shown in the panel
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._build_ui()
        self._idle = QTimer(self)
        self._idle.setSingleShot(True)
        self._idle.setInterval(PREFETCH_IDLE_MS)
        self._idle.timeout.connect(self._on_idle)
        seg.viewer.dims.events.current_step.connect(self._on_step)

    # ==================================================================
    # UI
    # ==================================================================
    def _build_ui(self) -> None:
        d = PropagationSettings()
        lay = QVBoxLayout(self)
        grid = QGridLayout()
        self.z_from = QSpinBox()
        self.z_to = QSpinBox()
        for sp, tip in ((self.z_from, "first slice propagation may visit"), (self.z_to, "last slice propagation may visit")):
            sp.setRange(-1, 100000)
            sp.setValue(-1)
            sp.setSpecialValueText("—")
            sp.setToolTip(tip + " (— = no limit)")
        self.stop_edit = QLineEdit()
        self.stop_edit.setPlaceholderText("none")
        self.stop_edit.setToolTip("slices marked 'stop' (comma separated): no run enters them")
        self.stop_button = QPushButton("Stop here")
        self.stop_button.setToolTip("mark (or unmark) the displayed slice as a stop slice")
        self.stop_button.clicked.connect(lambda: self.seg.guard(self.mark_stop, "marking a stop slice"))
        self.empty_spin = QSpinBox()
        self.empty_spin.setRange(1, 100)
        self.empty_spin.setValue(d.max_empty)
        self.empty_spin.setToolTip("a run ends when the object is absent on this many slices in a row")
        self.iou_spin = self._dspin(0, 1, 0.05, d.stop_min_iou, "end a run when IoU with the previous slice falls below this")
        self.area_spin = self._dspin(1, 1000, 0.5, d.stop_area_factor, "end a run when the area grows or shrinks by more than this factor")
        self.score_spin = self._dspin(0, 1, 0.05, d.stop_min_score, "end a run when the model's score falls below this (0 = off)")
        grid.addWidget(QLabel("from"), 0, 0)
        grid.addWidget(self.z_from, 0, 1)
        grid.addWidget(QLabel("to"), 0, 2)
        grid.addWidget(self.z_to, 0, 3)
        grid.addWidget(QLabel("stop"), 1, 0)
        grid.addWidget(self.stop_edit, 1, 1, 1, 2)
        grid.addWidget(self.stop_button, 1, 3)
        grid.addWidget(QLabel("empty N"), 2, 0)
        grid.addWidget(self.empty_spin, 2, 1)
        grid.addWidget(QLabel("min IoU"), 2, 2)
        grid.addWidget(self.iou_spin, 2, 3)
        grid.addWidget(QLabel("area ×"), 3, 0)
        grid.addWidget(self.area_spin, 3, 1)
        grid.addWidget(QLabel("min score"), 3, 2)
        grid.addWidget(self.score_spin, 3, 3)
        lay.addLayout(grid)

        row = QHBoxLayout()
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip("propagate the prompts of the displayed orientation through the volume "
                                         "(along the displayed plane's normal) into the preview")
        self.propagate_button.clicked.connect(lambda: self.seg.guard(self.propagate, "propagating"))
        self.repropagate_button = QPushButton("Re-propagate from here")
        self.repropagate_button.setToolTip("after correcting the displayed slice (new prompt + segment, or paint in the "
                                           "preview): recompute from it to the next anchor or limit only")
        self.repropagate_button.clicked.connect(lambda: self.seg.guard(self.repropagate_from, "re-propagating"))
        self.fill_button = QPushButton("Fill between")
        self.fill_button.setToolTip("model-free: interpolate the shapes between the slices you painted or committed")
        self.fill_button.clicked.connect(lambda: self.seg.guard(self.fill_between, "filling between slices"))
        for b in (self.propagate_button, self.repropagate_button, self.fill_button):
            row.addWidget(b)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.progress, self.cancel_button = progress_and_cancel(
            "stop propagating now (the slices done so far are kept)", lambda: self.seg.guard(self.cancel, "cancelling"))
        self.prefetch_check = QCheckBox("prefetch")
        self.prefetch_check.setChecked(True)
        self.prefetch_check.setToolTip("encode the displayed slice and its neighbours in the background (after a "
                                       "propagation: the slices next in line), so prompts are answered sooner")
        self.prefetch_check.toggled.connect(self._on_prefetch_toggled)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        row.addWidget(self.prefetch_check)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.next_button = QPushButton("Next flagged")
        self.next_button.setToolTip("go to the next slice that deserves a look [Shift+F]")
        self.next_button.clicked.connect(lambda: self.seg.guard(self.next_flagged, "going to the next flagged slice"))
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        row.addWidget(self.next_button)
        row.addWidget(self.summary, 1)
        lay.addLayout(row)

        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["z", "score", "IoU", "area", "flags"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.table.horizontalHeader()
        for col in range(4):
            header.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.Stretch)
        self.table.setMinimumHeight(110)
        self.table.setToolTip("per-slice quality of the last propagation; flagged slices are highlighted; "
                              "click a row to go to its slice")
        self.table.cellClicked.connect(lambda r, c: self.seg.guard(lambda: self._on_row(r), "going to the slice"))
        lay.addWidget(self.table)

    @staticmethod
    def _dspin(lo, hi, step, value, tip) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(lo, hi)
        s.setSingleStep(step)
        s.setDecimals(2)
        s.setValue(value)
        s.setToolTip(tip)
        return s

    # ==================================================================
    # settings
    # ==================================================================
    def settings(self, ctx: Optional[_Context] = None) -> PropagationSettings:
        """The :class:`PropagationSettings` the panel's controls describe (with ``ctx``, its image's spacing)."""
        zmin, zmax = self.z_from.value(), self.z_to.value()
        s = PropagationSettings(
            z_min=None if zmin < 0 else zmin, z_max=None if zmax < 0 else zmax,
            stop_slices=set(self.stop_slices()), max_empty=self.empty_spin.value(),
            stop_min_iou=self.iou_spin.value(), stop_area_factor=self.area_spin.value(),
            stop_min_score=self.score_spin.value(), spacing=None if ctx is None else ctx.spacing)
        return s.with_(**self._extra) if self._extra else s

    def set_settings(self, **changes) -> PropagationSettings:
        """Change settings by :class:`PropagationSettings` field name, e.g. ``z_min=12, stop_min_iou=0.3``."""
        known = {f.name for f in fields(PropagationSettings)}
        bad = set(changes) - known
        if bad:
            raise SamlabError(f"unknown propagation setting {sorted(bad)[0]!r}: use one of {', '.join(sorted(known))}")
        for k, v in changes.items():
            if k == "z_min":
                self.z_from.setValue(-1 if v is None else int(v))
            elif k == "z_max":
                self.z_to.setValue(-1 if v is None else int(v))
            elif k == "stop_slices":
                self._set_stops(v or ())
            elif k == "max_empty":
                self.empty_spin.setValue(int(v))
            elif k == "stop_min_iou":
                self.iou_spin.setValue(float(v))
            elif k == "stop_area_factor":
                self.area_spin.setValue(float(v))
            elif k == "stop_min_score":
                self.score_spin.setValue(float(v))
            else:
                self._extra[k] = v
        return self.settings()

    def stop_slices(self) -> List[int]:
        text = self.stop_edit.text().replace(";", ",").replace(" ", ",")
        out = set()
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.add(int(part))
            except ValueError:
                raise SamlabError(f"stop slice {part!r} is not a slice number: give numbers separated by commas") from None
        return sorted(out)

    def _set_stops(self, zs: Iterable[int]) -> None:
        self.stop_edit.setText(", ".join(str(z) for z in sorted({int(z) for z in zs})))

    def mark_stop(self, z: Optional[int] = None) -> List[int]:
        """Toggle slice ``z`` (default: the displayed one) as a stop slice; returns the stop slices."""
        if z is None:
            z = self._context().z
        stops = set(self.stop_slices())
        stops ^= {int(z)}
        self._set_stops(stops)
        return sorted(stops)

    # ==================================================================
    # state
    # ==================================================================
    @property
    def result(self) -> Optional[PropagationResult]:
        """The last propagation's result (None before one, or after a commit)."""
        return self.state.result

    @property
    def running(self) -> bool:
        """Whether a propagation or re-propagation is in progress (or waiting to start)."""
        return self._worker is not None or self._pending

    @property
    def prefetching(self) -> bool:
        """Whether a background prefetch is running (a stopped one until its thread let go)."""
        return self.prefetcher.running

    @property
    def prefetched(self) -> List[int]:
        """Slices the last prefetch really encoded."""
        return list(self.prefetcher.encoded)

    def _context(self) -> _Context:
        seg = self.seg
        im = seg.require_image()
        plane = seg.current_plane()
        if not seg.is_volume:
            raise SamlabError("propagation needs a 3D volume: open a CT/MRI volume or a z-stack (2D images have one slice)")
        if seg.source.composite:
            raise SamlabError("propagation works on one channel: set Channels to 'this layer'")
        (axis, z), = plane.index
        order = (int(axis), int(plane.axes[0]), int(plane.axes[1]))
        vol = np.asarray(layer_array(im)).transpose(order)
        spacing = tuple(float(v) for v in np.asarray(im.scale)[-3:][list(order)])  # the layer's scale, in mm
        return _Context(im, order, vol, int(z), tuple(plane.axes), seg.session.generation, spacing)

    def _preview_view(self, ctx: _Context, create: bool = True) -> Optional[np.ndarray]:
        pv = self.seg.ensure_preview() if create else self.seg.preview_layer
        return None if pv is None else pv.data.transpose(ctx.order)

    def _locked(self, ctx: _Context) -> Optional[np.ndarray]:
        """Voxels of completed/locked segments (other than the current label): never written."""
        lock = self.seg.committed.protected_mask(self.seg.label_spin.value())
        return None if lock is None else lock.transpose(ctx.order)

    def forget(self) -> None:
        """Drop the result (after a commit, or when the image changes)."""
        self.stop_prefetch()
        self.state.forget()
        self._ctx = None
        self.table.setRowCount(0)
        self.summary.setText("")

    # ==================================================================
    # propagation
    # ==================================================================
    def propagate(self, wait: bool = False, timeout: float = 3600, **settings) -> Optional[PropagationResult]:
        """Propagate the displayed orientation's prompts through the volume into the preview.

        Keyword arguments change settings first (see :meth:`set_settings`).
        With ``wait=True`` returns the :class:`PropagationResult` (raises
        :class:`SamlabError` on failure).
        """
        if settings:
            self.set_settings(**settings)
        if self._busy_refuse():
            return None
        ctx = self._context()
        seg = self.seg
        prompts = seg.layers.prompts_along(ctx.axes)
        anchors = self.state.anchors(prompts, self._preview_view(ctx, create=False), ctx.key)
        if not anchors:
            raise SamlabError("nothing to propagate: prompt the object on one slice first (a box or a click on it)")
        seg.settle_preview()  # the propagation answers the prompted slices too
        job = self.state.propagate_job(seg.session.predictor, seg.session.lock, ctx.vol, anchors, window=seg.window,
                                       settings=self.settings(ctx), locked=self._locked(ctx), cancel=self._cancel,
                                       progress=self._progress_cb)
        self._start(job, ctx, "propagating")
        return self._wait(wait, timeout, "propagation")

    def repropagate_from(self, z: Optional[int] = None, wait: bool = False, timeout: float = 3600) -> Optional[PropagationResult]:
        """Make slice ``z`` (default: displayed) of the preview an anchor and recompute what depends on it.

        Slices outside the range from ``z`` to the next anchor/limit keep their
        values; other slices the user changed since the last propagation become
        anchors (their edits survive); completed/locked segments are never
        overwritten.  Runs once the live preview of a new prompt is there.
        """
        if self._busy_refuse():
            return None
        if self.result is None:
            raise SamlabError("nothing to re-propagate yet: press Propagate first")
        self._pending = True

        def start():
            self._pending = False
            try:
                ctx = self._context()
            except SamlabError as exc:  # the view changed while the preview finished
                self.last_error = str(exc)
                raise
            zz = ctx.z if z is None else int(z)
            seg = self.seg
            job = self.state.repropagate_job(seg.session.predictor, seg.session.lock, ctx.vol, self._preview_view(ctx),
                                             zz, ctx.key, settings=self.settings(ctx), locked=self._locked(ctx),
                                             cancel=self._cancel, progress=self._progress_cb)
            self._start(job, ctx, f"re-propagating from slice {zz}")

        try:
            self.seg.when_idle(start)
        except BaseException:
            self._pending = False
            raise
        return self._wait(wait, timeout, "re-propagation")

    def _busy_refuse(self) -> bool:
        if self.running:
            self.seg.notes.warning("a propagation is running: wait, or press Cancel")
            return True
        return False

    def _progress_cb(self, done: int, total: int, z) -> None:
        self._relay.progressed.emit(int(done), int(total), -1 if z is None else int(z))

    def _start(self, job, ctx: _Context, what: str) -> None:
        from napari.qt.threading import create_worker

        self.stop_prefetch()
        self._cancel.clear()
        self.last_error = None
        worker = create_worker(job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda res: self._on_result(res, ctx))
        worker.errored.connect(lambda exc: self._on_error(exc, what))
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        self.progress.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.summary.setText(what + "…")
        worker.start()

    def _wait(self, wait: bool, timeout: float, what: str) -> Optional[PropagationResult]:
        if not wait:
            return None
        if not wait_until(lambda: not self.running, timeout):
            raise SamlabError(f"{what} did not finish within {timeout:g} s: press Cancel, set z-limits or use a faster model")
        if self.last_error:
            raise SamlabError(self.last_error)
        return self.result

    def _on_progress(self, done: int, total: int, z: int) -> None:
        if not self._alive() or self._worker is None:
            return
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))
        self.summary.setText(f"slice {z}: {done}/{total}" if z >= 0 else f"{done}/{total}")

    def _on_result(self, res: PropagationResult, ctx: _Context) -> None:
        if not self._alive() or res is None:
            return
        seg = self.seg
        if ctx.image is not seg.image_layer or ctx.generation != seg.session.generation:
            seg.live.discarded += 1
            return  # the image or the model changed meanwhile
        self.state.accept(res, self._preview_view(ctx), ctx.key)
        seg.preview_layer.refresh()
        self._ctx = ctx
        self._fill_table()
        ext, why = res.z_extent(), res.stop_details
        stops = ", ".join(f"{k}: {v}" + (f" ({why[k]})" if k in why else "") for k, v in res.stop_reasons.items())
        text = (f"{'cancelled: ' if res.cancelled else ''}{len(res.records)} slices"
                + (f", object on {ext[0]}–{ext[1]}" if ext else ", no object")
                + f", {len(res.flagged_slices())} flagged" + (f" ({stops})" if stops else "")
                + f", {res.encoder_calls} encoded")
        self.summary.setText(text)
        if res.cancelled:
            seg.notes.info("propagation cancelled: the slices done so far are in the preview")
        if self._prefetch_enabled() and not res.cancelled:
            QTimer.singleShot(0, lambda: self._alive() and self._auto_prefetch(from_result=True))

    def _on_error(self, exc: BaseException, what: str) -> None:
        if not self._alive():
            return
        if isinstance(exc, Cancelled):
            # stopped inside an encode, and the core had no partial result to hand back
            self.summary.setText(f"cancelled while {what}: the preview is unchanged")
            self.seg.notes.info(f"cancelled while {what}: the preview is unchanged")
            return
        log.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
        self.last_error = self.seg.notes.exception(exc, what)
        self.summary.setText(self.last_error)

    def _on_finished(self, worker) -> None:
        if not self._alive():
            return
        if worker is self._worker:
            self._worker = None
        self.cancel_button.setEnabled(False)
        # the bar never stays part way: 100 % when done, empty when stopped or failed
        done = self.result is not None and not self.result.cancelled and not self.last_error
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if done else 0)

    def cancel(self) -> None:
        """Stop propagation (mid-encode where the backend allows; what is done is kept) and any prefetch."""
        self._cancel.set()
        self._pending = False
        self.stop_prefetch()

    def _alive(self) -> bool:
        try:
            self.objectName()
        except RuntimeError:
            return False
        return not self.seg.closed

    # ==================================================================
    # review
    # ==================================================================
    def _fill_table(self) -> None:
        res = self.result
        recs = [res.records[z] for z in sorted(res.records)] if res is not None else []
        self.table.setRowCount(len(recs))
        for r, rec in enumerate(recs):
            flags = ", ".join(sorted(rec.flags))
            if rec.source != "propagated":
                flags = f"({rec.source}) {flags}".strip()
            cells = [str(rec.z), f"{rec.score:.2f}", "–" if rec.iou_prev is None else f"{rec.iou_prev:.2f}",
                     str(rec.area), flags]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if rec.flags:
                    item.setBackground(FLAG_COLOR)
                    item.setToolTip("\n".join(f"{f}: {FLAGS.get(f, '')}" for f in sorted(rec.flags)))
                self.table.setItem(r, c, item)

    def flagged_rows(self) -> List[int]:
        """Table rows drawn as flagged (for tests and scripts)."""
        return [r for r in range(self.table.rowCount())
                if self.table.item(r, 0).background().color() == FLAG_COLOR]

    def _on_row(self, row: int) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.go_to(int(item.text()))

    def go_to(self, z: int) -> None:
        """Show slice ``z`` along the last propagation's axis."""
        axis = self._ctx.axis if self._ctx is not None else None
        self.seg.set_slice(int(z), axis)
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).text() == str(int(z)):
                self.table.selectRow(r)
                break

    def next_flagged(self, step: int = 1) -> Optional[int]:
        """Go to the next flagged slice after the displayed one (``step=-1``: before); returns it."""
        res = self.result
        if res is None or self._ctx is None:
            self.seg.notes.info("no propagation to review: press Propagate first")
            return None
        z = self._ctx.z
        try:
            plane = self.seg.current_plane()
            z = dict(plane.index).get(self._ctx.axis, z)
        except SamlabError:
            pass
        nxt = res.next_flagged(int(z), step=step)
        if nxt is None:
            self.seg.notes.info("no flagged slices")
            return None
        self.go_to(nxt)
        return nxt

    # ==================================================================
    # fill between slices (model-free)
    # ==================================================================
    def fill_between(self, slices: Optional[Iterable[int]] = None, method: str = "sdf") -> List[int]:
        """Fill the empty slices between annotated ones by shape interpolation; returns the filled slices.

        Only slices with no mask at all are written: model output and edits
        are never replaced.  The annotated slices are ``slices``, or every
        non-empty slice of the preview; with an empty preview, the slices of
        the current label's committed segment.  Completed/locked segments of
        other labels are never overwritten.  One undo step.
        """
        if self._busy_refuse():
            return []
        out: List[int] = []
        self.seg.when_idle(lambda: out.extend(self._fill_now(slices, method)))
        return out

    def _fill_now(self, slices, method: str) -> List[int]:
        ctx = self._context()
        view = self._preview_view(ctx)
        source = None
        if not view.any():
            seg_mask = self.seg.committed.mask_of(self.seg.label_spin.value())
            if seg_mask is None:
                raise SamlabError("nothing to fill between: paint or segment the object on a few slices first")
            source = seg_mask.transpose(ctx.order)
        filled, old = fill_gaps(view, source=source, slices=slices, locked=self._locked(ctx), method=method)
        self.seg.preview_layer.refresh()
        if not old:
            self.seg.notes.info("nothing to fill: every slice between the annotated ones already has a mask "
                                "(fill between never replaces model output)")
            self.summary.setText("nothing to fill: no empty slice between annotated ones")
            return []
        new = {z: view[z].copy() for z in old}

        def put(slices_values):
            v = self._preview_view(ctx)
            for zz, values in slices_values.items():
                v[zz] = values
            self.seg.preview_layer.refresh()

        self.seg.push_undo("fill between", lambda: put(old), lambda: put(new))
        self.summary.setText(f"filled {len(filled)} empty slices between {min(old)} and {max(old)} ({method})")
        return filled

    # ==================================================================
    # background prefetch
    # ==================================================================
    def prefetch(self, zs: Optional[Iterable[int]] = None, n: int = PREFETCH_N, wait: bool = False,
                 timeout: float = 600) -> None:
        """Encode slices in a low-priority thread so later prompts/propagation find them cached.

        ``zs`` defaults to the next ``n`` slices of the last propagation's
        schedule, or the displayed slice and its ``n`` nearest neighbours
        (the direction of the last movement first).  Moving, prompting,
        propagating or closing stops it, mid-encode where the backend allows
        (:meth:`stop_prefetch`).  The slices really encoded end up in
        :attr:`prefetched`.
        """
        ctx = self._context()
        if zs is None:
            if self.state.same(ctx.key):
                zs = next_slices_to_encode(self.result, n)
            else:
                zs = slices_around(ctx.z, ctx.vol.shape[0], n + 1, self._direction)
        self.stop_prefetch()
        if self._worker is not None:
            return
        self.prefetcher.start(ctx.vol, list(zs), self.seg.window, axis=ctx.axis)
        if wait:
            wait_until(lambda: not self.prefetcher.running, timeout)

    def stop_prefetch(self, keep=None) -> None:
        """Stop background encoding now (the user started something else).

        ``keep``: the :class:`Plane` the user is about to segment.  If the
        prefetch is encoding exactly that slice, that encode finishes and the
        prefetch ends after it.
        """
        self._idle.stop()
        index = tuple(getattr(keep, "index", ()))
        self.prefetcher.stop(keep=index[0] if len(index) == 1 else None)

    def schedule_prefetch(self) -> None:
        """Prefetch around the displayed slice once the user has been idle for a moment (if enabled)."""
        if not self._alive():
            return
        self._last_pos = self._position()  # where the next movement starts from
        if self._prefetch_enabled():
            self._idle.start()

    def _prefetch_enabled(self) -> bool:
        """Automatic prefetch: ticked, a model whose encode costs something, and a volume shown."""
        return (self._alive() and self.prefetch_check.isChecked() and self.seg.is_volume
                and worth_prefetching(self.seg.session.model))

    def _on_prefetch_toggled(self, on: bool) -> None:
        if on:
            self.schedule_prefetch()
        else:
            self.stop_prefetch()

    def _auto_prefetch(self, from_result: bool = False) -> None:
        if self._worker is not None or self.seg.busy or not self._prefetch_enabled():
            return
        if not from_result and self.prefetcher.active:
            return  # already encoding for this slice (e.g. the schedule after a propagation)
        try:
            if from_result:
                self.prefetch()
            else:
                ctx = self._context()
                self.prefetch(slices_around(ctx.z, ctx.vol.shape[0], PREFETCH_AROUND + 1, self._direction))
        except SamlabError:
            pass  # e.g. 3D display or composite channels: nothing to prefetch

    def _position(self) -> Optional[tuple]:
        """(image id, axis, slice) displayed now, or None when no slice of a volume is shown."""
        seg = self.seg
        if seg.image_layer is None:
            return None
        try:
            plane = seg.current_plane()
        except SamlabError:
            return None
        if len(plane.index) != 1:
            return None
        (axis, z), = plane.index
        return id(seg.image_layer), int(axis), int(z)

    def _on_step(self, event=None) -> None:
        """The user moved: stop encoding for the old slice; encode around the new one once idle."""
        if not self._alive():
            return
        pos = self._position()
        last, self._last_pos = self._last_pos, pos
        if pos is not None and last is not None and last[:2] == pos[:2] and last[2] != pos[2]:
            self._direction = 1 if pos[2] > last[2] else -1
        self.stop_prefetch()  # also one a script started: the user has moved on
        if pos is not None and self._prefetch_enabled():
            self._idle.start()

    def _on_idle(self) -> None:
        if self._alive():
            self._auto_prefetch()

    def shutdown(self) -> None:
        self.cancel()
        self.prefetcher.join(timeout=30)  # cancelled: ends within an encode step
