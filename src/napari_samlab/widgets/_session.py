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
