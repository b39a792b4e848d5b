"""Live preview: prompts that changed are segmented in a worker thread, newest first.

For every plane that holds prompts, :class:`LivePreview` sends the plane's
2D slice and prompt to the shared predictor in napari's ``thread_worker``.
Each answer goes into *its own* plane of the preview, and only if it is the
newest request for that plane and the model and image are still the same,
so scrolling while a slice is encoded never puts a mask on the wrong slice.
"""
from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..base.prompts import Prompt
from ._plane import Plane

log = logging.getLogger(__name__)
DEBOUNCE_MS = 150


@dataclass
class Request:
    """One plane to encode (and decode, when ``prompt`` is set) in a worker."""

    rid: int
    plane: Plane
    prompt: Optional[Prompt]
    window: object
    extract: Callable[[], np.ndarray]
    generation: int
    image_id: int


def run_requests(models, predictor, requests: List[Request]):
    """Worker body: encode/decode each request, yielding after every slice (so Cancel can stop between them)."""
    for i, req in enumerate(requests):
        image2d = req.extract()
        with models.lock:
            predictor.set_image(image2d, window=req.window)
            pred = predictor.predict_prompt(req.prompt) if req.prompt is not None else None
        yield (i + 1, len(requests), req, pred)


def prompt_key(prompt: Optional[Prompt]):
    if prompt is None:
        return None
    pts = tuple(tuple(p) for p in (prompt.points or ()))
    return (prompt.box, pts, tuple(prompt.point_labels or ()))


class LivePreview(QObject):
    """The request queue and workers of the live preview.

    Prompt edits start a short debounce timer (:meth:`request_update`);
    actions that need the finished preview (commit, re-propagate, fill)
    wait in :meth:`when_idle` instead of a nested event loop.

    Parameters
    ----------
    models : ModelSession
    collect : callable () -> (prompts, planes)
        The prompted planes now (``PromptLayers.collect()``) and the preview
        planes holding a result; None when no image is bound.
    make_request : callable (Plane, Prompt or None, rid) -> Request
    write : callable (Plane, values or None)
        Puts a plane's answer into the preview.
    image_id : callable () -> int or None
        The bound image now (answers for another one are dropped).

    Signals
    -------
    progressed(int, int)
        ``(done, total)`` of an encode; ``(0, 0)`` busy; ``(1, 1)`` finished.
    answered(str)
        A status line after each answer.
    failed(object, str)
        An exception and what was being done.
    idle()
        Nothing queued or running any more.
    """

    progressed = Signal(int, int)
    answered = Signal(str)
    failed = Signal(object, str)
    idle = Signal()

    def __init__(self, models, collect, make_request, write, image_id, parent=None):
        super().__init__(parent)
        self.models = models
        self.collect = collect
        self.live = True  # update as prompts change (the panel's "live" box)
        self.debounce = QTimer()
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(DEBOUNCE_MS)
        self.debounce.timeout.connect(self._on_debounce)
        self.waiting: List[Callable[[], None]] = []  # actions run once the preview is finished
        self.make_request = make_request
        self.write = write
        self.image_id = image_id
        self.discarded = 0  # answers dropped because newer prompts had replaced them
        self.last_score: Optional[float] = None
        self.worker = None
        self.encode_worker = None
        self.closed = False
        self._rid = itertools.count(1)
        self._latest: Dict[tuple, int] = {}
        self._queue: "OrderedDict[tuple, Request]" = OrderedDict()
        self._computed: Dict[tuple, object] = {}  # plane key -> prompt key last sent
        self.before_start: Callable[[Plane], None] = lambda plane: None  # e.g. stop the prefetch

    @property
    def computing(self) -> bool:
        """A worker runs or planes are queued."""
        return self.worker is not None or self.encode_worker is not None or bool(self._queue)

    @property
    def busy(self) -> bool:
        """Computing, about to (debounce), or actions waiting for the result."""
        return self.computing or self.debounce.isActive() or bool(self.waiting)

    def request_update(self) -> None:
        """Prompts changed: update the preview after a short pause (when live)."""
        if self.live and not self.closed:
            self.debounce.start()

    def refresh(self, force: Optional[List[Plane]] = None, all_planes: bool = False) -> None:
        """Update now: queue changed planes (``force``: these in any case; ``all_planes``: every one)."""
        self.debounce.stop()
        got = self.collect()
        if got is not None and not self.closed:
            self.update(*got, self.models.takes_prompts, force=force, all_planes=all_planes)

    def _on_debounce(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - timer slot: report, never crash napari
            self._on_error(exc, "updating the preview")

    def when_idle(self, action: Callable[[], None]) -> bool:
        """Run ``action`` now if nothing is being computed (typed prompts flushed first), else once done.

        Returns True when it ran now.
        """
        if self.debounce.isActive():
            self.refresh()
        if not self.computing:
            action()
            return True
        self.waiting.append(action)
        return False

    @property
    def encoding(self) -> bool:
        return self.encode_worker is not None

    def forget(self) -> None:
        """Answers in flight are no longer wanted (commit, clear, new image); nothing is recomputed."""
        self._queue.clear()
        for key in list(self._latest):
            self._latest[key] = next(self._rid)
        self._computed.clear()

    def settle(self) -> None:
        """Treat the current prompts as answered: the preview got them elsewhere (undo, propagation)."""
        self.debounce.stop()
        self.forget()
        got = self.collect()
        prompts = got[0] if got is not None else {}
        for key, (plane, prompt) in prompts.items():
            self._computed[key] = prompt_key(prompt)

    def retry_all(self) -> None:
        """The next update recomputes every prompted plane (window or model changed)."""
        self._computed.clear()

    def cancel(self) -> None:
        """Drop waiting prompts and actions; stop encoding after the current slice."""
        self.debounce.stop()
        self.waiting.clear()
        for w in (self.worker, self.encode_worker):
            if w is not None:
                w.quit()
        self.forget()

    def update(self, prompts: Dict[tuple, tuple], planes: Dict[tuple, Plane], takes_prompts: bool,
               force: Optional[List[Plane]] = None, all_planes: bool = False) -> None:
        """Queue the planes whose prompts changed; clear planes whose prompts are gone."""
        if self.closed:
            return
        keys = set(prompts) | set(self._computed) | set(planes)
        forced = {p.key: p for p in (force or [])}
        if all_planes:
            for k in set(prompts) | set(planes):
                forced.setdefault(k, prompts[k][0] if k in prompts else planes[k])
        for key in keys | set(forced):
            plane, prompt = prompts.get(key, (forced.get(key) or planes.get(key), None))
            if plane is None:
                continue
            if prompt is None and key in forced and not takes_prompts:
                prompt = Prompt()  # SAMed: segments with no prompt, on request
            pkey = prompt_key(prompt)
            if key not in forced and self._computed.get(key, None) == pkey and (pkey is not None or key not in planes):
                continue
            self._computed[key] = pkey
            rid = next(self._rid)
            self._latest[key] = rid
            if prompt is None:
                self._queue.pop(key, None)
                if key in planes:
                    self.write(plane, None)
                continue
            self._queue[key] = self.make_request(plane, prompt, rid)
        self._pump()

    def encode(self, requests: List[Request]) -> bool:
        """Encode the planes of ``requests`` in the background (one worker; False if one runs already)."""
        if self.encode_worker is not None:
            return False
        self.encode_worker = self._start(requests, determinate=True, what="encoding")
        self.progressed.emit(0, len(requests))
        return True

    def _pump(self) -> None:
        if self.worker is not None or not self._queue:
            self._report()
            return
        _, req = self._queue.popitem(last=False)
        self.before_start(req.plane)  # the user's prompt goes first
        self.worker = self._start([req], determinate=False, what=f"segmenting {req.plane.name}")
        self._report()

    def _start(self, reqs: List[Request], determinate: bool, what: str):
        from napari.qt.threading import create_worker

        worker = create_worker(run_requests, self.models, self.models.predictor, reqs,
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(lambda item: self._on_result(item, determinate))
        worker.errored.connect(lambda exc: self._on_error(exc, what))
        worker.finished.connect(lambda: self._on_finished(worker))
        self.answered.emit(what + "…")
        worker.start()
        return worker

    def _on_result(self, item, determinate: bool) -> None:
        done, total, req, pred = item
        if self.closed:
            return
        if determinate:
            self.progressed.emit(done, total)
            self.answered.emit(f"encoded {done}/{total} slices")
        if pred is None:
            return
        stale = (self._latest.get(req.plane.key) != req.rid or req.generation != self.models.generation
                 or req.image_id != self.image_id())
        if stale:
            self.discarded += 1
            return  # answered a prompt/slice/model the user has moved on from
        values = pred.labels if pred.labels is not None and not self.models.takes_prompts else pred.mask
        self.write(req.plane, values)
        self.last_score = float(pred.score)
        self.answered.emit(f"{req.plane.name}: {int(np.count_nonzero(values))} px, score {pred.score:.2f}")

    def _on_error(self, exc: BaseException, what: str) -> None:
        log.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
        self._computed.clear()  # let the next change of the same prompts try again
        if not self.closed:
            self.failed.emit(exc, what)

    def _on_finished(self, worker) -> None:
        if worker is self.worker:
            self.worker = None
        if worker is self.encode_worker:
            self.encode_worker = None
        if self.closed:
            return
        self._pump()
        if not self.computing:
            pending, self.waiting = self.waiting, []
            for action in pending:
                try:
                    action()
                except Exception as exc:  # noqa: BLE001 - a waiting action ran from a worker's signal
                    self._on_error(exc, "finishing a waiting action")
            if not self.computing:
                self.idle.emit()

    def _report(self) -> None:
        if self.encode_worker is None:
            self.progressed.emit(0, 0) if (self.worker is not None or self._queue) else self.progressed.emit(-1, -1)
