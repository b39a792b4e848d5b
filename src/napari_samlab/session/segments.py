"""Committed segments: the label volume, the segment table and the undo history.

Free of napari and Qt so the rules (what a commit may overwrite, how voxel
counts follow edits, what undo restores) are plain Python, shared by
:class:`~napari_samlab.session.Session` and the segmentation widget.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import SamlabError

IN_PROGRESS, COMPLETED, LOCKED = "in progress", "completed", "locked"
STATES = (IN_PROGRESS, COMPLETED, LOCKED)

# distinct, colour-blind-friendly defaults (Okabe-Ito, then tab10 extras)
PALETTE = (
    (0.90, 0.62, 0.00), (0.34, 0.71, 0.91), (0.00, 0.62, 0.45), (0.94, 0.89, 0.26),
    (0.00, 0.45, 0.70), (0.84, 0.37, 0.00), (0.80, 0.47, 0.65), (0.55, 0.34, 0.29),
    (0.58, 0.40, 0.74), (0.09, 0.75, 0.81),
)


def default_color(label: int) -> tuple:
    r, g, b = PALETTE[(int(label) - 1) % len(PALETTE)]
    return (r, g, b, 1.0)


@dataclass
class Segment:
    """One committed object: a label value with a name, colour and state."""

    label: int
    name: str
    color: tuple
    state: str = IN_PROGRESS
    voxels: int = 0

    def volume_ml(self, voxel_mm3: float) -> float:
        """Volume in millilitres (1 mL = 1000 mm³)."""
        return self.voxels * voxel_mm3 / 1000.0


class SegmentTable:
    """The segments of one target label volume.

    Parameters
    ----------
    voxel_mm3 : float
        Product of the spacing (mm³ per voxel; mm² per pixel for 2D images).
    """

    def __init__(self, voxel_mm3: float = 1.0, is2d: bool = False):
        self.voxel_mm3 = float(voxel_mm3)
        self.is2d = bool(is2d)
        self.segments: Dict[int, Segment] = {}

    # -- queries -------------------------------------------------------
    def protected_labels(self, except_label: int) -> List[int]:
        """Labels a commit under ``except_label`` must not overwrite."""
        return [s.label for s in self.segments.values() if s.state in (COMPLETED, LOCKED) and s.label != except_label]

    def next_label(self) -> int:
        return max(self.segments, default=0) + 1

    def rows(self) -> List[dict]:
        """Table rows: label, name, colour, voxels, volume_ml (or area_mm2), state."""
        out = []
        for lab in sorted(self.segments):
            s = self.segments[lab]
            row = {"label": s.label, "name": s.name, "color": tuple(float(c) for c in s.color),
                   "voxels": int(s.voxels), "state": s.state}
            if self.is2d:
                row["area_mm2"] = s.voxels * self.voxel_mm3
            else:
                row["volume_ml"] = s.volume_ml(self.voxel_mm3)
            out.append(row)
        return out

    # -- edits ---------------------------------------------------------
    def snapshot(self) -> Dict[int, Segment]:
        return copy.deepcopy(self.segments)

    def restore(self, snap: Dict[int, Segment]) -> None:
        self.segments = copy.deepcopy(snap)

    def ensure(self, label: int, name: Optional[str], color) -> Segment:
        seg = self.segments.get(label)
        if seg is None:
            seg = Segment(label, name or f"segment {label}", tuple(color) if color is not None else default_color(label))
            self.segments[label] = seg
        else:
            if name:
                seg.name = name
            if color is not None:
                seg.color = tuple(color)
        return seg

    def recount(self, labels: np.ndarray) -> None:
        """Voxel counts from the label volume (after paint edits made in napari)."""
        counts = np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False))
        for lab, seg in self.segments.items():
            seg.voxels = int(counts[lab]) if lab < len(counts) else 0
        # labels painted by hand become segments of their own
        for lab in np.flatnonzero(counts):
            if lab and lab not in self.segments:
                self.segments[int(lab)] = Segment(int(lab), f"segment {lab}", default_color(int(lab)), IN_PROGRESS, int(counts[lab]))

    def apply_counts(self, old_values: np.ndarray, new_label: int, sign: int = 1) -> None:
        """Move counts for voxels that went from ``old_values`` to ``new_label``."""
        if old_values.size == 0:
            return
        vals, cnt = np.unique(old_values, return_counts=True)
        for v, c in zip(vals.tolist(), cnt.tolist()):
            if v in self.segments:
                self.segments[v].voxels -= sign * c
        if new_label in self.segments:
            self.segments[new_label].voxels += sign * int(old_values.size)


def plan_commit(target: np.ndarray, mask_flat_idx: np.ndarray, label: int, table: SegmentTable,
                overwrite: bool) -> tuple:
    """Which voxels a commit of ``label`` may write.

    Returns ``(idx, old_values, skipped)``: flat indices to write, their
    current values, and how many voxels were left alone because they belong
    to a completed or locked segment (``overwrite`` False).

    Raises
    ------
    SamlabError
        When ``label`` itself is locked.
    """
    seg = table.segments.get(label)
    if seg is not None and seg.state == LOCKED:
        raise SamlabError(f"segment {label} ({seg.name!r}) is locked: unlock it in the segment list, or commit under another label")
    old = target.ravel()[mask_flat_idx]
    keep = old != label
    skipped = 0
    if not overwrite:
        prot = table.protected_labels(label)
        if prot:
            blocked = np.isin(old, prot)
            skipped = int(np.count_nonzero(blocked & keep))
            keep &= ~blocked
    return mask_flat_idx[keep], old[keep], skipped


@dataclass
class Action:
    """One undoable step: ``undo()`` and ``redo()`` callables plus a description."""

    text: str
    undo: Callable[[], None]
    redo: Callable[[], None]


@dataclass
class History:
    """Multi-level undo/redo."""

    limit: int = 200
    done: List[Action] = field(default_factory=list)
    undone: List[Action] = field(default_factory=list)

    def push(self, action: Action) -> None:
        self.done.append(action)
        del self.done[:-self.limit]
        self.undone.clear()

    def undo(self) -> Optional[Action]:
        if not self.done:
            return None
        a = self.done.pop()
        a.undo()
        self.undone.append(a)
        return a

    def redo(self) -> Optional[Action]:
        if not self.undone:
            return None
        a = self.undone.pop()
        a.redo()
        self.done.append(a)
        return a

    def clear(self) -> None:
        self.done.clear()
        self.undone.clear()

    @property
    def descriptions(self) -> Sequence[str]:
        return [a.text for a in self.done]


class SegmentStore:
    """The committed labels of one image: label volume, segment table and undo history.

    Every change (commit, :meth:`apply_result`, state) is one undoable step
    in :attr:`history`, which front ends share for their own steps (prompt
    edits push :class:`Action` objects there too).

    Parameters
    ----------
    labels : ndarray of int
        The label volume, written in place (a napari Labels layer's data can
        be this very array).
    voxel_mm3 : float
        mm³ per voxel (mm² per pixel for 2D images).
    is2d : bool
        Report areas (mm²) instead of volumes (mL).
    history : History, optional
        Shared undo history (default: a new one).

    Examples
    --------
    >>> store = SegmentStore(np.zeros((2, 4, 4), np.uint16))
    >>> mask = np.zeros((2, 4, 4), bool); mask[0, 1:3, 1:3] = True
    >>> store.commit(mask, label=1, name="tumour")
    {'label': 1, 'written': 4, 'skipped': 0}
    >>> store.undo().text, int(store.labels.sum())
    ('commit 1', 0)
    """

    def __init__(self, labels: np.ndarray, voxel_mm3: float = 1.0, is2d: bool = False,
                 history: Optional[History] = None):
        self.labels = labels
        self.table = SegmentTable(voxel_mm3, is2d)
        self.history = history if history is not None else History()
        self.changed: List[Callable[[], None]] = []  # called after every change (widgets refresh)
        if np.any(labels):
            self.table.recount(labels)

    @property
    def segments(self) -> Dict[int, Segment]:
        return self.table.segments

    def rows(self) -> List[dict]:
        return self.table.rows()

    def _notify(self) -> None:
        for fn in list(self.changed):
            fn()

    def recount(self) -> None:
        """Voxel counts after edits made outside the store (napari's brush)."""
        self.table.recount(self.labels)
        self._notify()

    def protected_mask(self, current_label: int) -> Optional[np.ndarray]:
        """Voxels of completed/locked segments other than ``current_label`` (None when there are none)."""
        prot = self.table.protected_labels(int(current_label))
        if not prot:
            return None
        lock = np.isin(np.asarray(self.labels), prot)
        return lock if lock.any() else None

    def commit(self, values: np.ndarray, label: Optional[int] = None, name: Optional[str] = None, color=None,
               overwrite: bool = False, state: Optional[str] = None, multiclass: bool = False,
               on_undo: Optional[Callable[[], None]] = None, on_redo: Optional[Callable[[], None]] = None) -> dict:
        """Write the non-zero voxels of ``values`` as ``label`` (one undo step).

        Parameters
        ----------
        values : ndarray
            Mask (bool) or class map with the label volume's shape.
        label : int
            Label value (ignored with ``multiclass``: each class value is its own label).
        name, color : optional
            Name and RGBA colour of the segment (kept when it exists already).
        overwrite : bool
            Replace voxels of completed/locked segments too.
        state : str, optional
            New state of the segment (one of :data:`STATES`).
        multiclass : bool
            ``values`` is a class map (prompt-free families): class = label.
        on_undo, on_redo : callable, optional
            Run after the store's own undo/redo (front ends restore prompts).

        Returns
        -------
        dict
            ``{"label", "written", "skipped"}``; ``skipped`` counts voxels of
            protected segments left alone.

        Raises
        ------
        SamlabError
            The label is locked, or ``state`` is unknown; nothing changes.
        """
        if state is not None and state not in STATES:
            raise SamlabError(f"unknown state {state!r}: use {', '.join(STATES)}")
        vals = np.asarray(values)
        if vals.shape != self.labels.shape:
            raise SamlabError(f"a mask of shape {vals.shape} cannot go into labels of shape {self.labels.shape}: "
                              "segment on the same image")
        flat_v = np.flatnonzero(vals)
        table = self.table
        before = table.snapshot()
        writes = []  # (flat idx, old values, label)
        skipped = 0
        try:
            if multiclass:
                classes = vals.ravel()[flat_v]
                for v in np.unique(classes):
                    idx, old, sk = plan_commit(self.labels, flat_v[classes == v], int(v), table, overwrite)
                    table.ensure(int(v), None, None)
                    writes.append((idx, old, int(v)))
                    skipped += sk
            else:
                label = int(label)
                idx, old, skipped = plan_commit(self.labels, flat_v, label, table, overwrite)
                table.ensure(label, name, color)
                writes.append((idx, old, label))
        except SamlabError:
            table.restore(before)
            raise
        if state is not None and not multiclass:
            table.segments[label].state = state
        self._write(writes, redo=True)
        after = table.snapshot()

        def undo():
            self._write(writes, redo=False)
            self.table.restore(before)
            if on_undo is not None:
                on_undo()
            self._notify()

        def redo():
            self._write(writes, redo=True)
            self.table.restore(after)
            if on_redo is not None:
                on_redo()
            self._notify()

        self.history.push(Action(f"commit {label}", undo, redo))
        self._notify()
        return {"label": label, "written": int(sum(len(w[0]) for w in writes)), "skipped": int(skipped)}

    def _write(self, writes, redo: bool) -> None:
        flat = self.labels.reshape(-1)  # a view: label volumes are contiguous
        for idx, old, lab in writes:
            flat[idx] = lab if redo else old
            if redo:
                self.table.apply_counts(old, lab)

    def apply_result(self, labels: np.ndarray, name: Optional[str] = None, overwrite: bool = False) -> dict:
        """Commit a whole label map from another tool (segment everything, MedSAM2, a file) in one undo step.

        Each non-zero value becomes a segment under a free label (from
        :meth:`SegmentTable.next_label` on), named ``"{name} {i}"``.
        Returns ``{"labels": [...], "written", "skipped"}``.
        """
        src = np.asarray(labels)
        if src.shape != self.labels.shape:
            raise SamlabError(f"a label map of shape {src.shape} cannot go into labels of shape {self.labels.shape}: "
                              "use a result of the same image")
        values = [int(v) for v in np.unique(src) if v]
        if not values:
            return {"labels": [], "written": 0, "skipped": 0}
        start = self.table.next_label()
        mapping = np.zeros(int(max(values)) + 1, np.int64)
        for i, v in enumerate(values):
            mapping[v] = start + i
        remapped = np.where(src > 0, mapping[np.clip(src, 0, None).astype(np.int64)], 0)
        before = self.table.snapshot()
        flat_v = np.flatnonzero(remapped)
        new_vals = remapped.ravel()[flat_v]
        writes, skipped = [], 0
        for i, v in enumerate(values):
            lab = start + i
            idx, old, sk = plan_commit(self.labels, flat_v[new_vals == lab], lab, self.table, overwrite)
            self.table.ensure(lab, f"{name} {i + 1}" if name else None, None)
            writes.append((idx, old, lab))
            skipped += sk
        self._write(writes, redo=True)
        after = self.table.snapshot()

        def undo():
            self._write(writes, redo=False)
            self.table.restore(before)
            self._notify()

        def redo():
            self._write(writes, redo=True)
            self.table.restore(after)
            self._notify()

        self.history.push(Action(f"apply {name or 'result'}", undo, redo))
        self._notify()
        return {"labels": [start + i for i in range(len(values))],
                "written": int(sum(len(w[0]) for w in writes)), "skipped": int(skipped)}

    def set_state(self, label: int, state: str) -> None:
        """Mark segment ``label`` in progress, completed or locked (one undo step)."""
        if int(label) not in self.table.segments:
            raise SamlabError(f"there is no segment {label}: commit one first")
        if state not in STATES:
            raise SamlabError(f"unknown state {state!r}: use {', '.join(STATES)}")
        old = self.table.segments[int(label)].state
        if old == state:
            return

        def apply(s):
            self.table.segments[int(label)].state = s
            self._notify()

        apply(state)
        self.history.push(Action(f"state {label}", lambda: apply(old), lambda: apply(state)))

    def set_color(self, label: int, color) -> None:
        """Change a segment's colour (not an undo step: colours are display only)."""
        self.table.segments[int(label)].color = tuple(color)
        self._notify()

    def undo(self) -> Optional[Action]:
        return self.history.undo()

    def redo(self) -> Optional[Action]:
        return self.history.redo()
