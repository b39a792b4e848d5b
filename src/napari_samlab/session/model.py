"""The loaded model, its predictor (embedding caches) and the lock that serialises their use.

One :class:`ModelSession` is shared by everything that segments one image
set: a script's :class:`~napari_samlab.session.Session`, or the dock widgets
of one napari viewer (``widgets._session.session_for``).  It starts with the
classic engine, which needs no weights.
"""
from __future__ import annotations

import threading
from typing import Optional

from ..predict.cache import DEFAULT_MEMORY_MB
from ..predict.predictor import SlicePredictor
from .hooks import Hook


def classic_model():
    """The classic engine, built directly: the registry would import torch (seconds) for an engine that needs none."""
    from ..models.classic import ClassicModel

    return ClassicModel()


class ModelSession:
    """The loaded model, its :class:`SlicePredictor` and :attr:`lock`.

    ``SlicePredictor`` keeps a cache and the current embedding, so only one
    thread may use it at a time: workers hold :attr:`lock` while they encode
    or decode.

    Attributes
    ----------
    about_to_change : Hook
        Emitted with the session before a new model is installed, outside
        the lock: background encodes stop so the install need not wait.
    changed : Hook
        Emitted with the session after a new model was installed.
    generation : int
        Bumped per model: results computed with an older model are stale.

    Examples
    --------
    >>> ms = ModelSession(); ms.ensure_model().family
    'classic'
    """

    def __init__(self, model=None, description: str = ""):
        self.lock = threading.RLock()
        self.model = None
        self.predictor: Optional[SlicePredictor] = None
        self.description = ""
        self.generation = 0
        self.about_to_change = Hook()
        self.changed = Hook()
        # SlicePredictor keyword arguments, kept across model changes
        self.predictor_settings: dict = {"memory_mb": DEFAULT_MEMORY_MB, "memory_dtype": "float32", "cache_dir": None,
                                         "disk_dtype": "float32"}
        if model is not None:
            self.set_model(model, description)

    def configure(self, **settings) -> None:
        """Change the predictor's cache settings (``memory_mb``, ``memory_dtype``, ``cache_dir``, ``disk_dtype``).

        They apply to the current predictor at once, without dropping the
        model, and to the predictors of models loaded later.

        Raises
        ------
        SamlabError
            An invalid value; nothing is changed then.
        """
        unknown = set(settings) - set(self.predictor_settings)
        if unknown:
            raise TypeError(f"unknown predictor settings: {', '.join(sorted(unknown))}")
        self.ensure_model()
        # the predictor's caches lock themselves: no need to wait for a running encode
        self.predictor.configure(**settings)
        self.predictor_settings = {**self.predictor_settings, **settings}

    def ensure_model(self):
        """The current model, installing the classic engine on first use."""
        if self.model is None:
            self.set_model(classic_model(), "classic (no weights)")
        return self.model

    def set_model(self, model, description: str = "") -> None:
        """Install ``model`` (a :class:`~napari_samlab.models.base.SegmentationModel`) with a fresh predictor."""
        self.about_to_change.emit(self)
        with self.lock:
            self.model = model
            self.predictor = SlicePredictor(model, **self.predictor_settings)
            self.description = description or getattr(model, "family", "model")
            self.generation += 1
        self.changed.emit(self)

    @property
    def takes_prompts(self) -> bool:
        """False for prompt-free families (SAMed: every slice gets the model's classes)."""
        m = self.model
        return m is None or getattr(m, "needs_prompt", True)
