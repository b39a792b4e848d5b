"""The model shared by the panels of one napari viewer.

The model panel loads engines; the segmentation panel uses whatever is
loaded.  They meet here, in one :class:`ModelSession` per viewer, so either
panel can be opened first (or alone): the session starts with the classic
engine, which needs no weights.
"""
from __future__ import annotations

import threading
import weakref
from typing import Dict, Optional

from psygnal import Signal

from ..predict.predictor import SlicePredictor


def _classic():
    # the classic engine directly: going through the registry would import
    # torch (seconds) for an engine that needs none
    from ..models.classic import ClassicModel

    return ClassicModel()


class ModelSession:
    """The loaded model, its predictor and a lock that serialises their use.

    ``SlicePredictor`` keeps a cache and the current embedding, so only one
    thread may use it at a time; workers hold :attr:`lock` while they encode
    or decode.

    Attributes
    ----------
    changed : Signal
        Emitted with the session after a new model was installed.
    """

    changed = Signal(object)

    def __init__(self):
        self.lock = threading.RLock()
        self.model = None
        self.predictor: Optional[SlicePredictor] = None
        self.description = ""
        self.generation = 0  # bumped per model: results of older models are stale

    def ensure_model(self):
        """The current model, loading the classic engine on first use."""
        if self.model is None:
            self.set_model(_classic(), "classic (no weights)")
        return self.model

    def set_model(self, model, description: str = "") -> None:
        with self.lock:
            self.model = model
            self.predictor = SlicePredictor(model)
            self.description = description or getattr(model, "family", "model")
            self.generation += 1
        self.changed.emit(self)


_SESSIONS: Dict[int, ModelSession] = {}


def session_for(viewer) -> ModelSession:
    """The :class:`ModelSession` of ``viewer`` (created on first use)."""
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
