"""SlicePredictor: embed a slice once, answer many prompts cheaply."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import SamlabError
from ..base.prompts import Prompt, validate_prompt
from ..models.base import Prediction, SegmentationModel
from .cache import DEFAULT_MEMORY_MB, DiskCache, MemoryCache, _check_mb, _storage_dtype, embedding_key
from ..base.windowing import Window, apply_window, resolve_window


_KEEP = object()  # "leave this setting as it is" in SlicePredictor.configure


class SlicePredictor:
    """``set_image`` then ``predict``, like segment_anything's SamPredictor.

    Embeddings are cached in memory (least recently used evicted beyond
    ``memory_mb``) and, with ``cache_dir``, on disk (zarr); both keep what
    the encoder computed, bit for bit, unless reduced precision is asked
    for (``memory_dtype`` / ``disk_dtype="float16"``).  Keys are the SHA-1
    of the slice's pixels, the window and :meth:`engine_key` (package
    version, family, weights and checkpoint hashes, the encoder backend
    actually used and its precision, device, input size, storage type).

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
    disk_dtype : {"float32", "float16"}
        Storage type of the on-disk cache: ``"float32"`` (default) stores the
        embedding exactly; ``"float16"`` halves the disk use and rounds it
        (part of the key; fresh encodes are then rounded the same way, so a
        slice gives the same masks fresh or from the cache).
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
                 disk_dtype: str = "float32", memory_dtype: str = "float32"):
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
        self._counts_lock = threading.Lock()
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
                disk = DiskCache(target, disk_dtype)  # refuses folders it cannot or must not write to
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
        emb, key, win = self.embedding_for(image, window, modality)
        self._embedding = emb
        self._shape = tuple(image.shape[:2])
        self.window = win
        self.key = key
        self.last_set_image_ms = (time.perf_counter() - t0) * 1000.0

    def embedding_for(self, image: np.ndarray, window: Union[str, tuple, Window, None] = "auto",
                      modality: Optional[str] = None) -> tuple:
        """``image``'s embedding from the caches, or encoded and cached, without making it the current slice.

        What :meth:`set_image` does short of that last step.  Safe to call
        from several threads at once (the caches have their own locks;
        ``model.encode`` must be too, as a family with ``parallel_steps``
        declares), so propagation can encode two runs' next slices together.

        Returns
        -------
        (embedding, key, window)
            As the cache holds it (float16-rounded in that mode), its cache
            key and the :class:`Window` applied.

        Examples
        --------
        >>> emb, key, win = predictor.embedding_for(volume[31], window=win)   # doctest: +SKIP
        """
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
            raise SamlabError(f"set_image needs one 2D slice (y, x) or (y, x, C), got an array of shape {image.shape}: "
                              "pass volume[z] for a volume")
        win = resolve_window(window, image, self.model, modality)
        disk = self._disk  # one read: configure() may swap it from another thread
        key = embedding_key(image, win.key() if win is not None else "none", self.engine_key(disk))
        emb = self._memory.get(key)
        if emb is not None:
            self._count("memory_hits")
            return emb, key, win
        emb = disk.get(key) if disk is not None else None
        if emb is not None:
            self._count("disk_hits")
        else:
            emb = self.model.encode(apply_window(image, win))
            self._count("encoder_calls")
            if disk is not None:
                disk.put(key, emb)
                emb = disk.stored_form(emb)  # the same values a later disk hit gives
        self._memory.put(key, emb)
        # as the cache holds it (float16-rounded in that mode): a slice gives
        # the same masks whether fresh or a later hit
        cached = self._memory.get(key)
        return (cached if cached is not None else emb), key, win

    def _count(self, name: str) -> None:
        with self._counts_lock:
            setattr(self, name, getattr(self, name) + 1)

    def engine_key(self, disk=_KEEP) -> str:
        """What identifies the engine in embedding cache keys.

        Package version, family, the weights' fingerprint, the checkpoint
        files' SHA-256 (``model.checkpoint_sha256``, set by ``load_model``),
        the encoder backend that computes the embedding (``"auto"``
        resolved: loading, or the first time exporting, the exported encoder
        without running it) and its precision, the device, the model's input
        size and the disk storage type.  Change any of them and the slice is
        encoded again: an embedding made with one backend is never served to
        another.

        Returns
        -------
        str

        Examples
        --------
        >>> predictor.engine_key()                                  # doctest: +SKIP
        'samlab=0.1.0|family=medsam|weights=...|encoder=openvino/fp32|device=cpu|size=1024|storage=float32'
        """
        from .. import __version__
        from ..models.backends import backend_precision

        model = self.model
        disk = self._disk if disk is _KEEP else disk
        device = getattr(model, "device", "cpu")
        in_use = model.encoder_in_use() if hasattr(model, "encoder_in_use") else getattr(model, "encoder_backend", None)
        encoder = f"{in_use}/{backend_precision(in_use, device)}" if in_use is not None else "none"
        return "|".join([
            f"samlab={__version__}", f"family={getattr(model, 'family', '')}", f"weights={model.fingerprint()}",
            f"files={getattr(model, 'checkpoint_sha256', None) or '-'}", f"encoder={encoder}", f"device={device}",
            f"size={getattr(model, 'image_size', 0)}", f"storage={disk.storage if disk is not None else 'float32'}",
        ])

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
        prompt = validate_prompt(prompt, self._shape, self.model)
        return self.model.decode(self._embedding, prompt)
