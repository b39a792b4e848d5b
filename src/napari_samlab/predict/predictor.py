"""SlicePredictor: embed a slice once, answer many prompts cheaply."""
from __future__ import annotations

import time
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import SamlabError
from ..models.base import Prediction, Prompt, SegmentationModel
from .cache import DiskCache, MemoryCache, embedding_key
from .windowing import Window, apply_window, resolve_window


class SlicePredictor:
    """``set_image`` then ``predict``, like segment_anything's SamPredictor.

    Embeddings are cached in memory (float32, least recently used evicted
    beyond ``memory_mb``) and, with ``cache_dir``, on disk (zarr; float16
    by default, so a disk hit is float16-rounded: see
    :mod:`napari_samlab.predict.cache`).  Keys are the SHA-1 of the slice's
    pixels, the window and the model fingerprint.

    Parameters
    ----------
    model : SegmentationModel
        From :func:`napari_samlab.load_model`.
    memory_mb : float
        Bound of the in-memory embedding cache.
    cache_dir : path, optional
        On-disk embedding cache that survives restarts.
    disk_dtype : {"float16", "float32"}
        Storage type of the on-disk cache.

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
    """

    def __init__(self, model: SegmentationModel, memory_mb: float = 1024, cache_dir=None,
                 disk_dtype: str = "float16"):
        self.model = model
        self.memory_mb = float(memory_mb)
        self.cache_dir = cache_dir
        self._memory = MemoryCache(memory_mb)
        self._disk = DiskCache(cache_dir, disk_dtype) if cache_dir is not None else None
        self._embedding: Optional[dict] = None
        self._shape: Optional[tuple] = None
        self.window: Optional[Window] = None
        self.key: Optional[str] = None
        self.encoder_calls = 0
        self.memory_hits = 0
        self.disk_hits = 0
        self.last_set_image_ms = 0.0

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
            emb = self._disk.get(key) if self._disk is not None else None
            if emb is not None:
                self.disk_hits += 1
            else:
                emb = self.model.encode(apply_window(image, win))
                self.encoder_calls += 1
                if self._disk is not None:
                    self._disk.put(key, emb)
            self._memory.put(key, emb)
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
