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

from ..predict.cache import DEFAULT_MEMORY_MB
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
    about_to_change : Signal
        Emitted before a new model is installed, outside the lock: panels
        stop their background encodes so the install does not wait for them.
    changed : Signal
        Emitted with the session after a new model was installed.
    """

    about_to_change = Signal(object)
    changed = Signal(object)

    def __init__(self):
        self.lock = threading.RLock()
        self.model = None
        self.predictor: Optional[SlicePredictor] = None
        self.description = ""
        self.generation = 0  # bumped per model: results of older models are stale
        # SlicePredictor keyword arguments, kept across model changes
        self.predictor_settings: dict = {"memory_mb": DEFAULT_MEMORY_MB, "memory_dtype": "float32", "cache_dir": None}

    def configure(self, **settings) -> None:
        """Change the predictor's cache settings (see :meth:`SlicePredictor.configure`).

        They apply to the current predictor at once, without dropping the
        model, and to the predictors of models loaded later.

        Parameters
        ----------
        **settings
            ``memory_mb``, ``memory_dtype``, ``cache_dir`` (None: memory only).

        Raises
        ------
        SamlabError
            An invalid value; nothing is changed then.

        Examples
        --------
        >>> session_for(viewer).configure(memory_mb=512, memory_dtype="float16")   # doctest: +SKIP
        """
        unknown = set(settings) - set(self.predictor_settings)
        if unknown:
            raise TypeError(f"unknown predictor settings: {', '.join(sorted(unknown))}")
        self.ensure_model()
        # the predictor's caches lock themselves: no need to wait for a running encode
        self.predictor.configure(**settings)
        self.predictor_settings = {**self.predictor_settings, **settings}

    def ensure_model(self):
        """The current model, loading the classic engine on first use."""
        if self.model is None:
            self.set_model(_classic(), "classic (no weights)")
        return self.model

    def set_model(self, model, description: str = "") -> None:
        self.about_to_change.emit(self)
        with self.lock:
            self.model = model
            self.predictor = SlicePredictor(model, **self.predictor_settings)
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
