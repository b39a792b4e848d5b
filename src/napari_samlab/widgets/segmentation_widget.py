"""The segmentation panel: prompts in, live preview, commit into named segments.

The panel only translates between napari and the core; every button is a
public method (scriptable from napari's console).  One module per concern:

* :mod:`.source_panel` (image, channels, window, views), :mod:`.image_binding`
  (the bound image follows the layer list), :mod:`.views` (planes, slices);
* :mod:`.prompt_layers` (points/boxes/preview layers as prompts, SPEC.md
  indices; their undo steps), :mod:`.prompts_panel`, :mod:`.live` (workers,
  newest answer per plane wins, no nested event loops);
* :mod:`.propagation_panel`: propagation, review, fill between, prefetch;
* :mod:`.segments_layer` / :mod:`.segments_panel`: the segments layer and its
  :class:`~napari_samlab.session.SegmentStore`; :mod:`.prompt_files` (prompts/labels files, other docks' results).
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional

import numpy as np
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..errors import SamlabError
from ..session.segments import Action, History, SegmentStore
from ._common import Notifier, alive, guard, wait_until
from ._plane import Plane, current_plane, layer_array, spatial_shape
from ._session import session_for
from .image_binding import ImageBinding, is_image
from .keys import SHORTCUTS, bind_shortcuts, pretty
from .live import LivePreview, Request
from .prompt_layers import (  # noqa: F401 - names scripts and tests use
    BOXES_NAME, NEGATIVE_COLOR, POINTS_NAME, POSITIVE_COLOR, PREVIEW_NAME, PromptLayers,
)
from .prompt_files import PromptFilesMixin
from .prompts_panel import PromptsPanel, status_line
from .segments_layer import SEGMENTS_NAME, SegmentsLayer  # noqa: F401
from .segments_panel import SegmentsPanel, to_rgba
from .views import fit_view, go_to_slice, show_view, step_slice
from .source_panel import WINDOW_CHOICES, SourcePanel, composite_extractor, composite_layers  # noqa: F401


class SegmentationWidget(PromptFilesMixin, QWidget):
    """Segmentation panel for the bound image layer.

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
        self.session = session_for(napari_viewer)  # the viewer's ModelSession (model, predictor, lock)
        self.notes = Notifier()
        self.history = History()
        self.last_error: Optional[str] = None
        self.layers: Optional[PromptLayers] = None  # helper layers of the bound image
        self._image = None
        self.committed = SegmentsLayer(self.viewer, self.history, self._after_segments_change)
        self._closed = False

        self.session.ensure_model()
        self.live = LivePreview(self.session, self._collect, self.make_request, self._write_preview,
                                lambda: id(self._image) if self._image is not None else None)
        # no Qt parent: workers that finish after napari closed the panel still find it (and see it closed)
        self._build_ui()
        self.live_check.toggled.connect(lambda on: setattr(self.live, "live", bool(on)))
        self.live.before_start = lambda plane: self.propagation.stop_prefetch(keep=plane)
        self.live.progressed.connect(self.prompts_panel.show_progress)
        self.live.answered.connect(self._show_status)
        self.live.failed.connect(self._on_live_failed)
        self.live.idle.connect(self._on_live_idle)

        self.binding = ImageBinding(self.viewer, lambda: self._image, self._bind_from_layers, self.source.show_choices,
                                    lambda: not self.closed)
        for event in (self.viewer.dims.events.current_step, self.viewer.dims.events.order,
                      self.viewer.dims.events.ndisplay):
            event.connect(self._on_dims)
        self.session.about_to_change.connect(self._on_model_about_to_change)
        self.session.changed.connect(self._on_model_changed)
        self._bind_keys(self.viewer)
        self._wire_files()
        self.binding.on_layers_changed()  # binds an image at once when there is one (what the box shows is bound)

    def _build_ui(self) -> None:
        sc = self.shortcuts()
        lay = QVBoxLayout(self)
        self.source = SourcePanel(self.session, self.notes)
        self.source.image_chosen.connect(lambda name: self.guard(lambda: self.set_image_layer(name), "choosing the image"))
        self.source.inputs_changed.connect(self._on_window_inputs_changed)
        self.source.view_requested.connect(lambda v: self.guard(lambda: self.set_view(v), f"showing the {v} plane"))
        for name in ("image_combo", "source_combo", "window_combo", "level_spin", "width_spin"):
            setattr(self, name, getattr(self.source, name))
        lay.addWidget(self.source)

        self.prompts_panel = PromptsPanel(self, sc)
        for name in ("points_button", "polarity_button", "box_button", "clear_button", "live_check", "segment_button", "encode_button", "progress", "cancel_button", "status"):
            setattr(self, name, getattr(self.prompts_panel, name))
        lay.addWidget(self.prompts_panel)

        from .propagation_panel import PropagationPanel

        self.propagation = PropagationPanel(self)
        lay.addWidget(self.propagation)

        self.segments_panel = SegmentsPanel(sc)
        sp = self.segments_panel
        sp.commit_requested.connect(lambda: self.guard(self.commit, "committing"))
        sp.undo_requested.connect(lambda: self.guard(self.undo, "undoing"))
        sp.redo_requested.connect(lambda: self.guard(self.redo, "redoing"))
        sp.state_requested.connect(lambda lab, s: self.guard(lambda: self.set_segment_state(lab, s), "changing the state"))
        sp.colors_changed.connect(self._color_layers)
        for name in ("label_spin", "name_edit", "color_button", "overwrite_check", "commit_button", "undo_button", "redo_button", "table"):
            setattr(self, name, getattr(sp, name))
        lay.addWidget(sp, 1)

        keys = QLabel("Keys: " + ", ".join(f"{v} {k}" for k, v in sc.items()))
        keys.setWordWrap(True)
        keys.setStyleSheet("color: gray")
        lay.addWidget(keys)
        self.setToolTip("Shortcuts:\n" + "\n".join(f"{v}: {k}" for k, v in sc.items()))

    # -- public, scriptable API ------------------------------------------------
    @staticmethod
    def shortcuts() -> Dict[str, str]:
        """Keyboard shortcuts, action -> key (as napari writes them, e.g. ``"Shift+S"``)."""
        return {k: pretty(v) for k, v in SHORTCUTS.items()}

    @property
    def image_layer(self):
        return self._image

    @property
    def points_layer(self):
        return self.layers.points if self.layers else None

    @property
    def boxes_layer(self):
        return self.layers.boxes if self.layers else None

    @property
    def preview_layer(self):
        return self.layers.preview if self.layers else None

    @property
    def target_layer(self):
        return self.committed.layer

    @property
    def store(self) -> Optional[SegmentStore]:
        """The committed segments of the bound image (None before the first commit)."""
        return self.committed.store

    @property
    def busy(self) -> bool:
        """Whether prompts are waiting or a worker is running."""
        return self.live.busy or self.propagation.running

    @property
    def segments(self) -> List[dict]:
        """The segment list: label, name, colour, voxels, volume_ml (area_mm2 for 2D), state."""
        return self.store.rows() if self.store is not None else []

    @property
    def positive(self) -> bool:
        """Polarity of the next point (True = object)."""
        return self.layers.positive if self.layers else True

    @property
    def discarded(self) -> int:
        """Answers dropped because newer prompts, another slice or model had replaced them."""
        return self.live.discarded

    @property
    def closed(self) -> bool:
        """True once the panel was closed or deleted (workers' late answers are ignored)."""
        if not self._closed and not alive(self):
            self._closed = self.live.closed = True
        return self._closed

    @property
    def is_volume(self) -> bool:
        return self._image is not None and len(spatial_shape(self._image)) == 3 and not self._image.rgb

    @property
    def window(self):
        """The resolved :class:`~napari_samlab.base.windowing.Window` (None = values as they are)."""
        return self.source.resolved_window()

    def set_image_layer(self, layer) -> None:
        """Segment ``layer`` (a napari Image layer or its name)."""
        if isinstance(layer, str):
            if layer not in self.viewer.layers:
                raise SamlabError(f"there is no layer {layer!r}: choose one of the image layers")
            layer = self.viewer.layers[layer]
        if not is_image(layer):
            raise SamlabError(f"{getattr(layer, 'name', layer)!r} is not an image layer: choose an image to segment")
        if layer is self._image:
            return
        self.cancel()
        self._unbind()
        self._image = layer
        layer.events.contrast_limits.connect(self._on_user_contrast)
        self.layers = PromptLayers(self.viewer, layer, self._on_prompt_event, self._bind_keys, self.history,
                                   self._on_prompts_restored)
        self.source.bind(layer)
        self.propagation.setVisible(self.is_volume)
        fit_view(self.viewer, layer)
        self.committed.bind(layer, self.layers.transform_kwargs())  # segments made earlier for this image
        self.segments_panel.show_store(self.store)
        self._color_layers()
        self.binding.refresh()
        self.source.apply_window()
        self._show_status()
        self.propagation.schedule_prefetch()

    def set_window(self, preset: str = "auto", level: Optional[float] = None, width: Optional[float] = None) -> None:
        """Choose the model input window and set the layer's contrast limits to it.

        ``preset`` is one of auto, none, ct-abdomen, ct-lung, ct-bone,
        ct-brain, mr, or manual (with ``level`` and ``width``).  Giving only
        ``level`` and ``width`` means manual.
        """
        self.source.set_window(preset, level, width)

    def set_source(self, source: str) -> None:
        """``"layer"`` (the selected channel) or ``"composite"`` (visible channel layers as displayed)."""
        self.source_combo.setCurrentIndex(1 if str(source).startswith("comp") else 0)

    def set_view(self, view: str) -> None:
        """Show the ``"axial"``, ``"coronal"`` or ``"sagittal"`` plane of the volume, on a slice of it."""
        show_view(self.viewer, self.require_image(), view)

    def set_slice(self, index: int, axis: Optional[int] = None) -> None:
        """Go to slice ``index`` along data ``axis`` (default: the axis the view steps through)."""
        go_to_slice(self.viewer, self.require_image(), index, axis)

    def next_slice(self, step: int = 1) -> None:
        """Step through the volume along the axis that is not displayed."""
        step_slice(self.viewer, self.require_image(), step)

    def previous_slice(self) -> None:
        self.next_slice(-1)

    def current_plane(self) -> Plane:
        """The plane of the image layer that the viewer displays now."""
        return current_plane(self.viewer, self.require_image())

    def require_image(self):
        """The bound image layer; raises :class:`SamlabError` when there is none."""
        if self._image is None or self._image not in self.viewer.layers:
            raise SamlabError("no image to segment: open an image (File > Open, or File > Open Sample > "
                              "napari-samlab) and choose it in the Segment panel's Image box")
        return self._image

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        """Add a point prompt at column ``x``, row ``y`` of the displayed slice."""
        plane = self.current_plane()
        plane.check_xy(spatial_shape(self._image), x, y)
        self.layers.add_point(plane, x, y, positive)

    def set_box(self, x0: float, y0: float, x1: float, y1: float, replace: bool = True) -> None:
        """Box prompt ``(x0, y0, x1, y1)`` (pixel indices, inclusive) on the displayed slice.

        With ``replace`` the slice's previous box is removed (one box per slice).
        """
        plane = self.current_plane()
        if x1 < x0 or y1 < y0:
            raise SamlabError(f"box ({x0}, {y0}, {x1}, {y1}) is empty: give x1 >= x0 and y1 >= y0")
        plane.check_xy(spatial_shape(self._image), x0, y0)
        plane.check_xy(spatial_shape(self._image), x1, y1)
        with self._batch("box"):
            self.layers.add_box(plane, x0, y0, x1, y1, replace)
            self._arrange_layers()

    def clear_prompts(self) -> None:
        """Remove every point and box (one undo step); the preview follows."""
        if self.layers is not None:
            with self._batch("clear prompts"):
                self.layers.clear()

    def toggle_polarity(self) -> None:
        """Flip the polarity of selected points (select mode) or of the next point."""
        layers = self.layers
        if layers is None:
            raise SamlabError("no image to segment: open an image first")
        with self._batch("polarity"):
            flipped = layers.flip_selected()
        if not flipped:
            layers.positive = not layers.positive
            layers.update_defaults()
        self.prompts_panel.show_polarity(layers.positive)

    def start_points(self) -> None:
        """Make the points layer active in add mode (click to prompt)."""
        self.require_image()
        pts = self.layers.ensure_points()
        self._arrange_layers()
        self.viewer.layers.selection.active = pts
        pts.mode = "add"

    def start_box(self) -> None:
        """Make the boxes layer active in rectangle mode (drag to prompt)."""
        self.require_image()
        boxes = self.layers.ensure_boxes()
        self._arrange_layers()
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"

    def segment(self, wait: bool = False, timeout: float = 300) -> Optional[np.ndarray]:
        """Segment every prompted plane that changed, and the displayed one.

        With ``wait=True`` (scripts) returns the preview mask of the
        displayed slice (bool, rows x columns) once it is there, and raises
        :class:`SamlabError` if segmenting failed.
        """
        self.last_error = None
        try:
            plane = self.current_plane()
            if self.session.takes_prompts and self.layers.collect().get(plane.key, (None, None))[1] is None:
                self.notes.info(f"nothing to segment on {plane.name}: draw a box or click on the object first")
            self.live.refresh(force=[plane])
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
        pv = self.preview_layer
        if pv is None:
            return np.zeros(plane.shape2d(spatial_shape(self.require_image())), bool)
        return plane.view(pv.data) > 0

    def ensure_preview(self):
        """The preview Labels layer of the bound image (created when missing)."""
        self.require_image()
        pv = self.layers.ensure_preview()
        self._color_layers()
        self._arrange_layers()
        return pv

    def encode_slices(self, indices=None, wait: bool = False, timeout: float = 3600) -> None:
        """Embed slices along the stepping axis in the background (Cancel stops between slices).

        ``indices``: slices to encode; default all slices along the axis not displayed.
        """
        plane = self.current_plane()
        if self.live.encoding:
            self.notes.warning("slices are already being encoded: wait, or press Cancel")
            return
        planes = plane.along(spatial_shape(self._image), indices)
        self.propagation.stop_prefetch()
        self.live.encode([self.make_request(p, None) for p in planes])
        if wait:
            wait_until(lambda: not self.live.encoding, timeout)

    def cancel(self) -> None:
        """Stop work: drop waiting prompts, stop encoding after the current slice, stop propagation."""
        self.live.cancel()
        self.propagation.cancel()
        self._show_status("cancelled")

    def when_idle(self, action) -> bool:
        """Run ``action`` now if the live preview is finished, else once it is (True: it ran now).

        This replaces waiting in a nested event loop: the Qt thread stays free.
        """
        ran = self.live.when_idle(action)
        if not ran:
            self._show_status("waiting for the preview to finish…")
        return ran

    def commit(self, name: Optional[str] = None, label: Optional[int] = None, color=None,
               overwrite: Optional[bool] = None, state: Optional[str] = None) -> dict:
        """Write the preview into the segments layer as ``label`` (one undo step).

        Voxels of completed or locked segments are kept unless ``overwrite``
        (default: the panel's checkbox).  Prompts and preview are cleared for
        the next object.  Returns ``{"label", "written", "skipped"}``; while
        the preview is still being computed the commit runs once it is there
        (``{"pending": True, ...}``).
        """
        self.require_image()
        out = {}
        ran = self.when_idle(lambda: out.update(self._commit_now(name, label, color, overwrite, state)))
        return out if ran else {"label": label, "written": 0, "skipped": 0, "pending": True}

    def _commit_now(self, name, label, color, overwrite, state) -> dict:
        pv = self.preview_layer
        if pv is None or not np.any(pv.data):
            self.notes.warning("nothing to commit: draw a box or click points on the object first")
            return {"label": None, "written": 0, "skipped": 0}
        self._ensure_target()
        store, sp = self.store, self.segments_panel
        label = int(label if label is not None else self.label_spin.value())
        name = name or self.name_edit.text().strip() or None
        if color is not None:
            color = to_rgba(color)
        elif sp.next_color is not None and label not in store.segments:
            color = sp.next_color
        overwrite = self.overwrite_check.isChecked() if overwrite is None else bool(overwrite)
        prompts_before, entries = self.layers.snapshot(), self.current_entries(label)
        preview_before = self.layers.preview_snapshot()
        try:
            out = store.commit(pv.data, label, name, color, overwrite, state,
                               multiclass=pv.data.max() > 1 and not self.session.takes_prompts,
                               on_undo=lambda: self._after_commit_undo(prompts_before, preview_before),
                               on_redo=self._clear_after_commit)
        except SamlabError as exc:
            self.notes.error(str(exc))
            return {"label": label, "written": 0, "skipped": 0}
        self.prompt_log.extend(entries)
        self._clear_after_commit()
        if out["skipped"]:
            self.notes.warning(f"{out['skipped']} voxels belong to completed or locked segments and were left as "
                               "they are: tick 'overwrite' to replace them")
        sp.next_color = None
        self.label_spin.setValue(store.table.next_label())
        return out

    def _after_commit_undo(self, prompts, preview) -> None:
        self.layers.put_back(prompts, recompute=False)
        self.layers.restore_preview(preview)
        self.settle_preview()

    def settle_preview(self) -> None:
        """The preview holds the answers to the current prompts (restored, or propagated): nothing to recompute."""
        self.live.settle()

    # -- propagation (the work is in propagation_panel.PropagationPanel) ----
    def propagate(self, wait: bool = False, timeout: float = 3600, **settings):
        """Propagate the displayed orientation's prompts through the volume into the preview.

        Keyword arguments are :class:`~napari_samlab.propagate.PropagationSettings`
        fields (``z_min``, ``z_max``, ``stop_slices``, ...).  With ``wait=True``
        returns the :class:`~napari_samlab.propagate.PropagationResult`.
        Nothing is committed until :meth:`commit` (which commits every slice).
        """
        return self.propagation.propagate(wait=wait, timeout=timeout, **settings)

    def repropagate_from(self, z: Optional[int] = None, wait: bool = False, timeout: float = 3600):
        """After correcting slice ``z`` (default: displayed) re-propagate from it to the next anchor or limit."""
        return self.propagation.repropagate_from(z, wait=wait, timeout=timeout)

    def next_flagged(self, step: int = 1) -> Optional[int]:
        """Go to the next flagged slice of the last propagation [Shift+F]; returns it (None if none)."""
        return self.propagation.next_flagged(step)

    def fill_between(self, slices=None, method: str = "sdf") -> List[int]:
        """Fill the empty slices between annotated ones, model-free (one undo step); returns them."""
        return self.propagation.fill_between(slices, method=method)

    @property
    def propagation_result(self):
        """The last :class:`~napari_samlab.propagate.PropagationResult` (None before one or after a commit)."""
        return self.propagation.result

    def set_segment_state(self, label: int, state: str) -> None:
        """Mark segment ``label`` in progress, completed or locked (undoable)."""
        if self.store is None:
            raise SamlabError(f"there is no segment {label}: commit one first")
        self.store.set_state(label, state)

    def push_undo(self, text: str, undo, redo) -> None:
        """Add an undoable step of another part of the panel (fill between) to the shared history."""
        self.history.push(Action(text, undo, redo))

    def undo(self) -> Optional[str]:
        """Undo the last prompt change, commit or fill; returns its description."""
        return self._undo_redo(self.history.undo, "undo")

    def redo(self) -> Optional[str]:
        """Redo what :meth:`undo` undid."""
        return self._undo_redo(self.history.redo, "redo")

    def guard(self, fn, doing: str):
        """Run a UI action; errors become notifications (traceback logged), never crashes."""
        return guard(self.notes, fn, doing)

    def shutdown(self) -> None:
        """Stop workers and timers (called when the panel closes)."""
        self._closed = True
        self.live.closed = True
        self.cancel()
        self.propagation.shutdown()

    def closeEvent(self, event):  # noqa: N802 - Qt name
        self.shutdown()
        super().closeEvent(event)

    # -- image binding, layers -------------------------------------------------
    def _bind_from_layers(self, layer) -> None:
        if layer is None:  # the bound image was removed
            self.cancel()
            self._unbind()
            self.segments_panel.show_store(None)
        else:
            self.guard(lambda: self.set_image_layer(layer), "choosing the image")

    def _unbind(self) -> None:
        """Prompts and preview belong to one image: remove them when switching."""
        image, layers, self._image, self.layers = self._image, self.layers, None, None  # unbound first: removals re-enter
        if image is not None:
            with contextlib.suppress(TypeError, ValueError):
                image.events.contrast_limits.disconnect(self._on_user_contrast)
        if layers is not None:
            layers.remove()
        self.committed.bind(None, {})
        self.live.forget()
        self.history.clear()
        self.propagation.forget()
        self.source.bind(None)

    def _arrange_layers(self) -> None:
        if self.layers is not None:
            self.layers.arrange(self.target_layer)

    def _ensure_target(self):
        tgt = self.committed.ensure(self.layers.transform_kwargs())
        self._arrange_layers()
        self.segments_panel.show_store(self.store)
        self._color_layers()
        return tgt

    # -- prompts -> live preview -----------------------------------------------
    def _collect(self):
        if self._image is None or self.layers is None:
            return None
        return self.layers.collect(), dict(self.layers.planes)

    def make_request(self, plane: Plane, prompt, rid: int = 0) -> Request:
        """The live preview's request for ``plane``: its 2D image (channels composed), window, model generation."""
        im = self.require_image()
        if self.source.composite:
            extract = composite_extractor(composite_layers(self.viewer, im), plane)
        else:
            data = layer_array(im)
            extract = lambda: plane.extract(data)  # noqa: E731
        return Request(rid, plane, prompt, self.window, extract, self.session.generation, id(im))

    def _write_preview(self, plane: Plane, values) -> None:
        if values is not None:
            self.ensure_preview()
        self.layers.write_preview(plane, values)

    def _on_live_failed(self, exc, what: str) -> None:
        self.last_error = self.notes.exception(exc, what)

    def _on_live_idle(self) -> None:
        self.prompts_panel.show_progress(-1, -1)
        if not self.busy:
            self._show_status()
            self.propagation.schedule_prefetch()  # the user looks at the answer: encode around it

    def _on_prompt_event(self, event=None) -> None:
        if self.closed or self.layers is None or self.layers.restoring:
            return
        action = str(getattr(event, "action", "changed"))
        try:
            plane = self.current_plane()
        except SamlabError:
            plane = None
        self.propagation.stop_prefetch(keep=plane)  # the user's prompt goes first
        if action.endswith("ed"):  # added / removed / changed: record; *ing: only preview
            if action.endswith("added"):
                self.layers.recolor_points()
            if not self.layers.suspended:
                self.layers.record("prompt")
        self.live.request_update()

    @contextlib.contextmanager
    def _batch(self, text: str):
        """Several layer edits, one undo step, one preview update."""
        with self.layers.batch(text):
            yield
        self.live.request_update()

    def _on_prompts_restored(self, recompute: bool) -> None:
        self._arrange_layers()
        if recompute:
            self.live.request_update()

    def _clear_after_commit(self) -> None:
        with self.layers.quietly():
            self.layers.clear()
        self.live.forget()
        self.layers.clear_preview()
        self.propagation.forget()  # its result described the preview just committed

    def _undo_redo(self, fn, what: str) -> Optional[str]:
        self.live.debounce.stop()
        self.live.waiting.clear()
        action = fn()  # answers in flight for the old prompts are dropped as stale
        if action is None:
            self.notes.info(f"nothing to {what}")
            return None
        if self.target_layer is not None:
            self.target_layer.refresh()
        if self.preview_layer is not None:
            self.preview_layer.refresh()
        self._show_status(("undid " if what == "undo" else "redid ") + action.text)
        return action.text

    # -- window, model, segments -----------------------------------------------
    def _on_window_inputs_changed(self) -> None:
        self.live.refresh(all_planes=True)
        self._restart_prefetch()

    def _on_user_contrast(self, event=None) -> None:
        if not self.closed and self.source.on_user_contrast(event):
            self.live.retry_all()
            self.live.request_update()
            self._restart_prefetch()

    def _restart_prefetch(self) -> None:
        """What the model sees changed: embeddings made for the old input are no use."""
        self.propagation.stop_prefetch()
        self.propagation.schedule_prefetch()

    def _on_model_about_to_change(self, session=None) -> None:
        if not self.closed:
            self.propagation.stop_prefetch()  # so the install does not wait for an encode

    def _on_model_changed(self, session=None) -> None:
        if self.closed:
            return
        self.source.forget_windows()
        self.propagation.stop_prefetch()  # it encodes with the old model
        if self._image is not None:
            self.source.apply_window()
            self.live.refresh(all_planes=True)
            self._color_layers()
            self.propagation.schedule_prefetch()
        self._show_status()

    def _after_segments_change(self) -> None:
        if self.target_layer is not None:
            self.target_layer.refresh()
        self.segments_panel.refresh()
        self._color_layers()
        self.sync_segment_metadata()

    def _color_layers(self) -> None:
        self.committed.color(self.preview_layer, self.segments_panel.current_color(), self.session.takes_prompts)

    # -- viewer events, keys ---------------------------------------------------
    def _on_dims(self, event=None) -> None:
        if self._image is None or self.closed:
            return
        self.layers.update_defaults()
        self._show_status()

    def _show_status(self, text: Optional[str] = None) -> None:
        if self.closed:
            return
        if text is None:
            try:
                plane = current_plane(self.viewer, self._image).name if self._image is not None else "no plane"
            except SamlabError:
                plane = "no plane"
            text = status_line(plane, self.session.model, self.live.last_score)
        self.status.setText(text)

    def _bind_keys(self, target) -> None:
        actions = {
            "segment": self.segment, "commit": self.commit, "toggle polarity": self.toggle_polarity,
            "next slice": lambda: self.next_slice(1), "previous slice": lambda: self.next_slice(-1),
            "undo": self.undo, "redo": self.redo, "next flagged slice": self.next_flagged,
        }
        bind_shortcuts(target, actions, lambda fn, name: None if self.closed else self.guard(fn, name))

