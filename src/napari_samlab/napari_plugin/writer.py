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
        written = write_labels(data, ref, path, segments=_segments(meta))
        return [str(written)]
    except SamlabError as err:
        from napari.utils.notifications import show_error

        show_error(str(err))
        return []


def _segments(meta: dict) -> list:
    """Names and colours of a layer: ``metadata["samlab_segments"]`` (label ->
    name or {"name", "color"}), else ``features`` label/name columns with the
    colours of the layer's colormap."""
    segs = (meta.get("metadata") or {}).get("samlab_segments")
    if segs:
        return [{"label": int(k), "name": v.get("name", f"Segment {k}"), "color": v.get("color")}
                if isinstance(v, dict) else {"label": int(k), "name": str(v)} for k, v in segs.items()]
    features = meta.get("features")
    if features is None or "label" not in features or "name" not in features:
        return []
    colormap = meta.get("colormap")
    out = []
    for value, name in zip(list(features["label"]), list(features["name"])):
        seg = {"label": int(value), "name": str(name)}
        if colormap is not None and hasattr(colormap, "map"):
            seg["color"] = tuple(float(c) for c in colormap.map(int(value))[:3])
        out.append(seg)
    return out
