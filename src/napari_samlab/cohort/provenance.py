"""Provenance: how a label image was made, enough to make it again.

``OUTDIR/CASE.json`` (batch) and the sidecar of ``samlab segment`` hold the
SPEC keys ``samlab_version``, ``case``, ``image`` (absolute path),
``image_sha256``, ``model``, ``checkpoint``, ``checkpoint_sha256``,
``window``, ``prompts`` (as applied, defaults filled in), ``created``
(ISO 8601) and ``engine`` (``backend``, ``precision``, ``device``), plus what
a rerun also needs: ``base_checkpoint`` and ``base_checkpoint_sha256``
(SAMed), ``only_slice`` (SAMed restricted to one slice), ``everything``
(the settings of a ``--everything`` run: object size, min size, tile size) and ``labels`` /
``labels_sha256`` (the output it describes, so that a rerun can tell a
finished case from a half-replaced one).

The sidecar of an output ``OUT`` is ``OUT`` with its extension replaced by
``.json`` (``tumour.nii.gz`` -> ``tumour.json``), the same rule as a batch's
``CASE.nii.gz`` / ``CASE.json``.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

from ..errors import SamlabError
from ..io.atomic import split_ext, write_json

REQUIRED_KEYS = ("samlab_version", "case", "image", "image_sha256", "model", "checkpoint",
                 "checkpoint_sha256", "window", "prompts", "created", "engine")
# what must be equal for a rerun to keep an existing output (SPEC)
SAME_SETTINGS_KEYS = ("image_sha256", "model", "checkpoint_sha256", "window", "prompts")
_CHUNK = 1 << 20


def sidecar_path(out) -> Path:
    """The provenance file beside a label image.

    Examples
    --------
    >>> sidecar_path("/tmp/tumour.nii.gz").name
    'tumour.json'
    """
    out = Path(out)
    stem, _ = split_ext(out)
    return out.with_name(stem + ".json")


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)


def _mhd_data_files(header: Path) -> list:
    """The data file(s) an .mhd header points to (LOCAL: none)."""
    try:
        text = header.read_text(errors="replace")
    except OSError:
        return []
    m = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, re.M)
    if not m or m.group(1).upper() == "LOCAL":
        return []
    value = m.group(1)
    if value.upper() == "LIST":  # the file names follow, one a line
        tail = text[m.end():].split()
        return [header.parent / name for name in tail]
    return [header.parent / value]


def file_sha256(path) -> str:
    """SHA-256 of everything an image path stands for.

    A file is hashed as it is; an ``.mhd`` header together with its data
    file(s); a folder (DICOM series) as the sorted relative paths and
    contents of every file in it, so a changed, added or removed slice
    changes the hash.

    Examples
    --------
    >>> file_sha256("scan.nrrd")[:12]   # doctest: +SKIP
    '3f5c0a9e41b7'
    """
    path = Path(path)
    h = hashlib.sha256()
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for p in files:
                rel = p.relative_to(path).as_posix().encode()
                h.update(len(rel).to_bytes(8, "little") + rel)
                h.update(p.stat().st_size.to_bytes(8, "little"))
                _hash_file(h, p)
            return h.hexdigest()
        _hash_file(h, path)
        if path.suffix.lower() == ".mhd":
            for data in _mhd_data_files(path):
                if data.is_file():
                    _hash_file(h, data)
    except FileNotFoundError:
        raise SamlabError(f"{path} does not exist: check the path") from None
    except OSError as err:
        raise SamlabError(f"cannot read {path} to hash it: {err.strerror or err}") from None
    return h.hexdigest()


def engine_info(model, predictor_stats: Optional[dict] = None) -> dict:
    """``{"backend", "precision", "device"}`` of a model after it ran.

    ``backend`` is the encoder that really ran (``"numpy"`` for the classic
    engine, else ``torch``, ``openvino``, ``onnxruntime``, ...);
    ``precision`` its arithmetic (``float32``; ``int8`` for the quantised
    exports; ``bfloat16``/``float16`` under ``torch-autocast``).

    Examples
    --------
    >>> engine_info(load_model(family="classic"))   # doctest: +SKIP
    {'backend': 'numpy', 'precision': 'float32', 'device': 'cpu'}
    """
    device = str(getattr(model, "device", "cpu"))
    if model.family == "classic":
        return {"backend": "numpy", "precision": "float32", "device": "cpu"}
    backend = getattr(model, "last_encoder_backend", None) or getattr(model, "encoder_backend", "torch")
    if backend.endswith("-int8"):
        precision = "int8"
    elif backend == "torch-autocast":
        precision = "float16" if device.startswith("cuda") else "bfloat16"
    else:
        precision = "float32"
    return {"backend": backend, "precision": precision, "device": device}


def now_iso() -> str:
    """The current time, ISO 8601 with the UTC offset, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_provenance(*, case: str, image, image_sha256: str, model: str, checkpoint, checkpoint_sha256,
                     window, prompts: list, engine: dict, base_checkpoint=None, base_checkpoint_sha256=None,
                     only_slice: Optional[int] = None, labels=None, labels_sha256: Optional[str] = None,
                     everything: Optional[dict] = None) -> dict:
    """The provenance record (a plain dict, JSON-ready).

    Parameters
    ----------
    case : str
        Case name (batch) or the output's name without extension (segment).
    image, checkpoint, base_checkpoint : path or None
        Stored as absolute paths.
    prompts : list of dict
        :meth:`PromptEntry.to_dict` of each entry as applied ([] for SAMed).
    window : str or [level, width]

    Examples
    --------
    >>> rec = build_provenance(case="c1", image="ct.nrrd", image_sha256="ab", model="classic",
    ...                        checkpoint=None, checkpoint_sha256=None, window="auto", prompts=[],
    ...                        engine={"backend": "numpy", "precision": "float32", "device": "cpu"})
    >>> rec["checkpoint"] is None and rec["model"]
    'classic'
    """
    from .. import __version__

    def absolute(p):
        return None if p is None else str(Path(p).resolve())

    rec = {
        "samlab_version": __version__,
        "case": case,
        "image": absolute(image),
        "image_sha256": image_sha256,
        "model": model,
        "checkpoint": absolute(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "window": window,
        "prompts": prompts,
        "created": now_iso(),
        "engine": engine,
    }
    if base_checkpoint is not None:
        rec["base_checkpoint"] = absolute(base_checkpoint)
        rec["base_checkpoint_sha256"] = base_checkpoint_sha256
    if only_slice is not None:
        rec["only_slice"] = int(only_slice)
    if everything is not None:
        rec["everything"] = dict(everything)
    if labels is not None:
        rec["labels"] = Path(labels).name
        rec["labels_sha256"] = labels_sha256
    return rec


def write_provenance(path, record: dict) -> Path:
    """Write ``record`` as indented JSON, atomically.

    Examples
    --------
    >>> write_provenance(outdir / "c1.json", rec)   # doctest: +SKIP
    """
    path = Path(path)
    return write_json(path, record)


def read_provenance(path) -> dict:
    """Read and check a provenance file.

    Raises
    ------
    SamlabError
        Missing file, not JSON, or a required key missing.

    Examples
    --------
    >>> read_provenance("out/c1.json")["model"]   # doctest: +SKIP
    'classic'
    """
    path = Path(path)
    if not path.is_file():
        raise SamlabError(f"provenance file {path} does not exist: give the CASE.json written by samlab batch or segment")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SamlabError(f"{path.name} is not a provenance file (not valid JSON: {err}): give the CASE.json samlab wrote") from None
    if not isinstance(rec, dict):
        raise SamlabError(f"{path.name} is not a provenance file: give the CASE.json samlab wrote")
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise SamlabError(f"{path.name} is not a samlab provenance file (missing {', '.join(missing)}): "
                          "give the CASE.json samlab batch or segment wrote")
    return rec


def is_done(record_path, labels_path, expected: dict) -> bool:
    """Whether a finished output may be kept: same settings, label file unchanged.

    Parameters
    ----------
    record_path, labels_path : path
        ``CASE.json`` and ``CASE.nii.gz``.
    expected : dict
        At least the :data:`SAME_SETTINGS_KEYS` of the run about to happen.

    Returns
    -------
    bool
        False when either file is missing or unreadable, a setting differs,
        or the label file is not the one the record describes.

    Examples
    --------
    >>> is_done("out/c1.json", "out/c1.nii.gz", expected)   # doctest: +SKIP
    True
    """
    record_path, labels_path = Path(record_path), Path(labels_path)
    if not (record_path.is_file() and labels_path.is_file()):
        return False
    try:
        rec = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(rec, dict) or any(rec.get(k) != expected.get(k) for k in SAME_SETTINGS_KEYS):
        return False
    want = rec.get("labels_sha256")
    return bool(want) and want == file_sha256(labels_path)


def write_sidecar(out, *, image, model, window, entries, checkpoint=None, base_checkpoint=None,
                  only_slice: Optional[int] = None, case: Optional[str] = None,
                  everything: Optional[dict] = None) -> Path:
    """Write the provenance sidecar of a label image that was just written.

    The one call for every front end that saves labels (``samlab segment``,
    the widget's "Save labels"): hashes the image, checkpoints and ``out``,
    and writes :func:`sidecar_path` (``out`` with ``.json``) atomically.

    Parameters
    ----------
    out : path
        The label image, already written.
    image : path
        The source image file (or DICOM folder).
    model : SegmentationModel
        The engine that made the labels (after it ran: its backend is recorded).
    window : str or (level, width)
        What was asked for (``"auto"``, a preset, or a level/width pair).
    entries : sequence of PromptEntry or dict
        The prompts applied, in order ([] for SAMed).
    checkpoint, base_checkpoint : path, optional
    only_slice : int, optional
        SAMed run on one slice only.
    everything : dict, optional
        The settings of a "segment everything" run (no prompts):
        ``object_size``, ``object_size_um``, ``min_size``, ``tile_size``.
    case : str, optional
        Defaults to ``out``'s name without extension.

    Returns
    -------
    Path
        The sidecar.

    Examples
    --------
    >>> write_sidecar("tumour.nii.gz", image="ct.nrrd", model=model, window="auto",
    ...               entries=[PromptEntry(slice=20, box=(319, 337, 383, 393))])   # doctest: +SKIP
    PosixPath('tumour.json')
    """
    from .apply import window_request
    from .prompts import as_entry

    out = Path(out)
    record = build_provenance(
        case=case or split_ext(out)[0], image=image, image_sha256=file_sha256(image), model=model.family,
        checkpoint=checkpoint, checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None,
        window=window_request(window), prompts=[as_entry(e).to_dict() for e in entries], engine=engine_info(model),
        base_checkpoint=base_checkpoint, base_checkpoint_sha256=file_sha256(base_checkpoint) if base_checkpoint else None,
        only_slice=only_slice, labels=out, labels_sha256=file_sha256(out), everything=everything)
    return write_provenance(sidecar_path(out), record)


def remove_quietly(path) -> None:
    """Delete ``path`` if it exists (a stale record about to be replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
