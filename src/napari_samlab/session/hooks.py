"""A minimal callback list, so the core can announce changes without napari or Qt."""
from __future__ import annotations

import inspect
import weakref
from typing import Callable, List


class Hook:
    """Callbacks called in order with the arguments of :meth:`emit`.

    The widgets connect their slots here (``hook.connect(fn)``); the core
    never knows who listens.  Callbacks run in the thread that emits.  Bound
    methods are held weakly, so a listener that is gone drops out.

    Examples
    --------
    >>> h = Hook(); seen = []
    >>> h.connect(seen.append); h.emit(3); seen
    [3]
    """

    def __init__(self):
        self._refs: List[Callable[[], Callable]] = []

    def connect(self, fn: Callable) -> Callable:
        ref = weakref.WeakMethod(fn) if inspect.ismethod(fn) else (lambda fn=fn: fn)
        self._refs.append(ref)
        return fn

    def disconnect(self, fn: Callable) -> None:
        self._refs = [r for r in self._refs if r() not in (None, fn)]

    def emit(self, *args) -> None:
        self._refs = [r for r in self._refs if r() is not None]
        for ref in list(self._refs):
            fn = ref()
            if fn is not None:
                fn(*args)
