"""Segment names and colours where review tools read them.

Two places, both read back by :func:`napari_samlab.io.readers.read_image`
into ``Image.metadata["segments"]``:

* ``.seg.nrrd``: 3D Slicer's segmentation header fields, as Slicer writes
  them for a single-layer labelmap (``Segment{i}_ID``, ``_Name``,
  ``_Color`` as three floats in 0..1, ``_LabelValue``, ``_Layer``,
  ``_Extent`` in voxel indices ``x0 x1 y0 y1 z0 z1``, ``_Tags``, ...), so
  Slicer shows each segment with its name and colour.  The image itself
  stays a plain NRRD (SimpleITK and ITK read it with the same geometry).
* every other volume format (NIfTI, NRRD, MHA): an ITK-SNAP label
  description file beside it, ``<stem>.label.txt`` (``tumour.nii.gz`` ->
  ``tumour.label.txt``): ITK-SNAP loads it with Segmentation > Import Label
  Descriptions, 3D Slicer's colour-table reader skips its ``#`` lines and
  reads ``IDX R G B A ...`` rows.

A segment is a dict ``{"label": int, "name": str, "color": (r, g, b)}``,
colour components in 0..1 (floats) or 0..255 (ints).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import SamlabError
from .atomic import split_ext

# Slicer's generic-anatomy-like default colours for segments given no colour
_DEFAULT_COLORS = [(0.945, 0.839, 0.569), (0.502, 0.682, 0.502), (0.741, 0.255, 0.314), (0.694, 0.478, 0.396),
                   (0.435, 0.722, 0.824), (0.847, 0.396, 0.310), (0.867, 0.510, 0.396), (0.565, 0.933, 0.565)]
_ITKSNAP_HEADER = """################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    IDX:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
    0     0    0    0        0  0  0    "Clear Label"
"""


def normalize_segments(segments=None, segment_names: Optional[Dict[int, str]] = None,
                       labels: Optional[np.ndarray] = None) -> List[dict]:
    """One checked list of segments: label, name, colour (floats 0..1).

    Parameters
    ----------
    segments : sequence of dict, optional
        ``{"label": 1, "name": "tumour", "color": (r, g, b)}``; ``color``
        optional (floats 0..1 or ints 0..255).
    segment_names : dict, optional
        Label value -> name (the older argument); used for labels that
        ``segments`` does not list.
    labels : ndarray, optional
        When given, every non-zero value present gets a segment (named
        ``"Segment N"`` unless named above).

    Returns
    -------
    list of dict
        Sorted by label value; empty when nothing was given or present.

    Examples
    --------
    >>> normalize_segments([{"label": 1, "name": "tumour", "color": (255, 0, 0)}])
    [{'label': 1, 'name': 'tumour', 'color': (1.0, 0.0, 0.0)}]
    """
    out: Dict[int, dict] = {}
    for seg in segments or ():
        if not isinstance(seg, dict) or "label" not in seg:
            raise SamlabError("each segment must be a dict with a 'label' (and 'name', 'color'): got " + repr(seg)[:80])
        value = int(seg["label"])
        if value <= 0:
            raise SamlabError(f"segment label values must be positive; got {value}")
        out[value] = {"label": value, "name": str(seg.get("name") or f"Segment {value}"),
                      "color": _color(seg.get("color"), value)}
    for value, name in (segment_names or {}).items():
        value = int(value)
        if value > 0 and value not in out:
            out[value] = {"label": value, "name": str(name), "color": _color(None, value)}
    if labels is not None:
        for value in np.unique(labels):
            value = int(value)
            if value > 0 and value not in out:
                out[value] = {"label": value, "name": f"Segment {value}", "color": _color(None, value)}
    return [out[k] for k in sorted(out)]


def _color(color, value: int) -> tuple:
    if color is None:
        return _DEFAULT_COLORS[(value - 1) % len(_DEFAULT_COLORS)]
    c = np.asarray(color, dtype=float).ravel()
    if c.size not in (3, 4) or not np.all(np.isfinite(c)) or c.min() < 0:
        raise SamlabError(f"segment {value}: colour must be (r, g, b) in 0..1 or 0..255; got {tuple(color)}")
    c = c[:3]
    if c.max() > 1.0 or np.issubdtype(np.asarray(color).dtype, np.integer):
        if c.max() > 255:
            raise SamlabError(f"segment {value}: colour components above 255: {tuple(color)}")
        c = c / 255.0
    return tuple(round(float(v), 4) for v in c)


# -- 3D Slicer .seg.nrrd ---------------------------------------------------
def slicer_fields(segments: Sequence[dict], labels: np.ndarray) -> Dict[str, str]:
    """The NRRD header fields 3D Slicer writes for a one-layer segmentation.

    Examples
    --------
    >>> f = slicer_fields([{"label": 1, "name": "tumour", "color": (1.0, 0.0, 0.0)}], np.ones((2, 3, 4), np.uint8))
    >>> f["Segment0_Name"], f["Segment0_LabelValue"], f["Segment0_Extent"]
    ('tumour', '1', '0 3 0 2 0 1')
    """
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": " ".join(["0"] * 3),
        "Segmentation_ConversionParameters": "",
    }
    vol = labels if labels.ndim == 3 else labels[None]
    for i, seg in enumerate(segments):
        fields[f"Segment{i}_ID"] = f"Segment_{seg['label']}"
        fields[f"Segment{i}_Name"] = seg["name"]
        fields[f"Segment{i}_NameAutoGenerated"] = "0"
        fields[f"Segment{i}_Color"] = " ".join(f"{v:g}" for v in seg["color"])
        fields[f"Segment{i}_ColorAutoGenerated"] = "0"
        fields[f"Segment{i}_LabelValue"] = str(seg["label"])
        fields[f"Segment{i}_Layer"] = "0"
        fields[f"Segment{i}_Extent"] = _extent(vol == seg["label"])
        fields[f"Segment{i}_Tags"] = "Segmentation.Status:inprogress|"
    return fields


def _extent(mask: np.ndarray) -> str:
    """Voxel-index bounds ``x0 x1 y0 y1 z0 z1`` (Slicer writes ``0 -1 0 -1 0 -1`` when empty)."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in (2, 1, 0):  # array (z, y, x) -> Slicer's (x, y, z)
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        bounds += [int(idx[0]), int(idx[-1])]
    return " ".join(str(v) for v in bounds)


def segments_from_fields(fields: Dict[str, str]) -> List[dict]:
    """Segments from a ``.seg.nrrd`` header (the reverse of :func:`slicer_fields`).

    Only one-layer files are understood: a segmentation whose segments lie in
    several layers (overlapping segments) is refused.
    """
    out, i = [], 0
    while f"Segment{i}_ID" in fields or f"Segment{i}_Name" in fields:
        get = lambda key, default="": fields.get(f"Segment{i}_{key}", default)  # noqa: E731
        if get("Layer", "0").strip() not in ("", "0"):
            raise SamlabError("this .seg.nrrd has overlapping segments in several layers: napari-samlab reads "
                              "one-layer segmentations; export it from Slicer as a labelmap")
        try:
            value = int(get("LabelValue", str(i + 1)))
            color = tuple(float(v) for v in get("Color", "").split()) or _color(None, value)
        except ValueError:
            raise SamlabError(f"segment {i} of this .seg.nrrd has an unreadable label value or colour") from None
        out.append({"label": value, "name": get("Name") or f"Segment {value}", "color": _color(color, value)})
        i += 1
    return out


# -- ITK-SNAP label description sidecar ------------------------------------
def sidecar_path(path) -> Path:
    """``tumour.nii.gz`` -> ``tumour.label.txt`` beside it."""
    path = Path(path)
    stem, _ = split_ext(path)
    return path.with_name(stem + ".label.txt")


def itksnap_text(segments: Sequence[dict]) -> str:
    """An ITK-SNAP label description file for ``segments``."""
    rows = [_ITKSNAP_HEADER]
    for seg in segments:
        r, g, b = (int(round(v * 255)) for v in seg["color"])
        name = seg["name"].replace('"', "'")
        rows.append(f'{seg["label"]:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{name}"\n')
    return "".join(rows)


def read_itksnap(path) -> List[dict]:
    """Segments from an ITK-SNAP label description file (label 0, "Clear Label", left out)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parts = shlex.split(line)
            value, r, g, b = int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])
            name = parts[7] if len(parts) > 7 else f"Segment {value}"
        except (ValueError, IndexError):
            raise SamlabError(f"{Path(path).name} line {n} is not an ITK-SNAP label description row "
                              "(IDX R G B A VIS MSH \"NAME\"): fix or remove the file") from None
        if value > 0:
            out.append({"label": value, "name": name, "color": _color((r, g, b), value)})
    return out


def is_seg_nrrd(path) -> bool:
    return bool(re.search(r"\.seg\.nrrd$", str(path), re.IGNORECASE))
