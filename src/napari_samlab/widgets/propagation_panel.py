"""The "Propagate" section of the segmentation panel.

Thin translation between napari and :mod:`napari_samlab.propagate`:

* the prompts of the *displayed* plane's orientation become anchors, the
  image is viewed with the plane's normal axis first (axial by default), and
  :func:`~napari_samlab.propagate.propagate_volume` runs in a worker with
  progress and Cancel; its mask goes into every slice of the "samlab
  preview" layer (nothing is committed until the user commits);
* a table lists the per-slice quality records (flagged rows highlighted);
  clicking a row or "next flagged" (Shift+F) goes to the slice;
* "Re-propagate from this slice" makes the displayed slice of the preview
  (re-prompted or painted) an anchor and calls
  :func:`~napari_samlab.propagate.repropagate`; every other slice the user
  changed since the last propagation becomes an anchor too, so paint edits
  elsewhere survive, and voxels of completed/locked segments are passed as
  ``locked``;
* "Fill between slices" is :func:`~napari_samlab.propagate.interpolate_slices`;
* background prefetch: while the user looks at a slice of a volume (with a
  model whose encode is not trivial), the slice and its neighbours
  (:func:`~napari_samlab.propagate.plan.slices_around`, the direction of the
  last movement first) are encoded in a low-priority thread; after a
  propagation, the slices next in its schedule
  (:func:`~napari_samlab.propagate.next_slices_to_encode`).  Moving,
  prompting, propagating or closing cancels it mid-encode
  (:func:`~napari_samlab.base.cancel.cancellable`), so the session lock is
  free for the user's action at once.  Cancel stops a running propagation
  the same way, not only between slices.

No algorithm lives here.
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, fields, replace
from typing import Dict, Iterable, List, Optional

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QCheckBox, QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
    QLineEdit, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout,
)

from ..errors import Cancelled, SamlabError
from ..base.cancel import cancellable
from ..propagate import (
    FLAGS, PropagationResult, PropagationSettings, interpolate_slices, next_slices_to_encode,
    propagate_volume, repropagate,
)
from ..propagate.plan import slices_around
from ._common import progress_and_cancel, wait_until
from ._plane import layer_array, spatial_shape

FLAG_COLOR = QColor(255, 205, 195)
PREFETCH_N = 4
PREFETCH_IDLE_MS = 400
#: neighbours encoded around the displayed slice (besides the slice itself)
PREFETCH_AROUND = 4
#: added to the prefetch thread's nice value (Linux)
PREFETCH_NICE = 10
#: families whose encode costs about as much as a cache look-up: never prefetched
CHEAP_ENCODERS = ("classic",)
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

    @property
    def axis(self) -> int:
        return self.order[0]

    def same(self, other: Optional["_Context"]) -> bool:
        return other is not None and other.image is self.image and other.order == self.order


class _Relay(QObject):
    """Carries progress from worker threads to the Qt thread (queued signals)."""

    progressed = Signal(int, int, int)
    prefetched = Signal(object, int)  # (run token, slice really encoded)
    prefetch_done = Signal(object)  # run token


def _lower_priority(niceness: int = PREFETCH_NICE) -> None:
    """Make the calling thread give way to the user's work (Linux; elsewhere nothing).

    Only this thread is affected: the thread pools of torch, ONNX Runtime
    and OpenVINO are threads of their own at normal priority, which is why
    stopping a prefetch relies on cancellation, not on priority.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(niceness)))
    except (OSError, AttributeError, ValueError):
        pass  # not permitted here: run at normal priority


def _acquire(lock, cancel: threading.Event) -> bool:
    """Take ``lock`` unless ``cancel`` is set first (polls, so a stopped prefetch ends promptly)."""
    while not cancel.is_set():
        if lock.acquire(timeout=0.05):
            if not cancel.is_set():
                return True
            lock.release()
    return False


class _PrefetchState:
    """What a prefetch thread is doing, shared with the GUI thread.

    ``encoding`` is ``(axis, z)`` of the slice being encoded (None between
    slices); setting ``last`` lets that encode finish and ends the prefetch
    after it (the user prompted on exactly that slice: restarting its encode
    would only make them wait longer).
    """

    def __init__(self, axis: int):
        self.axis = axis
        self.encoding: Optional[tuple] = None
        self.last = threading.Event()


def _prefetch_job(session, predictor, vol: np.ndarray, zs: List[int], win, cancel: threading.Event,
                  relay: _Relay, token, state: _PrefetchState) -> None:
    """Body of a prefetch thread: encode ``vol[z]`` for ``zs`` until ``cancel`` (or ``state.last``) is set."""
    _lower_priority()
    try:
        for z in zs:
            if state.last.is_set() or not _acquire(session.lock, cancel):
                return
            try:
                if predictor is not session.predictor:
                    return  # the model changed: these embeddings would never be used
                before = predictor.encoder_calls
                state.encoding = (state.axis, int(z))
                try:
                    with cancellable(cancel):
                        predictor.set_image(np.ascontiguousarray(vol[z]), window=win)
                finally:
                    state.encoding = None
                new = predictor.encoder_calls > before
            finally:
                session.lock.release()
            if new:
                relay.prefetched.emit(token, int(z))
    except Cancelled:
        pass
    except Exception:  # noqa: BLE001 - background work: a failure only means nothing is cached
        pass
    finally:
        try:
            relay.prefetch_done.emit(token)
        except RuntimeError:
            pass  # the panel is gone


class PropagationPanel(QGroupBox):
    """Propagation controls, quality table and prefetch for a :class:`SegmentationWidget`.

    Reached as ``seg.propagation``; the main actions are also methods of the
    segmentation panel (``seg.propagate``, ``seg.repropagate_from``,
    ``seg.next_flagged``, ``seg.fill_between``, ``seg.propagation_result``).
    """

    def __init__(self, seg, parent=None):
        super().__init__("Propagate", parent)
        self.seg = seg
        self.result: Optional[PropagationResult] = None
        self.last_error: Optional[str] = None
        self.prefetched: List[int] = []  # slices the last prefetch really encoded
        self._ctx: Optional[_Context] = None
        self._baseline: Optional[np.ndarray] = None  # preview as the last propagation wrote it
        self._worker = None
        self._cancel = threading.Event()
        self._prefetch_cancel = threading.Event()
        self._prefetch_token = None  # the running prefetch (None: none)
        self._prefetch_state: Optional[_PrefetchState] = None
        self._prefetch_threads: List[threading.Thread] = []
        self._last_pos = None  # (image id, axis, z) of the last slice shown
        self._direction = 1  # last movement along that axis
        self._extra: Dict[str, object] = {}  # PropagationSettings fields not shown in the panel
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._relay.prefetched.connect(self._on_prefetched)
        self._relay.prefetch_done.connect(self._on_prefetch_finished)
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
        self.stop_button.clicked.connect(lambda: self._guard(self.mark_stop, "marking a stop slice"))
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
        self.propagate_button.clicked.connect(lambda: self._guard(self.propagate, "propagating"))
        self.repropagate_button = QPushButton("Re-propagate from here")
        self.repropagate_button.setToolTip("after correcting the displayed slice (new prompt + segment, or paint in the "
                                           "preview): recompute from it to the next anchor or limit only")
        self.repropagate_button.clicked.connect(lambda: self._guard(self.repropagate_from, "re-propagating"))
        self.fill_button = QPushButton("Fill between")
        self.fill_button.setToolTip("model-free: interpolate the shapes between the slices you painted or committed")
        self.fill_button.clicked.connect(lambda: self._guard(self.fill_between, "filling between slices"))
        for b in (self.propagate_button, self.repropagate_button, self.fill_button):
            row.addWidget(b)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.progress, self.cancel_button = progress_and_cancel(
            "stop propagating now (the slices done so far are kept)", lambda: self._guard(self.cancel, "cancelling"))
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
        self.next_button.clicked.connect(lambda: self._guard(self.next_flagged, "going to the next flagged slice"))
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
        self.table.cellClicked.connect(lambda r, c: self._guard(lambda: self._on_row(r), "going to the slice"))
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

    def _guard(self, fn, doing: str):
        return self.seg._guard(fn, doing)

    # ==================================================================
    # settings
    # ==================================================================
    def settings(self) -> PropagationSettings:
        """The :class:`PropagationSettings` the panel's controls describe."""
        zmin, zmax = self.z_from.value(), self.z_to.value()
        s = PropagationSettings(
            z_min=None if zmin < 0 else zmin, z_max=None if zmax < 0 else zmax,
            stop_slices=set(self.stop_slices()), max_empty=self.empty_spin.value(),
            stop_min_iou=self.iou_spin.value(), stop_area_factor=self.area_spin.value(),
            stop_min_score=self.score_spin.value())
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
    def running(self) -> bool:
        """Whether a propagation or re-propagation is in progress."""
        return self._worker is not None

    @property
    def prefetching(self) -> bool:
        """Whether a background prefetch is running (a stopped one until its thread let go)."""
        return self._prefetch_token is not None

    def _context(self) -> _Context:
        seg = self.seg
        im = seg._require_image()
        plane = seg.current_plane()
        if getattr(im, "rgb", False) or len(spatial_shape(im)) != 3:
            raise SamlabError("propagation needs a 3D volume: open a CT/MRI volume or a z-stack (2D images have one slice)")
        if seg.source_combo.currentIndex() == 1:
            raise SamlabError("propagation works on one channel: set Channels to 'this layer'")
        (axis, z), = plane.index
        order = (int(axis), int(plane.axes[0]), int(plane.axes[1]))
        vol = np.asarray(layer_array(im)).transpose(order)
        return _Context(im, order, vol, int(z), tuple(plane.axes), seg.session.generation)

    def _preview_view(self, ctx: _Context, create: bool = True) -> Optional[np.ndarray]:
        pv = self.seg._ensure_preview() if create else self.seg._helper("_preview")
        return None if pv is None else pv.data.transpose(ctx.order)

    def _anchors(self, ctx: _Context) -> dict:
        """Prompts of the displayed orientation, plus slices the user changed since the last propagation."""
        anchors = {}
        for plane, prompt in self.seg._collect().values():
            if tuple(plane.axes) == ctx.axes and prompt is not None:
                anchors[int(plane.index[0][1])] = prompt
        view = self._preview_view(ctx, create=False)
        if self.result is not None and ctx.same(self._ctx):
            for z in self._edited(ctx, view):
                anchors.setdefault(z, view[z] > 0)
        elif not anchors and view is not None:
            # no prompts: the slices painted into the preview are the anchors
            for z in np.flatnonzero(view.reshape(view.shape[0], -1).any(1)):
                anchors[int(z)] = view[int(z)] > 0
        return anchors

    def _edited(self, ctx: _Context, view: Optional[np.ndarray]) -> List[int]:
        """Slices whose preview differs from what the last propagation wrote (painted or re-segmented)."""
        if view is None or self._baseline is None or self._baseline.shape != view.shape:
            return []
        diff = (view > 0) != self._baseline
        return [int(z) for z in np.flatnonzero(diff.reshape(diff.shape[0], -1).any(1))]

    def _locked(self, ctx: _Context) -> Optional[np.ndarray]:
        """Voxels of completed/locked segments (other than the current label): never written."""
        seg = self.seg
        tgt, table = seg._helper("_target"), seg._table()
        if tgt is None or table is None:
            return None
        prot = table.protected_labels(seg.label_spin.value())
        if not prot:
            return None
        lock = np.isin(np.asarray(tgt.data), prot).transpose(ctx.order)
        return lock if lock.any() else None

    def forget(self) -> None:
        """Drop the result (after a commit, or when the image changes)."""
        self.stop_prefetch()
        self.result = None
        self._ctx = None
        self._baseline = None
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
        seg = self.seg
        self._flush_live()
        ctx = self._context()
        anchors = self._anchors(ctx)
        s = self.settings()
        locked = self._locked(ctx)
        win = seg._resolved_window()
        predictor, lock = seg.session.predictor, seg.session.lock
        event, progress = self._cancel, self._progress_cb

        def job():
            # Cancel is checked between slices and also stops an encode in progress
            with lock, cancellable(event):
                return propagate_volume(predictor, ctx.vol, anchors, window=win, settings=s, locked=locked,
                                        cancel=event.is_set, progress=progress)

        self._start(job, ctx, "propagating")
        return self._wait(wait, timeout, "propagation")

    def repropagate_from(self, z: Optional[int] = None, wait: bool = False, timeout: float = 3600) -> Optional[PropagationResult]:
        """Make slice ``z`` (default: displayed) of the preview an anchor and recompute what depends on it.

        Slices outside the range from ``z`` to the next anchor/limit keep their
        values; other slices the user changed since the last propagation become
        anchors (their edits survive); completed/locked segments are never
        overwritten.
        """
        if self._busy_refuse():
            return None
        if self.result is None:
            raise SamlabError("nothing to re-propagate yet: press Propagate first")
        self._flush_live()
        ctx = self._context()
        if not ctx.same(self._ctx):
            raise SamlabError("the last propagation ran on another image or orientation: propagate again first")
        z = ctx.z if z is None else int(z)
        n = ctx.vol.shape[0]
        if not 0 <= z < n:
            raise SamlabError(f"slice {z} is outside the volume (0..{n - 1}): choose a slice in range")
        view = self._preview_view(ctx)
        current = view > 0
        anchors = dict(self.result.anchors)
        for e in self._edited(ctx, view):
            if e != z:
                anchors[e] = current[e].copy()
        base = replace(self.result, mask=current.copy(), anchors=anchors)
        corrected = current[z].copy()
        s = self.settings()
        locked = self._locked(ctx)
        predictor, lock = self.seg.session.predictor, self.seg.session.lock
        event, progress = self._cancel, self._progress_cb

        def job():
            with lock, cancellable(event):
                return repropagate(predictor, ctx.vol, base, z, corrected, locked=locked, settings=s,
                                   cancel=event.is_set, progress=progress)

        self._start(job, ctx, f"re-propagating from slice {z}")
        return self._wait(wait, timeout, "re-propagation")

    def _busy_refuse(self) -> bool:
        if self._worker is not None:
            self.seg.notes.warning("a propagation is running: wait, or press Cancel")
            return True
        return False

    def _flush_live(self) -> None:
        """Let the live loop finish so the preview reflects the latest prompts."""
        seg = self.seg
        if seg._debounce.isActive():
            seg._debounce.stop()
            seg._update()
        wait_until(lambda: seg._worker is None and not seg._queue, 300)

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
        if not wait_until(lambda: self._worker is None, timeout):
            raise SamlabError(f"{what} did not finish within {timeout:g} s: press Cancel, set z-limits or use a faster model")
        if self.last_error:
            raise SamlabError(self.last_error)
        return self.result

    def _on_progress(self, done: int, total: int, z: int) -> None:
        if not self._alive():
            return
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))
        self.summary.setText(f"slice {z}: {done}/{total}" if z >= 0 else f"{done}/{total}")

    def _on_result(self, res: PropagationResult, ctx: _Context) -> None:
        if not self._alive() or res is None:
            return
        seg = self.seg
        if ctx.image is not seg._image or ctx.generation != seg.session.generation:
            seg.discarded += 1
            return  # the image or the model changed meanwhile
        view = self._preview_view(ctx)
        if res.labels is not None:
            view[...] = res.labels
        else:
            view[...] = res.mask
        seg._preview.refresh()
        self.result = res
        self._ctx = ctx
        self._baseline = view > 0
        self._fill_table()
        ext = res.z_extent()
        stops = ", ".join(f"{k}: {v}" for k, v in res.stop_reasons.items())
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
        self.last_error = self.seg.notes.exception(exc, what)
        self.summary.setText(self.last_error)

    def _on_finished(self, worker) -> None:
        if not self._alive():
            return
        if worker is self._worker:
            self._worker = None
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(1)

    def cancel(self) -> None:
        """Stop propagation (mid-encode where the backend allows; what is done is kept) and any prefetch."""
        self._cancel.set()
        self.stop_prefetch()

    def _alive(self) -> bool:
        try:
            self.objectName()
        except RuntimeError:
            return False
        return not getattr(self.seg, "_closed", False)

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
        if res is None:
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
        """Interpolate the shapes between annotated slices into the preview; returns the filled slices.

        The annotated slices are ``slices``, or: the slices of the preview the
        user painted, prompted or changed (all non-empty preview slices when
        there is no propagation); with an empty preview, the slices of the
        current label's committed segment.  Completed/locked segments of
        other labels are never overwritten.
        """
        if self._busy_refuse():
            return []
        self._flush_live()
        ctx = self._context()
        view = self._preview_view(ctx)
        src = view > 0
        from_segment = not src.any()
        if from_segment:
            tgt = self.seg._helper("_target")
            if tgt is None:
                raise SamlabError("nothing to fill between: paint or segment the object on a few slices first")
            src = (np.asarray(tgt.data) == self.seg.label_spin.value()).transpose(ctx.order)
        nonempty = [int(z) for z in np.flatnonzero(src.reshape(src.shape[0], -1).any(1))]
        if slices is not None:
            zs = sorted({int(z) for z in slices})
        elif from_segment or self.result is None or not ctx.same(self._ctx):
            zs = nonempty
        else:
            own = {int(p.index[0][1]) for p, pr in self.seg._collect().values()
                   if tuple(p.axes) == ctx.axes and pr is not None}
            zs = sorted((set(self.result.anchors) | set(self._edited(ctx, view)) | own) & set(nonempty))
        if len(zs) < 2:
            raise SamlabError("fill between needs at least two annotated slices: paint, segment or commit the object on "
                              "two slices with a gap between them")
        out = interpolate_slices(src, zs, method=method)
        lo, hi = zs[0], zs[-1]
        filled = [z for z in range(lo + 1, hi) if z not in set(zs)]
        new = out[lo:hi + 1]
        locked = self._locked(ctx)
        if locked is not None:
            new = new & ~locked[lo:hi + 1]
        view[lo:hi + 1] = np.where(new, 1, 0).astype(view.dtype)
        self.seg._preview.refresh()
        self.summary.setText(f"filled {len(filled)} slices between {lo} and {hi} ({method})")
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
            if self.result is not None and ctx.same(self._ctx):
                zs = next_slices_to_encode(self.result, n)
            else:
                zs = slices_around(ctx.z, ctx.vol.shape[0], n + 1, self._direction)
        zs = [int(z) for z in zs if 0 <= int(z) < ctx.vol.shape[0]]
        self.stop_prefetch()
        if not zs or self._worker is not None:
            return
        seg = self.seg
        session, win = seg.session, seg._resolved_window()
        cancel = threading.Event()
        token = object()
        state = _PrefetchState(ctx.order[0])
        self._prefetch_cancel, self._prefetch_token, self._prefetch_state = cancel, token, state
        self.prefetched = []
        # a plain thread, not napari's pool: its lowered priority must not outlive it
        thread = threading.Thread(target=_prefetch_job, name="samlab-prefetch", daemon=True,
                                  args=(session, session.predictor, ctx.vol, zs, win, cancel, self._relay, token,
                                        state))
        self._prefetch_threads = [t for t in self._prefetch_threads if t.is_alive()] + [thread]
        thread.start()
        if wait:
            wait_until(lambda: self._prefetch_token is not token, timeout)

    def stop_prefetch(self, keep=None) -> None:
        """Stop background encoding now (the user started something else); the lock is free within moments.

        ``keep``: the :class:`Plane` the user is about to segment.  If the
        prefetch is encoding exactly that slice, that encode finishes (its
        embedding is what the user needs next) and the prefetch ends after it.
        """
        self._idle.stop()
        state = self._prefetch_state
        index = tuple(getattr(keep, "index", ()))
        if state is not None and len(index) == 1 and state.encoding == (int(index[0][0]), int(index[0][1])):
            state.last.set()
            if state.encoding is not None:
                return
        self._prefetch_cancel.set()

    def schedule_prefetch(self) -> None:
        """Prefetch around the displayed slice once the user has been idle for a moment (if enabled)."""
        if not self._alive():
            return
        self._last_pos = self._position()  # where the next movement starts from
        if self._prefetch_enabled():
            self._idle.start()

    def _prefetch_enabled(self) -> bool:
        """Automatic prefetch: ticked, a model whose encode costs something, and a volume shown."""
        if not self._alive() or not self.prefetch_check.isChecked() or self.seg._image is None:
            return False
        model = self.seg.session.model
        return model is not None and getattr(model, "family", "") not in CHEAP_ENCODERS

    def _on_prefetched(self, token, z: int) -> None:
        if token is self._prefetch_token:
            self.prefetched.append(int(z))

    def _on_prefetch_finished(self, token) -> None:
        if token is self._prefetch_token:
            self._prefetch_token = None

    def _on_prefetch_toggled(self, on: bool) -> None:
        if on:
            self.schedule_prefetch()
        else:
            self.stop_prefetch()

    def _auto_prefetch(self, from_result: bool = False) -> None:
        if self._worker is not None or self.seg.busy or not self._prefetch_enabled():
            return
        if not from_result and self.prefetching and not self._prefetch_cancel.is_set():
            return  # already encoding for this slice (e.g. the schedule after a propagation)
        try:
            if from_result:
                self.prefetch()
            else:
                ctx = self._context()
                self.prefetch(slices_around(ctx.z, ctx.vol.shape[0], PREFETCH_AROUND + 1, self._direction))
        except SamlabError:
            pass  # e.g. 3D display, a 2D image or composite channels: nothing to prefetch

    def _position(self) -> Optional[tuple]:
        """(image id, axis, slice) displayed now, or None when no slice of a volume is shown."""
        seg = self.seg
        if seg._image is None:
            return None
        try:
            plane = seg.current_plane()
        except SamlabError:
            return None
        if len(plane.index) != 1:
            return None
        (axis, z), = plane.index
        return id(seg._image), int(axis), int(z)

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
        wait_until(lambda: self._worker is None, 30)
        for t in self._prefetch_threads:
            t.join(timeout=30)  # cancelled: ends within an encode step
        self._prefetch_threads = []
