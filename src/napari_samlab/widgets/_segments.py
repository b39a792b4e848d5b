"""Segment bookkeeping and undo history for the segmentation panel.

Kept free of napari and Qt so the rules (what a commit may overwrite, how
voxel counts follow edits, what undo restores) are plain Python.
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
