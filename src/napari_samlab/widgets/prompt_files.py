"""Files of the Segment panel: "Save prompts", "Load prompts", "Save labels", and whole results from other docks.

A thin translation between the panel's layers and the core:
:mod:`napari_samlab.cohort.prompts` reads and writes the prompts file,
:func:`napari_samlab.io.writers.write_labels` the labels (with names and
colours), :func:`napari_samlab.cohort.provenance.write_sidecar` the record of
how they were made, and :meth:`SegmentStore.apply_result` enters a whole label
map (e.g. "Segment all") as one undo step.  :class:`PromptFilesMixin` is a base
of :class:`~napari_samlab.widgets.segmentation_widget.SegmentationWidget`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..cohort.prompts import PromptEntry, check_entries_fit, load_prompts, save_prompts
from ..errors import SamlabError
from ._plane import Plane, spatial_shape

log = logging.getLogger(__name__)


def axial_plane(shape: tuple, index: int) -> Plane:
    """The plane a prompts-file entry means: slice ``index`` along axis 0 of a volume, the image itself in 2D."""
    if len(shape) == 3:
        return Plane((1, 2), ((0, int(index)),), 3)
    return Plane((0, 1), (), 2)


def entries_from_collected(collected: dict, shape: tuple, label: int, propagate: bool) -> List[PromptEntry]:
    """Prompts-file entries of the prompts on axial slices (what a prompts file can say), in slice order.

    ``collected`` is :meth:`PromptLayers.collect`'s ``{key: (Plane, Prompt or None)}``.
    """
    want = axial_plane(shape, 0).axes
    out = []
    for plane, prompt in collected.values():
        if prompt is None or tuple(plane.axes) != want:
            continue
        z = int(plane.index[0][1]) if plane.index else 0
        pts = list(prompt.points or [])
        labs = list(prompt.point_labels or [1] * len(pts))
        out.append(PromptEntry(
            slice=z, box=None if prompt.box is None else tuple(float(v) for v in prompt.box),
            points=tuple((float(x), float(y)) for (x, y), k in zip(pts, labs) if k),
            negatives=tuple((float(x), float(y)) for (x, y), k in zip(pts, labs) if not k),
            label=int(label), propagate=bool(propagate and len(shape) == 3)))
    return sorted(out, key=lambda e: e.slice)


class PromptFilesMixin:
    """Save/load prompts, save labels with names, colours and provenance, apply whole results."""

    @property
    def prompt_log(self) -> list:
        """Entries of the committed objects, in commit order (what "Save prompts" writes besides the current ones)."""
        if getattr(self, "_prompt_log", None) is None:
            self._prompt_log = []
        return self._prompt_log

    def current_entries(self, label: Optional[int] = None) -> List[PromptEntry]:
        """The prompts on the image now (not yet committed) as prompts-file entries of ``label``."""
        if self.layers is None:
            return []
        label = int(label if label is not None else self.label_spin.value())
        return entries_from_collected(self.layers.collect(), spatial_shape(self.require_image()), label,
                                      self.propagation_result is not None)

    def committed_entries(self) -> List[PromptEntry]:
        """Prompts of the committed segments still present (an undone commit's are left out; repeats once)."""
        present = set(self.store.segments) if self.store is not None else set()
        return list(dict.fromkeys(e for e in self.prompt_log if e.label in present))

    def prompt_entries(self) -> List[PromptEntry]:
        """Every prompt of the image: those of committed segments, then the current ones."""
        return self.committed_entries() + self.current_entries()

    def save_prompts(self, path) -> Path:
        """Write every prompt of the image (slice, box, points, label, propagate flag) to a prompts file."""
        image = self.require_image()
        entries = self.prompt_entries()
        if not entries:
            raise SamlabError("there are no prompts to save: draw a box or click points first")
        src = (image.metadata.get("samlab") or {}).get("path") if isinstance(image.metadata, dict) else None
        out = save_prompts(path, entries, image=src or image.name)
        self.status.setText(f"saved {len(entries)} prompt(s) to {Path(out).name}")
        return out

    def load_prompts(self, path, label: Optional[int] = None) -> dict:
        """Place the prompts of one label of a prompts file on their slices (one undo step).

        ``label`` defaults to the file's first label that has no segment yet,
        so "Load prompts" again after committing one object brings the next.
        Returns ``{"label", "entries", "propagate", "remaining"}``.
        """
        image = self.require_image()
        shape = spatial_shape(image)
        entries = load_prompts(path)
        check_entries_fit(entries, shape, Path(path).name)
        if not entries:
            raise SamlabError(f"{Path(path).name} holds no prompts: save prompts from an image first")
        labels = list(dict.fromkeys(e.label for e in entries))
        done = set(self.store.segments) if self.store is not None else set()
        if label is None:
            label = next((lab for lab in labels if lab not in done), labels[0])
        chosen = [e for e in entries if e.label == int(label)]
        if not chosen:
            raise SamlabError(f"{Path(path).name} has no prompts of label {label}: it holds labels "
                              f"{', '.join(map(str, labels))}")
        with self._batch("load prompts"):
            self.layers.clear()
            for e in chosen:
                plane = axial_plane(shape, e.slice)
                for x, y in (e.box[:2], e.box[2:]) if e.box is not None else ():
                    plane.check_xy(shape, x, y)
                if e.box is not None:
                    self.layers.add_box(plane, *e.box, replace=False)
                for pts, positive in ((e.points, True), (e.negatives, False)):
                    for x, y in pts:
                        plane.check_xy(shape, x, y)
                        self.layers.add_point(plane, x, y, positive)
            self._arrange_layers()
        self.label_spin.setValue(int(label))
        if len(shape) == 3:
            self.set_slice(chosen[0].slice, axis=0)
        propagate = any(e.propagate for e in chosen)
        remaining = [lab for lab in labels if lab != int(label) and lab not in done]
        text = f"loaded {len(chosen)} prompt(s) of label {label}" + (": propagate, then commit" if propagate else "")
        if remaining:
            text += f"; labels {', '.join(map(str, remaining))} follow: commit, then Load prompts again"
        self.status.setText(text)
        return {"label": int(label), "entries": chosen, "propagate": propagate, "remaining": remaining}

    # -- labels -----------------------------------------------------------
    def segment_metadata(self) -> dict:
        """``{label: {"name", "color"}}`` of the segment table (the napari writer reads it as "samlab_segments")."""
        rows = self.store.rows() if self.store is not None else []
        return {int(r["label"]): {"name": r["name"], "color": [float(c) for c in r["color"][:3]]} for r in rows}

    def sync_segment_metadata(self) -> None:
        """Keep the segments layer's ``metadata["samlab_segments"]`` equal to the segment table."""
        layer = self.target_layer
        if layer is not None:
            layer.metadata["samlab_segments"] = self.segment_metadata()

    def save_labels(self, path, sidecar: Optional[bool] = None) -> dict:
        """Write the segments layer on the image's grid with names and colours, and its provenance sidecar.

        ``sidecar`` defaults to the panel's checkbox (on); it records the
        prompts of the saved segments only (not uncommitted ones).  Returns
        ``{"labels": Path, "sidecar": Path or None}``; the sidecar needs the
        image's file (an image made in napari has none: the status says so).
        """
        from ..cohort.provenance import write_sidecar
        from ..io.writers import write_labels
        from ..napari_plugin.layers import image_from_layer

        image = self.require_image()
        layer = self.target_layer
        if layer is None or self.store is None or not np.any(layer.data):
            raise SamlabError("there are no segments to save: commit a segment first")
        meta = {"metadata": dict(layer.metadata), "scale": layer.scale, "translate": layer.translate,
                "affine": layer.affine.affine_matrix}
        segs = [{"label": lab, **v} for lab, v in self.segment_metadata().items()]
        out = write_labels(np.asarray(layer.data), image_from_layer(layer.data, meta), path, segments=segs)
        want = self.segments_panel.sidecar_check.isChecked() if sidecar is None else bool(sidecar)
        src = (image.metadata.get("samlab") or {}).get("path") if isinstance(image.metadata, dict) else None
        record = None
        if want and src:
            model = self.session.ensure_model()
            record = write_sidecar(out, image=src, model=model, window=self.source.window_spec(),
                                   entries=self.committed_entries(), checkpoint=getattr(model, "checkpoint_path", None))
        note = f" and {record.name}" if record else (" (no provenance: the image has no file)" if want else "")
        self.status.setText(f"saved {Path(out).name}{note}")
        return {"labels": Path(out), "sidecar": record}

    def apply_result(self, labels: np.ndarray, name: str = "object", image=None) -> dict:
        """Enter a whole label map of ``image`` (default: the bound one) as new segments, one undo step.

        What other docks ("Segment all") use; Ctrl+Z in this panel undoes it.
        """
        if image is not None:
            self.set_image_layer(image)
        self.require_image()
        self._ensure_target()
        out = self.store.apply_result(np.asarray(labels), name=name)
        self.label_spin.setValue(self.store.table.next_label())
        return out

    # -- the panel's buttons -----------------------------------------------
    def _wire_files(self) -> None:
        from ._session import register_segment_panel

        register_segment_panel(self.viewer, self)
        sp = self.segments_panel
        sp.save_prompts_requested.connect(lambda p: self._file_action(lambda: self.save_prompts(p), "saving prompts"))
        sp.load_prompts_requested.connect(lambda p: self._file_action(lambda: self.load_prompts(p), "loading prompts"))
        sp.save_labels_requested.connect(lambda p: self._file_action(lambda: self.save_labels(p), "saving labels"))

    def _file_action(self, fn, doing: str):
        """Bad files and paths: one line in the status; anything else: the panel's guard (logged, notified)."""
        try:
            return fn()
        except SamlabError as err:
            self.status.setText(err.for_gui())
            self.last_error = str(err)
            return None
        except Exception as err:  # noqa: BLE001 - widget slot boundary: logged, shown, napari keeps running
            self.status.setText(self.notes.exception(err, doing))
            return None
