"""npe2 writer: Labels layers saved on their source image's grid."""
from __future__ import annotations

from typing import List

from ..errors import SamlabError
from ..io.writers import write_labels
from .layers import image_from_layer


def write_labels_layer(path: str, data, meta: dict) -> List[str]:
    """Save a Labels layer; DICOM SEG when the path ends in ``.dcm``.

    Returns the written paths (napari's writer contract); on bad input shows
    one napari error message and returns an empty list, writing nothing.
    """
    try:
        ref = image_from_layer(data, meta)
        names = None
        segs = (meta.get("metadata") or {}).get("samlab_segments")
        if segs:
            names = {int(k): v.get("name", f"segment {k}") if isinstance(v, dict) else str(v) for k, v in segs.items()}
        written = write_labels(data, ref, path, segment_names=names)
        return [str(written)]
    except SamlabError as err:
        from napari.utils.notifications import show_error

        show_error(str(err))
        return []
