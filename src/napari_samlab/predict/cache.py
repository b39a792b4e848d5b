"""Embedding caches: an in-memory LRU bounded in MB and an on-disk zarr store.

Keys are hex digests made by :func:`embedding_key` from the slice's pixels,
the window and the engine's identity (package version, family, weights,
checkpoint SHA-256, the encoder backend actually used and its precision,
device, input size, storage type: see
:meth:`napari_samlab.predict.predictor.SlicePredictor.engine_key`), so an
entry is never used for another slice, window, set of weights or backend.

Both caches store what the encoder computed, bit for bit, by default
(float32).  Reduced precision is an explicit option: :class:`DiskCache`
``dtype="float16"`` (``samlab segment --cache-dtype float16``) halves the
disk use and rounds the values; such entries are named ``<key>.float16.zarr``,
their key says so, ``samlab cache`` counts them apart, and the predictor
then rounds fresh encodes the same way, so a slice gives the same masks
fresh or from the cache.  Every disk entry carries a SHA-1 of its stored
bytes and its storage type; an unreadable, corrupt or mismatched entry is
deleted and recomputed, never used.  :class:`MemoryCache` can hold float16
too (``dtype``, opt-in).

A cache folder given by the user is used only if it is empty, new, or
already a samlab embedding cache: anything else is refused before a byte is
written.

Disk caches on this machine (:func:`default_cache_dirs`): the embeddings
(``$SAMLAB_CACHE_DIR/embeddings``, else
``~/.cache/napari-samlab/embeddings``) and the exported encoders of
:mod:`napari_samlab.models.accel` (``.../encoders``).  :func:`cache_usage`
reports their size and :func:`clear_cache_folder` empties them; both first
check that the folder has the cache's own layout, and clearing removes only
complete entries, never anything else in the folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..base.paths import (
    CACHE_KINDS, DELETING, EMBEDDING_ENTRY, EMBEDDING_SHARD, EMBEDDING_TEMP, ENCODER_ENTRY, ENCODER_TEMP, MARKER,
    default_embedding_cache_dir, default_encoder_cache_dir, embedding_entry_path, embedding_entry_storage,
)
from ..errors import InputError, SamlabError

log = logging.getLogger(__name__)

#: 2: float32 by default, the storage type in the entry's name, attributes and key
FORMAT_VERSION = 2
#: default in-memory bound: 128 ViT-B slices (4 MB each in float32).  With a
#: ViT-B loaded (about 3.1 GB resident with its OpenVINO encoder running)
#: this keeps a 300-slice 512x512 CT under 4 GB (benchmarks/bench_memory.py).
DEFAULT_MEMORY_MB = 512.0
#: a writer's temporary folder untouched this long is a leftover of a killed process
STALE_TEMP_SECONDS = 6 * 3600


def embedding_key(image: np.ndarray, window_key: str, model_fingerprint: str) -> str:
    """Cache key of one slice: SHA-1 of pixels, shape, dtype, window and model.

    Hashing a 512×512 int16 slice takes about a millisecond.

    Parameters
    ----------
    image : ndarray
        The slice as the user gave it (before windowing).
    window_key : str
        :meth:`napari_samlab.base.windowing.Window.key` or ``"none"``.
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


def _storage_dtype(dtype) -> np.dtype:
    """``"float32"``/``"float16"`` as a numpy dtype; anything else is refused."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise SamlabError(f"embedding storage type {dtype!r} is not supported: use 'float32' (exact) or 'float16' (half the memory)")
    return dt


def _check_mb(max_mb) -> float:
    try:
        mb = float(max_mb)
    except (TypeError, ValueError):
        mb = float("nan")
    if not np.isfinite(mb) or mb < 0:
        raise SamlabError(f"memory cache bound {max_mb!r} MB is not valid: give a size of 0 MB or more")
    return mb


class MemoryCache:
    """Least-recently-used embeddings, bounded by total size in MB.

    The most recent entry is always kept, even if it alone exceeds the bound.
    With ``dtype="float32"`` (the default) entries are the encoder's own
    arrays and :meth:`get` returns them as they were put, so a hit is exact.
    With ``dtype="float16"`` floating arrays are stored at half size and
    :meth:`get` restores their original type (float16-rounded values: masks
    can differ from a fresh encode in a few pixels at the object border).
    Sizes are counted as stored.  The bound and the type can be changed at
    any time; the cache has its own lock, so that is safe while another
    thread uses it.

    Parameters
    ----------
    max_mb : float
        Bound in MB (2**20 bytes), 0 or more.
    dtype : {"float32", "float16"}
        Storage type of floating arrays.

    Examples
    --------
    >>> c = MemoryCache(1)
    >>> c.put("a", {"features": np.zeros(100, np.float32)})
    >>> "a" in c, c.nbytes
    (True, 400)
    >>> c.dtype = "float16"
    >>> c.nbytes, c.get("a")["features"].dtype
    (200, dtype('float32'))
    """

    def __init__(self, max_mb: float = DEFAULT_MEMORY_MB, dtype: str = "float32"):
        self._max_mb = _check_mb(max_mb)
        self._dtype = _storage_dtype(dtype)
        # key -> (stored arrays, {name: original dtype of the arrays stored smaller})
        self._d: "OrderedDict[str, tuple]" = OrderedDict()
        self._sizes: dict = {}
        self.nbytes = 0
        self._lock = threading.RLock()

    def __contains__(self, key) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    @property
    def max_mb(self) -> float:
        """The bound in MB; setting it evicts least recently used entries at once."""
        return self._max_mb

    @max_mb.setter
    def max_mb(self, value: float) -> None:
        with self._lock:
            self._max_mb = _check_mb(value)
            self._shrink()

    @property
    def max_bytes(self) -> float:
        return self._max_mb * 2**20

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float16"``.

        Switching to float16 converts the entries held (memory is freed at
        once); switching to float32 drops the entries that were stored as
        float16, so every later hit is exact again.
        """
        return self._dtype.name

    @dtype.setter
    def dtype(self, value: str) -> None:
        dt = _storage_dtype(value)
        with self._lock:
            if dt == self._dtype:
                return
            self._dtype = dt
            for key in list(self._d):
                stored, restore = self._d[key]
                if any(stored[n].dtype.itemsize < dt.itemsize for n in restore):
                    self._drop(key)  # rounded values would pass for exact ones
                    continue
                stored, more = self._reduce(stored)
                if more:
                    self._set(key, stored, {**more, **restore})
            self._shrink()

    def _reduce(self, emb: dict) -> tuple:
        """``emb`` with floating arrays wider than the storage type narrowed."""
        stored, restore = {}, {}
        for name, v in emb.items():
            if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating) and v.dtype.itemsize > self._dtype.itemsize:
                restore[name] = v.dtype.str
                v = v.astype(self._dtype)
            stored[name] = v
        return stored, restore

    def _set(self, key: str, stored: dict, restore: dict) -> None:
        if key in self._d:
            self.nbytes -= self._sizes[key]
        self._d[key] = (stored, restore)
        self._sizes[key] = embedding_nbytes(stored)
        self.nbytes += self._sizes[key]

    def _drop(self, key: str) -> None:
        del self._d[key]
        self.nbytes -= self._sizes.pop(key)

    def _shrink(self) -> None:
        while len(self._d) > 1 and self.nbytes > self.max_bytes:
            old, _ = self._d.popitem(last=False)
            self.nbytes -= self._sizes.pop(old)

    def get(self, key: str) -> Optional[dict]:
        """The embedding stored under ``key`` in its original types, or None."""
        with self._lock:
            item = self._d.get(key)
            if item is None:
                return None
            self._d.move_to_end(key)
        stored, restore = item
        if not restore:
            return stored
        return {name: v.astype(restore[name]) if name in restore else v for name, v in stored.items()}

    def put(self, key: str, emb: dict) -> None:
        """Store ``emb`` as the most recent entry and evict beyond the bound."""
        with self._lock:
            stored, restore = self._reduce(emb)
            self._set(key, stored, restore)
            self._d.move_to_end(key)
            self._shrink()

    def clear(self) -> None:
        with self._lock:
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

    Layout: ``root/<key[:2]>/<key>.zarr`` (``<key>.float16.zarr`` for
    float16 storage) with one array per embedding entry, and the marker
    file ``root/.samlab-cache.json``; attributes ``format``, ``key``,
    ``storage``, ``dtypes`` (the in-memory dtypes) and ``sha1`` (of the
    stored arrays).  Writes go to a temporary folder that is renamed into
    place, so readers never see half an entry.

    Parameters
    ----------
    root : path
        Created if missing.  An existing folder must be empty or a samlab
        embedding cache.
    dtype : {"float32", "float16"}
        Storage type of floating arrays: ``"float32"`` (default) keeps them
        exactly; ``"float16"`` rounds them (half the disk).

    Raises
    ------
    SamlabError
        ``root`` is a file, not writable, or a non-empty folder that is not
        a samlab embedding cache (nothing is written there).

    Examples
    --------
    >>> cache = DiskCache(tmp_path)                       # doctest: +SKIP
    >>> cache.put(key, {"features": feats})               # doctest: +SKIP
    >>> cache.get(key)["features"].dtype                  # doctest: +SKIP
    dtype('float32')
    """

    def __init__(self, root, dtype: str = "float32"):
        self.root = Path(root).expanduser()
        self.dtype = _storage_dtype(dtype)
        _checked_folder(self.root, "embeddings", owned=True)  # refuses foreign folders before writing
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SamlabError(f"cannot use {self.root} for the embedding cache ({err.strerror or err}): "
                              "choose a folder you can write to") from None
        self.rejected = 0  # corrupt or mismatched entries thrown away
        marker = self.root / MARKER
        if not marker.exists():
            try:  # lets cache_usage/clear_cache_folder recognise the folder
                marker.write_text(json.dumps({"kind": "embeddings", "format": FORMAT_VERSION}))
            except OSError:
                pass

    @property
    def storage(self) -> str:
        """``"float32"`` or ``"float16"``."""
        return self.dtype.name

    def usage(self) -> "CacheUsage":
        """Size of this cache on disk (see :func:`cache_usage`)."""
        return cache_usage(self.root, "embeddings")

    def clear(self) -> "CacheUsage":
        """Delete every complete entry; returns what was freed (see :func:`clear_cache_folder`)."""
        return clear_cache_folder(self.root, "embeddings")

    def path(self, key: str) -> Path:
        return embedding_entry_path(self.root, key, self.storage)

    def get(self, key: str) -> Optional[dict]:
        """The embedding stored under ``key``, as stored, or None.

        float32 storage gives back exactly what was put; float16 storage
        gives the float16-rounded values in the original (wider) dtype.
        """
        import zarr

        p = self.path(key)
        if not p.exists():
            return None
        try:
            g = zarr.open_group(str(p), mode="r")
            attrs = dict(g.attrs)
            if attrs.get("format") != FORMAT_VERSION or attrs.get("key") != key or attrs.get("storage") != self.storage:
                raise ValueError("mismatched entry")
            dtypes = attrs["dtypes"]
            stored = {name: np.asarray(g[name][...]) for name in dtypes}
            if _digest(stored) != attrs["sha1"]:
                raise ValueError("checksum mismatch")
            return {name: a.astype(dtypes[name], copy=False) for name, a in stored.items()}
        except Exception as err:  # noqa: BLE001 - a damaged entry may raise anything from zarr's codecs
            # corrupt, truncated, foreign: never use it, make room for a fresh one
            log.info("embedding cache entry %s rejected (%s): recomputing", p, err)
            log.debug("reading %s failed", p, exc_info=True)
            self.rejected += 1
            shutil.rmtree(p, ignore_errors=True)
            return None

    def stored_form(self, emb: dict) -> dict:
        """``emb`` as a later :meth:`get` will return it (rounded through float16 in that mode)."""
        if self.storage == "float32":
            return emb
        return {name: v.astype(self.dtype).astype(v.dtype) if _narrowed(v, self.dtype) else v for name, v in emb.items()}

    def put(self, key: str, emb: dict) -> None:
        """Store ``emb`` under ``key`` (best effort: a full disk only skips caching)."""
        import zarr

        p = self.path(key)
        stored, dtypes = {}, {}
        for name, v in emb.items():
            a = np.asarray(v)
            dtypes[name] = a.dtype.str
            if _narrowed(a, self.dtype):
                a = a.astype(self.dtype)
            stored[name] = np.ascontiguousarray(a)
        tmp = p.parent / f".tmp-{uuid.uuid4().hex}.zarr"
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            g = zarr.open_group(str(tmp), mode="w")
            for name, a in stored.items():
                arr = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.shape if a.ndim else None)
                arr[...] = a
            g.attrs.update({"format": FORMAT_VERSION, "key": key, "storage": self.storage, "dtypes": dtypes,
                            "sha1": _digest(stored)})
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
            os.replace(tmp, p)
        except OSError as err:
            log.info("embedding not cached on disk (%s)", err)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _narrowed(a, dtype: np.dtype) -> bool:
    """Whether storing ``a`` as ``dtype`` rounds it (a floating array wider than the storage type)."""
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating) and a.dtype.itemsize > dtype.itemsize


# ----------------------------------------------------------------------
# the disk caches as folders: where, how big, emptying them
def default_cache_dirs(embeddings=None) -> Dict[str, Path]:
    """The disk caches by kind: ``{"embeddings": ..., "encoders": ...}``.

    Parameters
    ----------
    embeddings : path, optional
        The embedding cache folder in use, if not the default one.

    Returns
    -------
    dict of str to Path
        The encoder folder is the one :mod:`napari_samlab.models.accel`
        uses (computed here without importing torch).

    Examples
    --------
    >>> sorted(default_cache_dirs())
    ['embeddings', 'encoders']
    """
    emb = Path(embeddings).expanduser() if embeddings is not None else default_embedding_cache_dir()
    return {"embeddings": emb, "encoders": default_encoder_cache_dir()}


@dataclass
class CacheUsage:
    """Size of one disk cache folder.

    Attributes
    ----------
    folder : Path
    kind : str
        ``"embeddings"`` or ``"encoders"``.
    entries : int
        Complete entries (one per slice embedding, or per exported encoder).
    nbytes : int
        Bytes of the entries and of unfinished writes.
    exists : bool
        False when the folder has not been created yet.
    """

    folder: Path
    kind: str
    entries: int = 0
    nbytes: int = 0
    exists: bool = True
    by_storage: dict = field(default_factory=dict)

    def describe(self, verb: str = "") -> str:
        """One line, e.g. ``embeddings: /x (3 entries, 12.0 MB)``; float16 (rounded) entries are counted apart."""
        if not self.exists:
            return f"{self.kind}: {self.folder} (empty, not created yet)"
        n = f"{self.entries} entr{'y' if self.entries == 1 else 'ies'}"
        half = self.by_storage.get("float16", 0)
        if half:
            n += f" ({half} stored as float16, rounded)"
        return f"{self.kind}: {self.folder} ({n}, {format_bytes(self.nbytes)}{' ' + verb if verb else ''})"


def format_bytes(n: float) -> str:
    """Human-readable size in binary units (MB = 2**20 bytes, as the memory bound).

    Examples
    --------
    >>> format_bytes(0), format_bytes(1536), format_bytes(3 * 2**30)
    ('0 B', '1.5 kB', '3.0 GB')
    """
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


# names a cache's own writers use (base/paths.py); nothing else in a cache folder is ever deleted


def _is_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _tree_bytes(p: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(p):  # does not follow links
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def _newest_mtime(p: Path) -> float:
    newest = 0.0
    for dirpath, _dirs, files in os.walk(p):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
            try:
                newest = max(newest, os.lstat(name).st_mtime)
            except OSError:
                pass
    return newest


def _scan(folder: Path, kind: str) -> tuple:
    """``(entries, temps, foreign)`` of a cache folder, by the names its writers use."""
    entries, temps, foreign = [], [], []
    if kind == "embeddings":
        for child in sorted(folder.iterdir()):
            if child.name == MARKER:
                continue
            if not (EMBEDDING_SHARD.fullmatch(child.name) and _is_dir(child)):
                foreign.append(child)
                continue
            for item in sorted(child.iterdir()):
                if _is_dir(item) and EMBEDDING_ENTRY.fullmatch(item.name) and item.name.startswith(child.name):
                    entries.append(item)
                elif _is_dir(item) and (EMBEDDING_TEMP.fullmatch(item.name) or DELETING.fullmatch(item.name)):
                    temps.append(item)
                else:
                    foreign.append(item)
    else:
        for child in sorted(folder.iterdir()):
            if child.name == MARKER:
                continue
            if _is_dir(child) and ENCODER_ENTRY.fullmatch(child.name):
                entries.append(child)
            elif _is_dir(child) and (ENCODER_TEMP.fullmatch(child.name) or DELETING.fullmatch(child.name)):
                temps.append(child)
            else:
                foreign.append(child)
    return entries, temps, foreign


def _checked_folder(folder, kind: str, owned: bool = False):
    """``(folder, scan)`` after making sure it is a samlab cache of ``kind``; scan is None when absent.

    ``owned``: the caller is about to write there (a cache folder the user
    chose): the message says to give a new or empty folder.
    """
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}: use one of {CACHE_KINDS}")
    folder = Path(folder).expanduser()
    what = "embedding" if kind == "embeddings" else "exported-encoder"
    if not folder.exists():
        return folder, None
    if not folder.is_dir():
        raise SamlabError(f"{folder} is a file, not a napari-samlab {what} cache folder: name the cache folder")
    marker_kind = None
    try:
        marker_kind = json.loads((folder / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        pass
    if marker_kind not in (None, kind):
        raise SamlabError(f"{folder} is the napari-samlab {marker_kind} cache, not the {kind} cache: name the {kind} folder")
    try:
        scan = _scan(folder, kind)
    except OSError as err:
        raise SamlabError(f"cannot read the cache folder {folder} ({err.strerror or err}): check its permissions") from None
    if scan[2] and marker_kind is None:
        # not made by samlab (or by a version without marker but then no foreign items): hands off
        if owned:
            raise InputError(f"{folder} is not empty and not a napari-samlab {what} cache (it holds {scan[2][0].name!r}); "
                             "nothing was written there: give a new or empty folder to {cache_dir}", field="cache_dir")
        raise SamlabError(f"{folder} is not a napari-samlab {what} cache (it holds {scan[2][0].name!r}): "
                          f"name the cache folder itself, e.g. {default_cache_dirs()[kind]}")
    return folder, scan


def check_cache_folder(folder, kind: str = "embeddings") -> Path:
    """Refuse a folder a cache must not write to (a file, unreadable, or non-empty and not a samlab cache of ``kind``).

    Returns
    -------
    Path
        The folder (it may not exist yet).

    Raises
    ------
    SamlabError
        As :class:`DiskCache` would, before anything is written.

    Examples
    --------
    >>> check_cache_folder(default_embedding_cache_dir()).name   # doctest: +SKIP
    'embeddings'
    """
    return _checked_folder(folder, kind, owned=True)[0]


def cache_usage(folder, kind: str = "embeddings") -> CacheUsage:
    """How many entries a disk cache holds and how many bytes they take.

    Parameters
    ----------
    folder : path
        The cache folder (e.g. from :func:`default_cache_dirs`).
    kind : {"embeddings", "encoders"}
        The embedding cache of :class:`DiskCache`, or the exported-encoder
        cache of :mod:`napari_samlab.models.accel`.

    Returns
    -------
    CacheUsage
        All zero with ``exists=False`` for a folder not created yet.

    Raises
    ------
    SamlabError
        ``folder`` is a file, unreadable, or not a samlab cache of that kind
        (it holds files the cache never writes and has no samlab marker).

    Examples
    --------
    >>> cache_usage(default_embedding_cache_dir()).kind   # doctest: +SKIP
    'embeddings'
    """
    folder, scan = _checked_folder(folder, kind)
    if scan is None:
        return CacheUsage(folder, kind, exists=False)
    entries, temps, _ = scan
    by_storage = {}
    if kind == "embeddings":
        for p in entries:
            st = embedding_entry_storage(p)
            by_storage[st] = by_storage.get(st, 0) + 1
    return CacheUsage(folder, kind, len(entries), sum(_tree_bytes(p) for p in entries + temps), by_storage=by_storage)


def clear_cache_folder(folder, kind: str = "embeddings", stale_after: float = STALE_TEMP_SECONDS) -> CacheUsage:
    """Delete the complete entries of a disk cache; returns what was freed.

    Only names the cache's own writers make are touched; any other file
    in the folder is left alone, and a folder that is not a samlab cache is
    refused.  Each entry is first renamed out of its place (atomic), so a
    reader sees it either whole or absent (a missing entry is recomputed).
    Temporary folders of writers are left alone unless untouched for
    ``stale_after`` seconds (a writer that was killed): a running export
    or embedding write is never disturbed.

    Parameters
    ----------
    folder : path
    kind : {"embeddings", "encoders"}
    stale_after : float
        Age in seconds after which an unfinished write counts as abandoned.

    Returns
    -------
    CacheUsage
        ``entries`` and ``nbytes`` removed.

    Raises
    ------
    SamlabError
        As :func:`cache_usage`.

    Examples
    --------
    >>> freed = clear_cache_folder(default_embedding_cache_dir())   # doctest: +SKIP
    >>> freed.describe("freed")                                      # doctest: +SKIP
    'embeddings: /home/me/.cache/napari-samlab/embeddings (3 entries, 12.0 MB freed)'
    """
    folder, scan = _checked_folder(folder, kind)
    if scan is None:
        return CacheUsage(folder, kind, exists=False)
    entries, temps, _ = scan
    now = time.time()
    freed = CacheUsage(folder, kind)
    for path in entries + temps:
        is_entry = path in entries
        if not is_entry and not DELETING.fullmatch(path.name) and now - _newest_mtime(path) < stale_after:
            continue  # a live writer's temporary folder
        size = _tree_bytes(path)
        gone = path.parent / f".del-{uuid.uuid4().hex}"
        try:
            os.replace(path, gone)
        except OSError:
            continue  # removed or replaced meanwhile by another process
        shutil.rmtree(gone, ignore_errors=True)
        freed.nbytes += size - (_tree_bytes(gone) if gone.exists() else 0)
        freed.entries += int(is_entry)
    return freed
