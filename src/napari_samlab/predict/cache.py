"""Embedding caches: an in-memory LRU bounded in MB and an on-disk zarr store.

Keys are hex digests made by :func:`embedding_key` from the slice's pixels,
the window and the model fingerprint, so a cache entry can never be used
for another slice, window or set of weights.

Memory entries keep the encoder's float32 arrays, so a memory hit gives
exactly the masks a fresh encode gives.  Disk entries store floating arrays
as float16 by default (half the space; :class:`DiskCache` ``dtype``), so a
*disk* hit is float16-rounded: masks can differ from a fresh encode in a
few pixels at the object border.  Pass ``dtype="float32"`` for bit-exact
disk hits.  Every disk entry carries a SHA-1 of its stored bytes; an
unreadable, corrupt or mismatched entry is deleted and recomputed, never
used.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

FORMAT_VERSION = 1


def embedding_key(image: np.ndarray, window_key: str, model_fingerprint: str) -> str:
    """Cache key of one slice: SHA-1 of pixels, shape, dtype, window and model.

    Hashing a 512×512 int16 slice takes about a millisecond.

    Parameters
    ----------
    image : ndarray
        The slice as the user gave it (before windowing).
    window_key : str
        :meth:`napari_samlab.predict.windowing.Window.key` or ``"none"``.
    model_fingerprint : str

    Returns
    -------
    str
        40 hex digits.

    Examples
    --------
    >>> embedding_key(np.zeros((2, 2), np.uint8), "none", "m")[:8]
    '4fcb6ac5'
    """
    h = hashlib.sha1()
    arr = np.ascontiguousarray(image)
    h.update(f"{arr.shape}|{arr.dtype.str}|{window_key}|{model_fingerprint}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def embedding_nbytes(emb: dict) -> int:
    """Bytes held by the arrays of an embedding dict."""
    return int(sum(getattr(v, "nbytes", 0) for v in emb.values()))


class MemoryCache:
    """Least-recently-used embeddings, bounded by total size in MB.

    The most recent entry is always kept, even if it alone exceeds the bound.

    Parameters
    ----------
    max_mb : float

    Examples
    --------
    >>> c = MemoryCache(1)
    >>> c.put("a", {"features": np.zeros(100, np.float32)})
    >>> "a" in c, c.nbytes
    (True, 400)
    """

    def __init__(self, max_mb: float = 1024):
        self.max_bytes = float(max_mb) * 2**20
        self._d: "OrderedDict[str, dict]" = OrderedDict()
        self._sizes: dict = {}
        self.nbytes = 0

    def __contains__(self, key) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str) -> Optional[dict]:
        emb = self._d.get(key)
        if emb is not None:
            self._d.move_to_end(key)
        return emb

    def put(self, key: str, emb: dict) -> None:
        if key in self._d:
            self.nbytes -= self._sizes[key]
        self._d[key] = emb
        self._d.move_to_end(key)
        self._sizes[key] = embedding_nbytes(emb)
        self.nbytes += self._sizes[key]
        while len(self._d) > 1 and self.nbytes > self.max_bytes:
            old, _ = self._d.popitem(last=False)
            self.nbytes -= self._sizes.pop(old)

    def clear(self) -> None:
        self._d.clear()
        self._sizes.clear()
        self.nbytes = 0


def _digest(arrays: dict) -> str:
    h = hashlib.sha1()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.shape}|{a.dtype.str}|".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


class DiskCache:
    """Embeddings in a folder of zarr groups, one per key.

    Layout: ``root/<key[:2]>/<key>.zarr`` with one array per embedding
    entry and attributes ``format``, ``key``, ``dtypes`` (the in-memory
    dtypes to restore) and ``sha1`` (of the stored arrays).  Writes go to a
    temporary folder that is renamed into place, so readers never see half
    an entry.

    Parameters
    ----------
    root : path
    dtype : {"float16", "float32"}
        Storage type of floating arrays (see the module docstring).

    Examples
    --------
    >>> cache = DiskCache(tmp_path)                       # doctest: +SKIP
    >>> cache.put(key, {"features": feats})               # doctest: +SKIP
    >>> cache.get(key)["features"].dtype                  # doctest: +SKIP
    dtype('float32')
    """

    def __init__(self, root, dtype: str = "float16"):
        self.root = Path(root)
        self.dtype = np.dtype(dtype)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rejected = 0  # corrupt or mismatched entries thrown away

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.zarr"

    def get(self, key: str) -> Optional[dict]:
        """The embedding stored under ``key`` (float32 restored), or None."""
        import zarr

        p = self.path(key)
        if not p.exists():
            return None
        try:
            g = zarr.open_group(str(p), mode="r")
            attrs = dict(g.attrs)
            if attrs.get("format") != FORMAT_VERSION or attrs.get("key") != key:
                raise ValueError("mismatched entry")
            dtypes = attrs["dtypes"]
            stored = {name: np.asarray(g[name][...]) for name in dtypes}
            if _digest(stored) != attrs["sha1"]:
                raise ValueError("checksum mismatch")
            return {name: a.astype(dtypes[name], copy=False) for name, a in stored.items()}
        except Exception:
            # corrupt, truncated, foreign: never use it, make room for a fresh one
            self.rejected += 1
            shutil.rmtree(p, ignore_errors=True)
            return None

    def put(self, key: str, emb: dict) -> None:
        """Store ``emb`` under ``key`` (best effort: a full disk only skips caching)."""
        import zarr

        p = self.path(key)
        stored, dtypes = {}, {}
        for name, v in emb.items():
            a = np.asarray(v)
            dtypes[name] = a.dtype.str
            if np.issubdtype(a.dtype, np.floating) and a.dtype.itemsize > self.dtype.itemsize:
                a = a.astype(self.dtype)
            stored[name] = np.ascontiguousarray(a)
        tmp = p.parent / f".tmp-{uuid.uuid4().hex}.zarr"
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            g = zarr.open_group(str(tmp), mode="w")
            for name, a in stored.items():
                arr = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.shape if a.ndim else None)
                arr[...] = a
            g.attrs.update({"format": FORMAT_VERSION, "key": key, "dtypes": dtypes, "sha1": _digest(stored)})
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
            os.replace(tmp, p)
        except OSError:
            pass
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
