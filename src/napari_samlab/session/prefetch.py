"""Background encoding of the slices a user is likely to prompt next.

While the user looks at a slice of a volume, the slice and its neighbours
(:func:`~napari_samlab.propagate.plan.slices_around`), or after a
propagation the slices next in its schedule, are encoded in a low-priority
thread so later prompts find their embeddings cached.  The user's own work
always wins: :meth:`Prefetcher.stop` cancels the encode in progress
(:func:`~napari_samlab.base.cancel.cancellable`) so the model lock is free
within moments.  No napari, no Qt: the widget only decides when to call it.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import List, Optional, Sequence

import numpy as np

from ..errors import Cancelled
from ..base.cancel import cancellable

log = logging.getLogger(__name__)

#: added to the prefetch thread's nice value (Linux)
PREFETCH_NICE = 10
#: families whose encode costs about as much as a cache look-up: never prefetched
CHEAP_ENCODERS = ("classic",)


def lower_thread_priority(niceness: int = PREFETCH_NICE) -> None:
    """Make the calling thread give way to the user's work (Linux; elsewhere nothing).

    Only this thread is affected: the thread pools of torch, ONNX Runtime
    and OpenVINO are threads of their own at normal priority, which is why
    stopping a prefetch relies on cancellation, not on priority.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(niceness)))
    except (OSError, AttributeError, ValueError):
        pass  # not permitted here: run at normal priority


def acquire_unless(lock, cancel: threading.Event, poll: float = 0.05) -> bool:
    """Take ``lock`` unless ``cancel`` is set first (polls, so a stopped prefetch ends promptly)."""
    while not cancel.is_set():
        if lock.acquire(timeout=poll):
            if not cancel.is_set():
                return True
            lock.release()
    return False


def worth_prefetching(model) -> bool:
    """Whether ``model``'s encode costs enough for background encoding to help."""
    # SAM 2's memory tracker encodes frames itself: the 2D embedding cache would go unused
    return (model is not None and getattr(model, "family", "") not in CHEAP_ENCODERS
            and not getattr(model, "memory_propagation", False))


class _Run:
    def __init__(self, axis: int):
        self.axis = axis
        self.cancel = threading.Event()
        self.last = threading.Event()  # finish the current encode, then end
        self.encoding: Optional[tuple] = None  # (axis, z) being encoded now


class Prefetcher:
    """Encodes slices of a volume in one low-priority background thread at a time.

    Parameters
    ----------
    models : ModelSession
        Whose predictor and lock are used; a model change ends the run.

    Attributes
    ----------
    encoded : list of int
        Slices the current (or last) run really encoded (cache hits excluded).

    Examples
    --------
    >>> pf = Prefetcher(model_session)                         # doctest: +SKIP
    >>> pf.start(volume, [30, 31, 29], window); pf.join()       # doctest: +SKIP
    >>> pf.encoded                                              # doctest: +SKIP
    [30, 31, 29]
    """

    def __init__(self, models):
        self.models = models
        self.encoded: List[int] = []
        self._run: Optional[_Run] = None
        self._guard = threading.Lock()
        self._threads: List[threading.Thread] = []

    @property
    def running(self) -> bool:
        """Whether a run is in progress (a stopped one until its thread let go of the model)."""
        return self._run is not None

    @property
    def active(self) -> bool:
        """Running and not asked to stop."""
        run = self._run
        return run is not None and not run.cancel.is_set()

    def start(self, volume: np.ndarray, zs: Sequence[int], window, axis: int = 0) -> None:
        """Stop any run, then encode ``volume[z]`` for ``zs`` in order, in the background.

        ``volume`` is viewed with the prefetch axis first; ``axis`` names that
        axis of the data (only used to match :meth:`stop`'s ``keep``).
        """
        self.stop()
        zs = [int(z) for z in zs if 0 <= int(z) < volume.shape[0]]
        if not zs:
            return
        run = _Run(int(axis))
        with self._guard:
            self._run = run
            self.encoded = []
        # a plain thread, not a pool's: its lowered priority must not outlive it
        thread = threading.Thread(target=self._job, name="samlab-prefetch", daemon=True,
                                  args=(run, self.models.predictor, volume, zs, window))
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def stop(self, keep: Optional[tuple] = None) -> None:
        """Stop now (the user started something else).

        ``keep``: ``(axis, z)`` of the slice the user is about to segment.  If
        that very slice is being encoded, its encode finishes (its embedding
        is what the user needs next) and the run ends after it.
        """
        run = self._run
        if run is None:
            return
        if keep is not None and run.encoding == (int(keep[0]), int(keep[1])):
            run.last.set()
            if run.encoding is not None:
                return
        run.cancel.set()

    def join(self, timeout: float = 30) -> None:
        """Wait for the background threads (after :meth:`stop`, within an encode step)."""
        for t in self._threads:
            t.join(timeout=timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _job(self, run: _Run, predictor, volume: np.ndarray, zs: List[int], window) -> None:
        lower_thread_priority()
        lock = self.models.lock
        try:
            for z in zs:
                if run.last.is_set() or not acquire_unless(lock, run.cancel):
                    return
                try:
                    if predictor is not self.models.predictor:
                        return  # the model changed: these embeddings would never be used
                    before = predictor.encoder_calls
                    run.encoding = (run.axis, z)
                    try:
                        with cancellable(run.cancel):
                            predictor.set_image(np.ascontiguousarray(volume[z]), window=window)
                    finally:
                        run.encoding = None
                    new = predictor.encoder_calls > before
                finally:
                    lock.release()
                if new:
                    with self._guard:
                        if self._run is run:
                            self.encoded.append(z)
        except Cancelled:
            pass
        except Exception:  # noqa: BLE001 - worker thread: a failure only means nothing is cached
            log.debug("background encode failed", exc_info=True)
        finally:
            with self._guard:
                if self._run is run:
                    self._run = None
