"""npe2 reader: medical formats and DICOM folders, geometry preserved."""
from __future__ import annotations

import logging

from ..errors import SamlabError
from ..io.readers import can_read, read_images
from .layers import image_layer_data

log = logging.getLogger(__name__)


def get_reader(path):
    """Return a reader function for ``path``, or None to decline.

    napari asks every plugin; we decline what we cannot read so another
    plugin (or napari's own message) gets its turn.  A file in one of our
    formats that turns out to be damaged is declined too, with our one-line
    explanation shown as a napari warning.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        if not can_read(path):
            return None
    except OSError:
        return None
    return read_layers


def read_layers(path):
    """Read ``path`` into napari layer data tuples (one per DICOM series)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        images = read_images(path, keep_time=True)
    except SamlabError as err:
        _notify(str(err))
        # napari's "nothing to add" sentinel: the reader handled the path
        return [(None,)]
    return [image_layer_data(im) for im in images]


def _notify(message: str) -> None:
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:  # napari not importable: scripted use
        log.error(message)
