"""Prompts files: the prompts of one image as JSON (SPEC.md, "Prompts files").

A prompts file holds every prompt of an image, one entry per object::

    {"prompts": [{"slice": 45, "box": [120, 88, 190, 160], "points": [[150, 120]],
                  "negatives": [[100, 100]], "label": 1, "propagate": true}]}

Each entry needs a box or points; ``slice`` defaults to 0 (2D images),
``label`` to 1, ``propagate`` to false and ``negatives`` to [].  Entries apply
in order and the later one wins where two objects overlap.

This module only reads, checks and writes the file; applying the entries to
an image is :func:`napari_samlab.cohort.apply.segment_with_prompts`.  A file
with anything it does not understand (an unknown key, a fractional slice, a
label of 0) is refused with one message naming the entry, never half-used.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from ..errors import SamlabError

ENTRY_KEYS = ("slice", "box", "points", "negatives", "label", "propagate")
# besides "prompts", a file may say which image it was drawn on (informational)
TOP_KEYS = ("prompts", "image", "samlab_version")
MAX_LABEL = 65535


@dataclass(frozen=True)
class PromptEntry:
    """One object's prompt on one slice, in array indices (x = column, y = row).

    Parameters
    ----------
    slice : int
        Index of the prompted slice (0 for a 2D image).
    box : (x0, y0, x1, y1) or None
        Corners, inclusive.
    points, negatives : tuple of (x, y)
        Clicks inside (points) and outside (negatives) the object.
    label : int
        Label value the object gets (1..65535).
    propagate : bool
        Propagate the slice's mask through the volume in both directions.

    Examples
    --------
    >>> e = PromptEntry(slice=3, box=(1, 2, 8, 9))
    >>> e.to_dict()
    {'slice': 3, 'box': [1, 2, 8, 9], 'points': [], 'negatives': [], 'label': 1, 'propagate': False}
    """

    slice: int = 0
    box: Optional[tuple] = None
    points: tuple = field(default_factory=tuple)
    negatives: tuple = field(default_factory=tuple)
    label: int = 1
    propagate: bool = False

    def to_dict(self) -> dict:
        """The entry as JSON-ready data with every default written out."""
        return {
            "slice": int(self.slice),
            "box": None if self.box is None else [_plain(v) for v in self.box],
            "points": [[_plain(x), _plain(y)] for x, y in self.points],
            "negatives": [[_plain(x), _plain(y)] for x, y in self.negatives],
            "label": int(self.label),
            "propagate": bool(self.propagate),
        }


def _plain(v: float):
    """Whole numbers as int (readable files), others as float."""
    v = float(v)
    return int(v) if v.is_integer() else v


def _where(source: str, i: int) -> str:
    return f"{source}: entry {i + 1}"


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {json.dumps(value)}")
    return float(value)


def _xy_list(value, what: str) -> tuple:
    if not isinstance(value, list):
        raise ValueError(f'"{what}" must be a list of [x, y] pairs, got {json.dumps(value)}')
    out = []
    for p in value:
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f'"{what}" must be a list of [x, y] pairs; {json.dumps(p)} is not one')
        out.append((_number(p[0], f'{what} x'), _number(p[1], f'{what} y')))
    return tuple(out)


def parse_entry(raw, where: str = "prompt") -> PromptEntry:
    """Check one entry (a dict from JSON) and fill in its defaults.

    Parameters
    ----------
    raw : dict
        ``{"slice": ..., "box": ..., ...}`` as read from JSON.
    where : str
        How to name the entry in messages, e.g. ``"p.json: entry 2"``.

    Returns
    -------
    PromptEntry

    Raises
    ------
    SamlabError
        Unknown key, wrong type, neither box nor points, label outside 1..65535.

    Examples
    --------
    >>> parse_entry({"points": [[3, 4]]}).label
    1
    """
    if not isinstance(raw, dict):
        raise SamlabError(f"{where} must be an object like {{\"slice\": 0, \"box\": [x0, y0, x1, y1]}}, got {json.dumps(raw)[:60]}")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise SamlabError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}: use only {', '.join(ENTRY_KEYS)}")
    try:
        z = raw.get("slice", 0)
        if isinstance(z, bool) or not isinstance(z, int):
            raise ValueError(f'"slice" must be a whole slice index, got {json.dumps(z)}')
        if z < 0:
            raise ValueError(f'"slice" {z} is negative: slices are numbered from 0')
        box = raw.get("box")
        if box is not None:
            if not isinstance(box, list) or len(box) != 4:
                raise ValueError(f'"box" must be [x0, y0, x1, y1], got {json.dumps(box)}')
            box = tuple(_number(v, "box corner") for v in box)
            if box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f'"box" {json.dumps(raw["box"])} is empty (x1 < x0 or y1 < y0): give the top-left corner first')
        points = _xy_list(raw.get("points", []), "points")
        negatives = _xy_list(raw.get("negatives", []), "negatives")
        label = raw.get("label", 1)
        if isinstance(label, bool) or not isinstance(label, int) or not 1 <= label <= MAX_LABEL:
            raise ValueError(f'"label" {json.dumps(label)} is not valid: use a whole number 1..{MAX_LABEL}')
        propagate = raw.get("propagate", False)
        if not isinstance(propagate, bool):
            raise ValueError(f'"propagate" must be true or false, got {json.dumps(propagate)}')
    except ValueError as err:
        raise SamlabError(f"{where}: {err}") from None
    if box is None and not points:
        what = "only negatives" if negatives else "neither a box nor points"
        raise SamlabError(f'{where} has {what}: add "box": [x0, y0, x1, y1] or "points": [[x, y]] inside the object')
    return PromptEntry(z, box, points, negatives, label, propagate)


def parse_prompts(data, source: str = "prompts file") -> List[PromptEntry]:
    """Check a whole prompts document (already decoded from JSON).

    Parameters
    ----------
    data : dict
        ``{"prompts": [...]}``.
    source : str
        Name used in messages (usually the file name).

    Returns
    -------
    list of PromptEntry
        In file order (later entries win on overlap).

    Examples
    --------
    >>> [e.slice for e in parse_prompts({"prompts": [{"slice": 2, "box": [0, 0, 4, 4]}]})]
    [2]
    """
    if not isinstance(data, dict) or "prompts" not in data:
        raise SamlabError(f'{source} is not a prompts file: it must be a JSON object {{"prompts": [...]}}')
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SamlabError(f"{source} has unknown key(s) {', '.join(map(repr, unknown))}: a prompts file holds {', '.join(TOP_KEYS)}")
    entries = data["prompts"]
    if not isinstance(entries, list):
        raise SamlabError(f'{source}: "prompts" must be a list of entries, got {type(entries).__name__}')
    return [parse_entry(raw, _where(source, i)) for i, raw in enumerate(entries)]


def load_prompts(path) -> List[PromptEntry]:
    """Read and check a prompts file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    list of PromptEntry

    Raises
    ------
    SamlabError
        Missing file, not JSON (with line and column), or an invalid entry.

    Examples
    --------
    >>> entries = load_prompts("case01.prompts.json")   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SamlabError(f"prompts file {path} {what}: check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SamlabError(f"prompts file {path.name} is not text (not UTF-8 JSON): give the .json the widget's Save prompts wrote") from None
    except OSError as err:
        raise SamlabError(f"cannot read prompts file {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SamlabError(f"prompts file {path.name} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): fix or re-save it") from None
    return parse_prompts(data, path.name)


def prompts_document(entries: Iterable[PromptEntry], image=None) -> dict:
    """The JSON document of ``entries`` (defaults filled in).

    Parameters
    ----------
    entries : iterable of PromptEntry or dict
    image : str, optional
        The image the prompts belong to (recorded, not used when loading).

    Examples
    --------
    >>> prompts_document([PromptEntry(box=(0, 0, 4, 4))])["prompts"][0]["box"]
    [0, 0, 4, 4]
    """
    doc = {"prompts": [as_entry(e).to_dict() for e in entries]}
    if image is not None:
        doc["image"] = str(image)
    return doc


def as_entry(e) -> PromptEntry:
    """A :class:`PromptEntry` from an entry or an entry dict (checked)."""
    return e if isinstance(e, PromptEntry) else parse_entry(e)


def save_prompts(path, entries: Sequence, image=None) -> Path:
    """Write a prompts file atomically (the widget's "Save prompts").

    Parameters
    ----------
    path : str or Path
        Usually ``*.json``.
    entries : sequence of PromptEntry or dict
        In the order they were applied.
    image : str, optional
        Path or name of the image, recorded for the reader's information.

    Returns
    -------
    Path

    Examples
    --------
    >>> save_prompts(tmp / "p.json", [PromptEntry(slice=4, box=(1, 1, 9, 9), propagate=True)])  # doctest: +SKIP
    """
    from ..io.atomic import write_json

    path = Path(path)
    doc = prompts_document(entries, image)
    if not path.parent.exists():
        raise SamlabError(f"folder {path.parent} does not exist: choose another place for the prompts file")
    return write_json(path, doc)


def check_entries_fit(entries: Sequence[PromptEntry], spatial_shape: tuple, source: str = "prompts") -> None:
    """Check that every entry's slice exists in an image of ``spatial_shape``.

    Box and point coordinates are checked against the slice by the
    predictor's validator when the entries are applied.

    Raises
    ------
    SamlabError
        A slice outside a volume, a slice other than 0 or ``propagate`` on a
        2D image.

    Examples
    --------
    >>> check_entries_fit([PromptEntry(slice=9, box=(0, 0, 1, 1))], (5, 32, 32), "p.json")
    Traceback (most recent call last):
    ...
    napari_samlab.errors.SamlabError: p.json: entry 1 names slice 9, outside the image (slices 0..4)
    """
    is3d = len(spatial_shape) == 3
    for i, e in enumerate(entries):
        where = _where(source, i)
        if is3d and e.slice >= spatial_shape[0]:
            raise SamlabError(f"{where} names slice {e.slice}, outside the image (slices 0..{spatial_shape[0] - 1})")
        if not is3d and e.slice != 0:
            raise SamlabError(f'{where} names slice {e.slice} but the image is 2D: leave out "slice" (or use 0)')
        if not is3d and e.propagate:
            raise SamlabError(f'{where} asks to propagate but the image is 2D: set "propagate" to false')


def default_prompts_path(image_path) -> Path:
    """``scan.prompts.json`` beside ``scan.nii.gz``: where "Save prompts" proposes to write.

    Examples
    --------
    >>> default_prompts_path("/data/scan.nii.gz").name
    'scan.prompts.json'
    """
    from ..io.atomic import split_ext

    p = Path(os.fspath(image_path))
    stem, _ = split_ext(p)
    return p.with_name(f"{stem}.prompts.json")
