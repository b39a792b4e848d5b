"""Where napari-samlab's disk caches live and how their entries are named.

One definition for the writers (``models/accel.py`` writes exported
encoders, ``predict/cache.py`` writes embeddings) and for the code that
measures and clears the folders (``predict/cache.py``, ``samlab cache``):
a name the writers do not make is never deleted.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

#: file that marks a folder as a samlab cache (``{"kind": ..., "format": ...}``)
MARKER = ".samlab-cache.json"
CACHE_KINDS = ("embeddings", "encoders")

#: hex digits of an exported encoder's key (``<backend>-<key>``)
ENCODER_KEY_HEX = 24
_BACKEND_NAME = r"[a-z0-9][a-z0-9-]*"
#: a complete exported-encoder entry
ENCODER_ENTRY = re.compile(rf"{_BACKEND_NAME}-[0-9a-f]{{{ENCODER_KEY_HEX}}}")
#: suffix of the temporary folder an export is built in (``tempfile.mkdtemp(prefix=entry + ENCODER_TEMP_SUFFIX)``)
ENCODER_TEMP_SUFFIX = ".tmp"
ENCODER_TEMP = re.compile(ENCODER_ENTRY.pattern + re.escape(ENCODER_TEMP_SUFFIX) + r"\w+")

#: hex digits of an embedding key (SHA-1); entries are ``<key[:2]>/<key>.zarr``
EMBEDDING_KEY_HEX = 40
EMBEDDING_SHARD = re.compile(r"[0-9a-f]{2}")
#: ``<key>.zarr`` holds the embedding as computed; ``<key>.float16.zarr`` a float16-rounded one
EMBEDDING_ENTRY = re.compile(rf"[0-9a-f]{{{EMBEDDING_KEY_HEX}}}(\.float16)?\.zarr")
EMBEDDING_TEMP = re.compile(r"\.tmp-[0-9a-f]{32}\.zarr")
#: an entry being deleted (renamed out of place first)
DELETING = re.compile(r"\.del-[0-9a-f]{32}")


def cache_root() -> Path:
    """The folder that holds napari-samlab's disk caches.

    Returns
    -------
    Path
        ``$SAMLAB_CACHE_DIR`` when set, else ``~/.cache/napari-samlab``.

    Examples
    --------
    >>> isinstance(cache_root(), Path)
    True
    """
    env = os.environ.get("SAMLAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-samlab"


def default_embedding_cache_dir() -> Path:
    """Where embeddings are kept on disk when the user turns that on without naming a folder.

    Returns
    -------
    Path
        ``$SAMLAB_CACHE_DIR/embeddings``, else ``~/.cache/napari-samlab/embeddings``.

    Examples
    --------
    >>> default_embedding_cache_dir().name
    'embeddings'
    """
    return cache_root() / "embeddings"


def default_encoder_cache_dir() -> Path:
    """Where exported encoders are kept unless a folder is given.

    Returns
    -------
    Path
        ``$SAMLAB_CACHE_DIR/encoders``, else ``~/.cache/napari-samlab/encoders``.

    Examples
    --------
    >>> default_encoder_cache_dir().name
    'encoders'
    """
    return cache_root() / "encoders"


def encoder_entry_name(backend: str, key: str) -> str:
    """The folder name of one exported encoder.

    Parameters
    ----------
    backend : str
        e.g. ``"openvino"``.
    key : str
        :data:`ENCODER_KEY_HEX` hex digits.

    Returns
    -------
    str

    Examples
    --------
    >>> encoder_entry_name("openvino", "0" * 24)
    'openvino-000000000000000000000000'
    """
    name = f"{backend}-{key}"
    if not ENCODER_ENTRY.fullmatch(name):
        raise ValueError(f"{name!r} is not an encoder cache entry name")
    return name


def embedding_entry_path(root: Path, key: str, storage: str = "float32") -> Path:
    """Where the embedding of ``key`` is stored under ``root``.

    Parameters
    ----------
    root : Path
    key : str
    storage : {"float32", "float16"}
        ``"float32"``: the arrays as computed; ``"float16"``: rounded (the
        name says so, so that listings can count them without opening them).

    Examples
    --------
    >>> embedding_entry_path(Path("c"), "ab" + "0" * 38).as_posix()
    'c/ab/ab00000000000000000000000000000000000000.zarr'
    >>> embedding_entry_path(Path("c"), "ab" + "0" * 38, "float16").name[-13:]
    '.float16.zarr'
    """
    suffix = ".float16.zarr" if storage == "float16" else ".zarr"
    return Path(root) / key[:2] / f"{key}{suffix}"


def embedding_entry_storage(path: Path) -> str:
    """``"float16"`` or ``"float32"``: how an entry made by :func:`embedding_entry_path` stores its arrays."""
    return "float16" if Path(path).name.endswith(".float16.zarr") else "float32"
