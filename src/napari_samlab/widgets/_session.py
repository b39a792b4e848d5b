"""One :class:`~napari_samlab.session.ModelSession` per napari viewer.

The model panel loads engines; the segmentation panel uses whatever is
loaded.  They meet here, so either panel can be opened first (or alone).
"""
from __future__ import annotations

import weakref
from typing import Dict

from ..session.model import ModelSession, classic_model  # noqa: F401 - re-exported for the panels

_SESSIONS: Dict[int, ModelSession] = {}


def session_for(viewer) -> ModelSession:
    """The :class:`ModelSession` of ``viewer`` (created on first use, forgotten with the viewer)."""
    key = id(viewer)
    sess = _SESSIONS.get(key)
    if sess is None:
        sess = ModelSession()
        _SESSIONS[key] = sess
        try:  # forget the session (and its model memory) with the viewer
            weakref.finalize(viewer, _SESSIONS.pop, key, None)
        except TypeError:
            pass
    return sess


_PANELS: Dict[int, "weakref.ref"] = {}


def register_segment_panel(viewer, panel) -> None:
    """Make ``panel`` the Segment panel other docks of ``viewer`` commit through (a weak reference)."""
    _PANELS[id(viewer)] = weakref.ref(panel)


def segment_panel_for(viewer):
    """The open Segment panel of ``viewer`` (None when there is none or it was closed)."""
    ref = _PANELS.get(id(viewer))
    panel = ref() if ref is not None else None
    return None if panel is None or panel.closed else panel
