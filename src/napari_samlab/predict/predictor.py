"""SlicePredictor: embed a slice once, answer many prompts cheaply."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import SamlabError
from ..models.base import Prediction, Prompt, SegmentationModel
from .cache import DEFAULT_MEMORY_MB, DiskCache, MemoryCache, _check_mb, _storage_dtype, embedding_key
from .windowing import Window, apply_window, resolve_window


_KEEP = object()  # "leave this setting as it is" in SlicePredictor.configure


class SlicePredictor:
    """``set_image`` then ``predict``, like segment_anything's SamPredictor.

    Embeddings are cached in memory (least recently used evicted beyond
    ``memory_mb``; float32 by default, so a memory hit is exact) and, with
    ``cache_dir``, on disk (zarr; float16 by default, so a disk hit is
    float16-rounded: see :mod:`napari_samlab.predict.cache`).  Keys are the
    SHA-1 of the slice's pixels, the window and the model fingerprint.

    Parameters
    ----------
    model : SegmentationModel
        From :func:`napari_samlab.load_model`.
    memory_mb : float
        Bound of the in-memory embedding cache in MB (2**20 bytes); default
        512 (128 ViT-B slices in float32, 256 in float16).
    cache_dir : path, optional
        On-disk embedding cache that survives restarts
        (:func:`napari_samlab.predict.cache.default_embedding_cache_dir` is
        the usual place).
    disk_dtype : {"float16", "float32"}
        Storage type of the on-disk cache.
    memory_dtype : {"float32", "float16"}
        Storage type of the in-memory cache.  ``"float16"`` holds twice as
        many slices in the same memory; every slice is then decoded from
        float16-rounded features (fresh ones too, so a slice gives the same
        mask on every visit), which can move a few border pixels compared
        with float32.

    Attributes
    ----------
    encoder_calls : int
        How often the image encoder really ran.
    memory_hits, disk_hits : int
        Embeddings served from each cache.
    last_set_image_ms : float
        Wall time of the last :meth:`set_image`.

    Examples
    --------
    >>> predictor = SlicePredictor(load_model(family="classic"))   # doctest: +SKIP
    >>> predictor.set_image(volume[30], window="auto")              # doctest: +SKIP
    >>> mask, score = predictor.predict(box=(10, 20, 60, 80))        # doctest: +SKIP
    >>> predictor.configure(memory_mb=512, memory_dtype="float16")   # doctest: +SKIP
    """

    def __init__(self, model: SegmentationModel, memory_mb: float = DEFAULT_MEMORY_MB, cache_dir=None,
                 disk_dtype: str = "float16", memory_dtype: str = "float32"):
        self.model = model
        self._memory = MemoryCache(memory_mb, memory_dtype)
        self._disk: Optional[DiskCache] = None
        self._disk_dtype = _storage_dtype(disk_dtype).name
        self.configure(cache_dir=cache_dir, disk_dtype=disk_dtype)
        self._embedding: Optional[dict] = None
        self._shape: Optional[tuple] = None
        self.window: Optional[Window] = None
        self.key: Optional[str] = None
        self.encoder_calls = 0
        self.memory_hits = 0
        self.disk_hits = 0
        self.last_set_image_ms = 0.0

    # -- cache settings ------------------------------------------------------
    def configure(self, memory_mb=None, memory_dtype=None, cache_dir=_KEEP, disk_dtype=None) -> None:
        """Change cache settings; the model, the current slice and (where still valid) cached embeddings stay.

        Safe to call while another thread runs :meth:`set_image`.

        Parameters
        ----------
        memory_mb : float, optional
            New in-memory bound; least recently used entries beyond it are
            dropped at once.
        memory_dtype : {"float32", "float16"}, optional
            Switching to float16 converts the held entries (memory is freed
            at once); switching back drops the float16 ones, so later hits
            are exact again.  The current slice keeps its embedding until
            the next :meth:`set_image`.
        cache_dir : path or None, optional
            On-disk cache folder; None turns the disk cache off.  Leave it
            out to keep the current one.
        disk_dtype : {"float16", "float32"}, optional

        Raises
        ------
        SamlabError
            Invalid bound or type, or a cache folder that cannot be created.

        Examples
        --------
        >>> predictor.configure(memory_mb=256)                       # doctest: +SKIP
        >>> predictor.configure(cache_dir=default_embedding_cache_dir())   # doctest: +SKIP
        """
        if memory_mb is not None:
            _check_mb(memory_mb)
        if memory_dtype is not None:
            _storage_dtype(memory_dtype)
        disk_dtype = self._disk_dtype if disk_dtype is None else _storage_dtype(disk_dtype).name
        disk = self._disk
        if cache_dir is not _KEEP or disk_dtype != self._disk_dtype:
            target = self.cache_dir if cache_dir is _KEEP else cache_dir
            if target is None:
                disk = None
            elif disk is None or Path(target).expanduser() != disk.root or disk_dtype != disk.dtype.name:
                try:
                    disk = DiskCache(target, disk_dtype)
                except OSError as err:
                    raise SamlabError(f"cannot use {target} for the embedding cache ({err.strerror or err}): "
                                      "choose a folder you can write to") from None
        # everything checked: apply
        if memory_dtype is not None:
            self._memory.dtype = memory_dtype
        if memory_mb is not None:
            self._memory.max_mb = memory_mb
        self._disk, self._disk_dtype = disk, disk_dtype

    @property
    def memory_mb(self) -> float:
        """Bound of the in-memory cache in MB (settable)."""
        return self._memory.max_mb

    @memory_mb.setter
    def memory_mb(self, value: float) -> None:
        self.configure(memory_mb=value)

    @property
    def memory_dtype(self) -> str:
        """``"float32"`` or ``"float16"`` (settable, see :meth:`configure`)."""
        return self._memory.dtype

    @memory_dtype.setter
    def memory_dtype(self, value: str) -> None:
        self.configure(memory_dtype=value)

    @property
    def memory_nbytes(self) -> int:
        """Bytes the in-memory cache holds, as stored."""
        return int(self._memory.nbytes)

    @property
    def memory_entries(self) -> int:
        """Slices whose embedding the in-memory cache holds."""
        return len(self._memory)

    @property
    def cache_dir(self) -> Optional[Path]:
        """The on-disk cache folder, or None when embeddings stay in memory only."""
        disk = self._disk
        return disk.root if disk is not None else None

    @property
    def disk_dtype(self) -> str:
        return self._disk_dtype

    def disk_usage(self):
        """Size of the on-disk cache.

        Returns
        -------
        CacheUsage or None
            See :func:`napari_samlab.predict.cache.cache_usage`; None when
            there is no disk cache.

        Examples
        --------
        >>> predictor.disk_usage().describe()     # doctest: +SKIP
        'embeddings: /tmp/emb (3 entries, 6.0 MB)'
        """
        disk = self._disk
        return disk.usage() if disk is not None else None

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def embedding(self) -> Optional[dict]:
        """The current slice's embedding (what ``model.encode`` returned)."""
        return self._embedding

    def set_image(self, image: np.ndarray, window: Union[str, tuple, Window, None] = "auto",
                  modality: Optional[str] = None) -> None:
        """Window ``image`` (H, W) or (H, W, C) and make it the current slice.

        A slice seen before with the same window and model is not encoded
        again (memory cache, then disk cache).

        Parameters
        ----------
        image : ndarray
            One slice in array order (y, x) or (y, x, C).
        window : str, (level, width), Window or None
            ``"auto"`` (the family's own preprocessing), ``"none"``, a preset
            name, a level/width pair or a ready :class:`Window` (the CLI
            computes one per volume so that every slice gets the same mapping).
        modality : str, optional
            ``"CT"``/``"MR"`` when known (DICOM), for ``"auto"``.

        Examples
        --------
        >>> predictor.set_image(ct[30], window=Window(-160, 240))   # doctest: +SKIP
        """
        t0 = time.perf_counter()
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
            raise SamlabError(f"set_image needs one 2D slice (y, x) or (y, x, C), got an array of shape {image.shape}: "
                              "pass volume[z] for a volume")
        win = resolve_window(window, image, self.model, modality)
        # an accelerated encoder gives (slightly) different embeddings: own keys
        model_key = self.model.fingerprint()
        backend = getattr(self.model, "encoder_backend", "torch")
        if backend != "torch":
            model_key += f"+{backend}"
        key = embedding_key(image, win.key() if win is not None else "none", model_key)
        emb = self._memory.get(key)
        if emb is not None:
            self.memory_hits += 1
        else:
            disk = self._disk  # one read: configure() may swap it from another thread
            emb = disk.get(key) if disk is not None else None
            if emb is not None:
                self.disk_hits += 1
            else:
                emb = self.model.encode(apply_window(image, win))
                self.encoder_calls += 1
                if disk is not None:
                    disk.put(key, emb)
            self._memory.put(key, emb)
            # as the cache holds it (float16-rounded in that mode): a slice
            # gives the same masks whether fresh or a later hit
            cached = self._memory.get(key)
            emb = cached if cached is not None else emb
        self._embedding = emb
        self._shape = tuple(image.shape[:2])
        self.window = win
        self.key = key
        self.last_set_image_ms = (time.perf_counter() - t0) * 1000.0

    def reset_image(self) -> None:
        """Forget the current slice (the caches are kept)."""
        self._embedding = None
        self._shape = None
        self.key = None

    def clear_cache(self) -> None:
        """Drop every in-memory embedding (the disk cache is kept)."""
        self._memory.clear()

    def predict(self, box=None, points: Optional[Sequence] = None, point_labels: Optional[Sequence] = None,
                mask_input=None, multimask: bool = False):
        """Segment the current slice; returns ``(mask, score)``.

        Parameters
        ----------
        box : (x0, y0, x1, y1), optional
            Array indices, corners inclusive.
        points : sequence of (x, y), optional
        point_labels : sequence of int, optional
            1 object, 0 background; all 1 when omitted.
        mask_input : ndarray, optional
            ``Prediction.low_res_logits`` of an earlier call (SAM only).
        multimask : bool
            Let SAM choose among its three masks by predicted IoU.

        Returns
        -------
        mask : ndarray of bool, (H, W)
        score : float

        Examples
        --------
        >>> mask, score = predictor.predict(points=[(120, 80)], point_labels=[1])   # doctest: +SKIP
        """
        pred = self.predict_prompt(Prompt(box, points, point_labels, mask_input, multimask))
        return pred.mask, pred.score

    def predict_prompt(self, prompt: Prompt) -> Prediction:
        """Like :meth:`predict` but takes a :class:`Prompt` and returns the whole :class:`Prediction`.

        Examples
        --------
        >>> pred = predictor.predict_prompt(Prompt(box=(10, 20, 60, 80)))   # doctest: +SKIP
        """
        if self._embedding is None:
            raise SamlabError("no slice is set: call set_image() before predict()")
        prompt = validate_prompt(prompt, self._shape)
        self.model.check_prompt(prompt, self._shape)
        return self.model.decode(self._embedding, prompt)


def validate_prompt(prompt: Prompt, shape: tuple) -> Prompt:
    """Check that ``prompt`` is well-formed and inside a slice of ``shape``.

    Used by :class:`SlicePredictor` and by the CLI (which checks before it
    spends time encoding).  Returns a normalised copy (plain floats, one
    label per point, labels 1 when omitted).

    Examples
    --------
    >>> validate_prompt(Prompt(points=[(3, 4)]), (10, 10)).point_labels
    [1]
    """
    h, w = shape[:2]
    where = f"outside the {w}×{h} slice: give x 0..{w - 1}, y 0..{h - 1}"
    box, points, labels = prompt.box, prompt.points, prompt.point_labels
    if box is not None:
        b = np.asarray(box, dtype=np.float64).ravel()
        if b.size != 4 or not np.all(np.isfinite(b)):
            raise SamlabError(f"a box needs four numbers x0 y0 x1 y1, got {box!r}")
        x0, y0, x1, y1 = b
        if x1 < x0 or y1 < y0:
            raise SamlabError(f"box {tuple(b.tolist())} is empty (x1 < x0 or y1 < y0): give the top-left corner first (x0 y0 x1 y1)")
        if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
            raise SamlabError(f"box {tuple(b.tolist())} is outside the image ({where})")
        box = tuple(v.item() if hasattr(v, "item") else v for v in np.asarray(box).ravel())
    if points is not None and len(points):
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        bad = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] > w - 1) | (p[:, 1] > h - 1) | ~np.isfinite(p).all(1)
        if bad.any():
            raise SamlabError(f"point {tuple(p[bad][0].tolist())} is outside the image ({where})")
        labels = [1] * len(p) if labels is None else [int(v) for v in labels]
        if len(labels) != len(p):
            raise SamlabError(f"{len(p)} points but {len(labels)} point labels: give one label (1 object, 0 background) per point")
        if any(v not in (0, 1) for v in labels):
            raise SamlabError(f"point labels must be 1 (object) or 0 (background), got {labels}")
        points = [tuple(q) for q in p.tolist()]
    else:
        points, labels = None, None
    return Prompt(box, points, labels, prompt.mask_input, prompt.multimask)
