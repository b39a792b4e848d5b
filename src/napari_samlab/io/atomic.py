"""Atomic file output: a failure never leaves a partial file behind."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path

from ..errors import SamlabError


def split_ext(path) -> tuple:
    """``("scan", ".nii.gz")`` for ``scan.nii.gz``; double extensions kept."""
    name = Path(path).name
    lower = name.lower()
    for ext in (".nii.gz", ".seg.nrrd", ".ome.tif", ".ome.tiff"):
        if lower.endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, ext = os.path.splitext(name)
    return stem, ext


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path``; move it into place on success.

    The temporary file keeps ``path``'s extension (writers pick the format
    from it) and lives in the same folder, so the final ``os.replace`` is
    atomic.  On any exception the temporary file is removed and ``path`` is
    left as it was.

    Examples
    --------
    >>> with atomic_output("labels.nii.gz") as tmp:   # doctest: +SKIP
    ...     SimpleITK.WriteImage(img, str(tmp))
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    _, ext = split_ext(path)
    tmp, mode = _new_temp(folder, f".{path.name}.", f".part{ext}")
    try:
        yield tmp
        # writers may recreate the file: give the result the mode a new file
        # gets here (umask applied), read per file, never by changing the
        # process-wide umask (that races with other threads)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _new_temp(folder: Path, prefix: str, suffix: str) -> tuple:
    """Create an empty, uniquely named file; returns ``(path, mode)`` (mode: 0o666 less the umask)."""
    for _ in range(100):
        tmp = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp, mode
    raise FileExistsError(f"cannot create a temporary file in {folder}")


def write_json(path, doc) -> Path:
    """Write ``doc`` as indented JSON to ``path`` atomically (prompts files, provenance records).

    Raises
    ------
    SamlabError
        The file cannot be written (the message names it and why).

    Examples
    --------
    >>> write_json("case01.json", {"case": "case01"})   # doctest: +SKIP
    PosixPath('case01.json')
    """
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise SamlabError(f"could not write {path.name}: {err.strerror or err}") from None
    return path
