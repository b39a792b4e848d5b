"""A napari-free segmentation session: one image, one model, prompts, preview, committed segments.

The same steps as the dock widgets, for scripts, the CLI and batch jobs::

    from napari_samlab import read_image
    from napari_samlab.session import Session

    s = Session(read_image("sample_data/ct_chest_lung2.nrrd"))   # classic engine
    s.set_window("ct-lung")
    s.add_box(20, (319, 337, 383, 393))
    mask = s.segment(20)                  # bool (y, x), also in s.preview[20]
    res = s.propagate(z_min=10, z_max=30) # whole volume into s.preview
    s.commit(name="tumour", label=1)      # s.labels, s.segments; s.undo(), s.redo()

Slices are along axis 0 of the array (axial for a (z, y, x) volume); a 2D
image has one "slice", ``z=0``.  Prompt coordinates follow SPEC.md.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import SamlabError
from ..base.prompts import Prompt
from ..base.windowing import resolve_window
from ..propagate import PropagationResult, PropagationSettings, next_slices_to_encode
from ..propagate.plan import slices_around
from .model import ModelSession
from .prefetch import Prefetcher
from .propagation import PropagationState, fill_gaps
from .segments import Action, SegmentStore


@dataclass
class SlicePrompts:
    """The prompts of one slice: at most one box, any number of points."""

    box: Optional[tuple] = None
    points: List[tuple] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)

    def prompt(self) -> Optional[Prompt]:
        """The :class:`Prompt` to segment with (None: nothing that marks the object yet)."""
        if self.box is None and not any(self.labels):
            return None
        return Prompt(box=self.box, points=list(self.points) or None, point_labels=list(self.labels) or None)


class Session:
    """Segment one image with one model: prompts per slice, preview, propagation, commit/undo.

    Parameters
    ----------
    image : Image or ndarray
        An :class:`~napari_samlab.io.image.Image` (its spacing gives mL) or an
        array: (z, y, x) volume, (y, x) or (y, x, C) 2D image.
    model : SegmentationModel, optional
        Default: the classic engine (no weights).
    models : ModelSession, optional
        Share a loaded model (and its embedding cache) with other sessions.
    window : str or (level, width)
        The model input window (see :meth:`set_window`).

    Attributes
    ----------
    preview : ndarray of uint8
        What :meth:`segment`, :meth:`propagate` and :meth:`fill_between` made,
        not committed yet.
    store : SegmentStore
        Committed labels, segment table and undo history (:attr:`labels`,
        :attr:`segments`).
    """

    def __init__(self, image, model=None, *, models: Optional[ModelSession] = None, window="auto"):
        array = getattr(image, "array", image)
        self.image = image
        self.array = np.asarray(array)
        if hasattr(image, "spatial_shape"):  # an io.Image knows its channel axis
            self.shape = tuple(image.spatial_shape)
        elif self.array.ndim == 3 and self.array.shape[-1] in (3, 4):
            self.shape = self.array.shape[:2]  # a bare (y, x, 3|4) array: RGB(A), as napari reads it
        else:
            self.shape = self.array.shape
        if len(self.shape) not in (2, 3):
            raise SamlabError(f"an image of shape {self.array.shape} is neither 2D nor a 3D volume: "
                              "read it with read_image (it picks one volume of a 4D file)")
        self.is2d = len(self.shape) == 2
        self.models = models or ModelSession()
        if model is not None:
            self.models.set_model(model, getattr(model, "family", "model"))
        self.models.ensure_model()
        spacing = getattr(image, "spacing", None)
        voxel = float(np.prod(spacing[: len(self.shape)])) if spacing is not None else 1.0
        self.preview = np.zeros(self.shape, np.uint8)
        self.store = SegmentStore(np.zeros(self.shape, np.uint16), voxel, is2d=self.is2d)
        self.prompts: Dict[int, SlicePrompts] = {}
        self.propagation = PropagationState()
        self.prefetcher = Prefetcher(self.models)
        self.settings = PropagationSettings()
        self.last_score: Optional[float] = None
        self._cancel = threading.Event()
        self._window_spec = window
        self._window_cache: Dict[tuple, object] = {}

    # ------------------------------------------------------------------
    # model, window
    # ------------------------------------------------------------------
    @property
    def model(self):
        return self.models.model

    @property
    def predictor(self):
        return self.models.predictor

    def set_model(self, model, description: str = "") -> None:
        """Use ``model`` from now on (embeddings of the old one are dropped)."""
        self.prefetcher.stop()
        self.models.set_model(model, description)

    def set_window(self, preset="auto", level: Optional[float] = None, width: Optional[float] = None):
        """Choose the model input window: ``auto``, ``none``, a preset (``ct-lung``...) or ``level``/``width``.

        Returns the resolved :class:`~napari_samlab.base.windowing.Window` (None = values as they are).
        """
        spec = (float(level), float(width)) if level is not None and width is not None else preset
        self._window_spec = spec
        return self.window

    @property
    def window(self):
        """The resolved window, computed on the whole volume so every slice gets the same mapping."""
        model = self.models.ensure_model()
        key = (str(self._window_spec), model.fingerprint() if hasattr(model, "fingerprint") else id(model))
        if key not in self._window_cache:
            modality = (getattr(self.image, "metadata", None) or {}).get("modality")
            self._window_cache[key] = resolve_window(self._window_spec, self.array, model, modality)
        return self._window_cache[key]

    # ------------------------------------------------------------------
    # prompts
    # ------------------------------------------------------------------
    def _slice(self, z) -> int:
        if self.is2d:
            if z not in (None, 0):
                raise SamlabError(f"slice {z} given for a 2D image: omit it (or use 0)")
            return 0
        if z is None:
            raise SamlabError("which slice? give z for a volume")
        n = self.shape[0]
        if not 0 <= int(z) < n:
            raise SamlabError(f"slice {z} is outside the volume: choose 0..{n - 1}")
        return int(z)

    def _check_xy(self, x, y) -> None:
        h, w = self.shape[-2:]
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise SamlabError(f"({x:g}, {y:g}) is outside the {w}x{h} slice: give x in 0..{w - 1} and y in 0..{h - 1}")

    def image_slice(self, z: Optional[int] = None) -> np.ndarray:
        """The 2D image the model sees for slice ``z`` (before windowing)."""
        return self.array if self.is2d else self.array[self._slice(z)]

    def add_box(self, z: Optional[int], box: Sequence[float]) -> None:
        """Box ``(x0, y0, x1, y1)`` on slice ``z`` (replaces the slice's box: one per slice)."""
        z = self._slice(z)
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise SamlabError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: give x1 >= x0 and y1 >= y0")
        self._check_xy(x0, y0)
        self._check_xy(x1, y1)
        self._edit_prompts(z, lambda p: setattr(p, "box", (int(x0), int(y0), int(x1), int(y1))), "box")

    def add_point(self, z: Optional[int], xy: Sequence[float], positive: bool = True) -> None:
        """Point ``(x, y)`` on slice ``z``: on the object (``positive``) or on the background."""
        z = self._slice(z)
        x, y = float(xy[0]), float(xy[1])
        self._check_xy(x, y)

        def add(p: SlicePrompts):
            p.points.append((int(round(x)), int(round(y))))
            p.labels.append(1 if positive else 0)

        self._edit_prompts(z, add, "point")

    def clear_prompts(self, z: Optional[int] = None) -> None:
        """Remove the prompts of slice ``z`` (default: all slices) in one undo step."""
        zs = list(self.prompts) if z is None else [self._slice(z)]
        old = {k: self.prompts[k] for k in zs if k in self.prompts}
        if not old:
            return
        for k in old:
            del self.prompts[k]
        self.store.history.push(Action("clear prompts", lambda: self.prompts.update(old),
                                       lambda: [self.prompts.pop(k, None) for k in old]))

    def _edit_prompts(self, z: int, change, text: str) -> None:
        old = self.prompts.get(z)
        new = SlicePrompts(old.box, list(old.points), list(old.labels)) if old else SlicePrompts()
        change(new)
        self.prompts[z] = new

        def put(v):
            if v is None:
                self.prompts.pop(z, None)
            else:
                self.prompts[z] = v

        self.store.history.push(Action(text, lambda: put(old), lambda: put(new)))

    # ------------------------------------------------------------------
    # segment, commit
    # ------------------------------------------------------------------
    def segment(self, z: Optional[int] = None) -> np.ndarray:
        """Segment slice ``z`` with its prompts into :attr:`preview`; returns the mask (bool, rows x columns)."""
        z = self._slice(z)
        entry = self.prompts.get(z)
        prompt = entry.prompt() if entry else None
        if prompt is None:
            if self.models.takes_prompts:
                raise SamlabError(f"nothing to segment on slice {z}: add a box or a point on the object first")
            prompt = Prompt()  # SAMed: every slice gets the model's classes
        self.prefetcher.stop(keep=(0, z))
        with self.models.lock:
            self.predictor.set_image(self.image_slice(z), window=self.window)
            pred = self.predictor.predict_prompt(prompt)
        values = pred.labels if pred.labels is not None and not self.models.takes_prompts else pred.mask
        self._write_preview(z, np.asarray(values).astype(np.uint8))
        self.last_score = float(pred.score)
        return np.asarray(pred.mask, bool)

    def _write_preview(self, z: int, values: np.ndarray) -> None:
        if self.is2d:
            self.preview[...] = values
        else:
            self.preview[z] = values

    def commit(self, name: Optional[str] = None, label: Optional[int] = None, color=None, overwrite: bool = False,
               state: Optional[str] = None) -> dict:
        """Write the preview into :attr:`labels` as ``label`` (default: the next free one); one undo step.

        Voxels of completed/locked segments are kept unless ``overwrite``.
        Prompts, preview and the propagation result are cleared for the next
        object (undo brings them back).  Returns ``{"label", "written", "skipped"}``.
        """
        if not self.preview.any():
            raise SamlabError("nothing to commit: segment or propagate first")
        label = self.store.table.next_label() if label is None else int(label)
        kept = (self.preview.copy(), dict(self.prompts), self.propagation.result, self.propagation.key,
                self.propagation.baseline)

        def clear():
            self.preview[...] = 0
            self.prompts = {}
            self.propagation.forget()

        def restore():
            self.preview[...] = kept[0]
            self.prompts = dict(kept[1])
            self.propagation.result, self.propagation.key, self.propagation.baseline = kept[2:]

        multiclass = self.preview.max() > 1 and not self.models.takes_prompts
        out = self.store.commit(self.preview, label, name, color, overwrite, state, multiclass,
                                on_undo=restore, on_redo=clear)
        clear()
        return out

    def apply_result(self, labels: np.ndarray, name: Optional[str] = None, overwrite: bool = False) -> dict:
        """Commit a whole label map (segment everything, MedSAM2, another tool) as new segments, one undo step."""
        return self.store.apply_result(labels, name, overwrite)

    def set_segment_state(self, label: int, state: str) -> None:
        """``"in progress"``, ``"completed"`` or ``"locked"`` (protected from later commits); undoable."""
        self.store.set_state(label, state)

    def undo(self) -> Optional[str]:
        """Undo the last prompt, commit or fill; returns its description (None: nothing to undo)."""
        a = self.store.undo()
        return a.text if a else None

    def redo(self) -> Optional[str]:
        a = self.store.redo()
        return a.text if a else None

    @property
    def labels(self) -> np.ndarray:
        """The committed label volume (image shape; write it with :func:`~napari_samlab.write_labels`)."""
        return self.store.labels

    @property
    def segments(self) -> List[dict]:
        """label, name, colour, voxels, volume_ml (area_mm2 for 2D), state."""
        return self.store.rows()

    # ------------------------------------------------------------------
    # propagation
    # ------------------------------------------------------------------
    def _volume(self) -> np.ndarray:
        if self.is2d:
            raise SamlabError("propagation needs a 3D volume: this image is 2D (one slice)")
        return self.array

    def set_settings(self, **changes) -> PropagationSettings:
        """Change propagation settings by :class:`PropagationSettings` field (``z_min=10``...)."""
        known = {f.name for f in fields(PropagationSettings)}
        bad = set(changes) - known
        if bad:
            raise SamlabError(f"unknown propagation setting {sorted(bad)[0]!r}: use one of {', '.join(sorted(known))}")
        self.settings = self.settings.with_(**changes)
        return self.settings

    def _protected(self) -> Optional[np.ndarray]:
        return self.store.protected_mask(self.store.table.next_label())

    def propagate(self, progress=None, **settings) -> PropagationResult:
        """Propagate the prompted slices (and painted preview slices) through the volume into :attr:`preview`."""
        vol = self._volume()
        if settings:
            self.set_settings(**settings)
        prompts = {z: p.prompt() for z, p in self.prompts.items() if p.prompt() is not None}
        anchors = self.propagation.anchors(prompts, self.preview, key=0)
        if not anchors:
            raise SamlabError("nothing to propagate: add a box or point on one slice (or paint the preview) first")
        self.prefetcher.stop()
        self._cancel.clear()
        job = self.propagation.propagate_job(self.predictor, self.models.lock, vol, anchors, window=self.window,
                                             settings=self.settings, locked=self._protected(), cancel=self._cancel,
                                             progress=progress)
        res = job()
        self.propagation.accept(res, self.preview, key=0)
        return res

    def repropagate_from(self, z: int, progress=None) -> PropagationResult:
        """After correcting slice ``z`` of the preview (re-segmented or edited), recompute from it to the next anchor."""
        vol = self._volume()
        self.prefetcher.stop()
        self._cancel.clear()
        job = self.propagation.repropagate_job(self.predictor, self.models.lock, vol, self.preview, z, 0,
                                               settings=self.settings, locked=self._protected(),
                                               cancel=self._cancel, progress=progress)
        res = job()
        self.propagation.accept(res, self.preview, key=0)
        return res

    def next_flagged(self, z: int, step: int = 1) -> Optional[int]:
        """The next slice after ``z`` the last propagation flagged for review (None: none)."""
        res = self.propagation.result
        return None if res is None else res.next_flagged(int(z), step=step)

    def fill_between(self, slices=None, method: str = "sdf") -> List[int]:
        """Interpolate shapes into the empty slices between annotated ones (model-free); one undo step.

        Slices that already hold a mask (model output, edits) are never
        replaced.  Returns the filled slices.
        """
        self._volume()
        filled, old = fill_gaps(self.preview, slices=slices, locked=self._protected(), method=method)
        if old:
            new = {z: self.preview[z].copy() for z in old}

            def put(d):
                for z, v in d.items():
                    self.preview[z] = v

            self.store.history.push(Action("fill between", lambda: put(old), lambda: put(new)))
        return filled

    def cancel(self) -> None:
        """Stop a propagation running in another thread (between slices, or inside an encode) and any prefetch."""
        self._cancel.set()
        self.prefetcher.stop()

    def prefetch(self, zs: Optional[Sequence[int]] = None, around: Optional[int] = None, n: int = 4,
                 wait: bool = False) -> None:
        """Encode slices in the background: ``zs``, the ``n`` next in the last propagation's schedule, or around ``around``."""
        vol = self._volume()
        if zs is None:
            if around is not None:
                zs = slices_around(int(around), vol.shape[0], n + 1)
            elif self.propagation.result is not None:
                zs = next_slices_to_encode(self.propagation.result, n)
            else:
                zs = []
        self.prefetcher.start(vol, zs, self.window)
        if wait:
            self.prefetcher.join(timeout=3600)
