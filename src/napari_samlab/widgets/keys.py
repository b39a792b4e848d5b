"""The Segment panel's keyboard shortcuts, bound on the viewer and on the panel's own layers."""
from __future__ import annotations

from typing import Callable, Dict

# napari key names; shown in tooltips and returned by SegmentationWidget.shortcuts()
SHORTCUTS = {
    "segment": "Shift-S",
    "commit": "Shift-C",
    "toggle polarity": "N",
    "next slice": "Shift-Right",
    "previous slice": "Shift-Left",
    "undo": "Control-Z",
    "redo": "Control-Shift-Z",
    "next flagged slice": "Shift-F",
}


def pretty(key: str) -> str:
    """``"Control-Shift-Z"`` -> ``"Ctrl+Shift+Z"``, as napari shows keys."""
    return key.replace("Control", "Ctrl").replace("-", "+")


def bind_shortcuts(target, actions: Dict[str, Callable], run: Callable) -> None:
    """Bind every :data:`SHORTCUTS` key on ``target`` (a viewer or layer) to ``run(actions[name], name)``.

    Bound with ``overwrite`` so they win over a layer's own keys (Ctrl+Z on a
    Shapes layer undoes our prompt step, not a napari-internal one).
    """
    for name, key in SHORTCUTS.items():
        def handler(_layer_or_viewer, fn=actions[name], name=name):
            run(fn, name)

        target.bind_key(key, handler, overwrite=True)
