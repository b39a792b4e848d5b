"""napari-free segmentation sessions: what the widgets, scripts, the CLI and batch jobs share.

* :class:`Session`: one image, one model, prompts per slice, preview,
  propagation, fill between, commit/undo/redo (the scripted equivalent of
  the Segment panel);
* :class:`ModelSession`: the loaded model, its predictor (embedding caches)
  and the lock that serialises their use;
* :class:`Prefetcher`: cancellable low-priority background encoding;
* :class:`PropagationState` / :func:`fill_gaps`: propagation, re-propagation
  and model-free filling with the user's corrections kept;
* :class:`SegmentStore`: committed labels, segment table (name, label,
  colour, state) and the undo history; :meth:`SegmentStore.apply_result`
  lets other tools enter a label map as one undoable step.

See docs/DESIGN.md for who owns which state.
"""
from .hooks import Hook
from .model import ModelSession, classic_model
from .prefetch import CHEAP_ENCODERS, Prefetcher, worth_prefetching
from .propagation import PropagationState, fill_gaps, nonempty_slices
from .segments import (
    COMPLETED, IN_PROGRESS, LOCKED, STATES, Action, History, Segment, SegmentStore, SegmentTable, default_color,
    plan_commit,
)
from .session import Session, SlicePrompts

__all__ = [
    "Action", "CHEAP_ENCODERS", "COMPLETED", "Hook", "History", "IN_PROGRESS", "LOCKED", "ModelSession",
    "Prefetcher", "PropagationState", "STATES", "Segment", "SegmentStore", "SegmentTable", "Session",
    "SlicePrompts", "classic_model", "default_color", "fill_gaps", "nonempty_slices", "plan_commit",
    "worth_prefetching",
]
