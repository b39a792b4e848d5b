"""Small helpers shared by the panels: notifications and waiting on workers."""
from __future__ import annotations

import logging
import time
from typing import Callable, List

from ..errors import SamlabError

log = logging.getLogger("napari_samlab.widgets")


def explain(exc: BaseException, doing: str) -> str:
    """One line saying what went wrong while ``doing`` and what to do.

    Parameters
    ----------
    exc : BaseException
        The error a worker or a call raised.
    doing : str
        What was being done, e.g. ``"encoding axial slice 30"``.
    """
    if isinstance(exc, SamlabError):
        return str(exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        where = "GPU" if "cuda" in text.lower() else "memory"
        return (f"out of {where} while {doing}: choose device cpu in the Model panel, a smaller model "
                "(litemedsam or classic), or close other images")
    if isinstance(exc, FileNotFoundError):
        return f"{doing}: file not found ({text}): check the path"
    if isinstance(exc, RuntimeError):
        return f"{doing} failed: {text[:300]}; check that the checkpoint matches the model family"
    return f"{doing} failed ({type(exc).__name__}: {text[:300]})"


class Notifier:
    """Shows messages as napari notifications and keeps them for scripts/tests."""

    def __init__(self):
        self.messages: List[tuple] = []

    def _show(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        try:
            from napari.utils import notifications as n

            {"error": n.show_error, "warning": n.show_warning, "info": n.show_info}[level](text)
        except Exception:  # noqa: BLE001 - a notification must never take the GUI down
            log.debug("notification not shown", exc_info=True)

    def error(self, text: str) -> None:
        self._show("error", text)

    def warning(self, text: str) -> None:
        self._show("warning", text)

    def info(self, text: str) -> None:
        self._show("info", text)

    def exception(self, exc: BaseException, doing: str) -> str:
        text = explain(exc, doing)
        self.error(text)
        return text

    @property
    def last(self) -> str:
        return self.messages[-1][1] if self.messages else ""


def alive(widget) -> bool:
    """False once Qt deleted the widget (napari closed it) while Python still holds it."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


def guard(notes: Notifier, fn: Callable, doing: str):
    """Run a UI action (a widget slot); errors become one-line notifications, never crashes.

    The traceback of anything but a :class:`SamlabError` is logged
    (``SAMLAB_DEBUG=1`` or napari's log shows it).
    """
    try:
        return fn()
    except SamlabError as exc:
        notes.error(str(exc))
    except RuntimeError as exc:
        if "has been deleted" in str(exc):  # the panel closed under a key binding or a queued call
            return None
        log.error("%s failed", doing, exc_info=True)
        notes.exception(exc, doing)
    except Exception as exc:  # noqa: BLE001 - widget slot: the GUI must survive anything
        log.error("%s failed", doing, exc_info=True)
        notes.exception(exc, doing)
    return None


def wait_until(done: Callable[[], bool], timeout: float) -> bool:
    """Run the Qt event loop until ``done()`` or ``timeout`` seconds.

    Only for script calls that ask to block (``segment(wait=True)``):
    workers' results arrive through Qt signals, so the loop must run.
    Buttons and keys never wait (see ``SegmentationWidget.when_idle``).
    """
    from qtpy.QtCore import QCoreApplication, QEventLoop

    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            return False
        QCoreApplication.processEvents(QEventLoop.AllEvents, 20)
        time.sleep(0.002)
    return True


def progress_and_cancel(tooltip: str, on_cancel: Callable[[], None]):
    """A slim progress bar and a disabled Cancel button wired to ``on_cancel``.

    Returns ``(progress, cancel_button)`` for a panel to lay out.
    """
    from qtpy.QtWidgets import QProgressBar, QPushButton

    progress = QProgressBar()
    progress.setRange(0, 1)
    progress.setValue(0)
    progress.setMaximumHeight(14)
    cancel = QPushButton("Cancel")
    cancel.setEnabled(False)
    cancel.setToolTip(tooltip)
    cancel.clicked.connect(on_cancel)
    return progress, cancel
