"""Stopping long work from another thread.

Encodes can be made stoppable: inside ``with cancellable(event):`` an encode
raises :class:`napari_samlab.errors.Cancelled` once ``event`` is set (the
background prefetch and propagation's Cancel use this so that the user's
next action does not wait for a slow encode to finish).  It lives on the
floor because models (the encoders), propagation and the widgets' workers
all need it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import Cancelled

_cancel = threading.local()  # .event: the Event of the innermost cancellable() of this thread


@contextmanager
def cancellable(event: threading.Event) -> Iterator[threading.Event]:
    """Make the encodes started in this thread stoppable through ``event``.

    Inside the block, :meth:`SegmentationModel.run_encoder` raises
    :class:`~napari_samlab.errors.Cancelled` if ``event`` is set before the
    encode starts, stops an OpenVINO or ONNX Runtime inference within about
    50 ms of it being set, and checks it again after a PyTorch forward pass
    (PyTorch cannot stop in the middle of one).  The setting is per thread
    (another thread's encodes are not affected) and nests: the previous
    event is restored on exit.  Outside any block nothing changes.

    Parameters
    ----------
    event : threading.Event
        Set it from any thread (e.g. the GUI thread) to stop.

    Yields
    ------
    threading.Event
        ``event``.

    Examples
    --------
    >>> stop = threading.Event()
    >>> with cancellable(stop):                            # doctest: +SKIP
    ...     emb = model.encode(slice_)   # another thread may call stop.set()
    """
    previous = getattr(_cancel, "event", None)
    _cancel.event = event
    try:
        yield event
    finally:
        _cancel.event = previous


def current_cancel_event() -> Optional[threading.Event]:
    """The event of this thread's innermost :func:`cancellable` block, or None.

    Returns
    -------
    threading.Event or None

    Examples
    --------
    >>> current_cancel_event() is None
    True
    """
    return getattr(_cancel, "event", None)


def raise_if_cancelled(event: Optional[threading.Event] = None) -> None:
    """Raise :class:`~napari_samlab.errors.Cancelled` if the work was asked to stop.

    Parameters
    ----------
    event : threading.Event, optional
        Default: this thread's :func:`cancellable` event (no-op outside one).

    Raises
    ------
    Cancelled
        The event is set.

    Examples
    --------
    >>> stop = threading.Event()
    >>> with cancellable(stop):
    ...     raise_if_cancelled()          # not set: returns
    ...     stop.set()
    ...     raise_if_cancelled()
    Traceback (most recent call last):
    ...
    napari_samlab.errors.Cancelled: stopped on request
    """
    event = current_cancel_event() if event is None else event
    if event is not None and event.is_set():
        raise Cancelled("stopped on request")
