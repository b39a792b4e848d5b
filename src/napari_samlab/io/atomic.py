"""Atomic file output: a failure never leaves a partial file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{ext}", dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes 0600 files; give the result the usual umask permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
