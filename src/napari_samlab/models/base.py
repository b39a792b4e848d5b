"""What every segmentation engine provides to the predictor.

A *family* (classic, sam, medsam, litemedsam, samed, msa) turns one 2D
slice into an embedding once (``encode``) and then answers prompts against
that embedding cheaply (``decode``).  ``SlicePredictor`` owns caching and
windowing; families only implement their upstream pipeline exactly.

Encodes can be made stoppable: inside ``with cancellable(event):`` an encode
raises :class:`napari_samlab.errors.Cancelled` once ``event`` is set (the
background prefetch and propagation's Cancel use this so that the user's
next action does not wait for a slow encode to finish).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..base.cancel import current_cancel_event, raise_if_cancelled
from ..base.prompts import Prompt, validate_prompt

@dataclass
class Prediction:
    """Result of one decode.

    ``mask`` is bool (H, W) for prompt families; for SAMed (no prompt,
    several organ classes) ``labels`` holds the uint8 class map and ``mask``
    is ``labels > 0``.  ``score`` is the model's own quality estimate
    (predicted IoU; 1.0 where the family has none).
    """

    mask: np.ndarray
    score: float
    low_res_logits: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)


class SegmentationModel(abc.ABC):
    """Base class of every engine.

    Attributes set by subclasses:
    ``family`` (str), ``needs_prompt`` (False for SAMed),
    ``supports_points``, ``supports_boxes``, ``supports_mask_input`` (bool),
    ``num_classes`` (1 for prompt families), ``image_size`` (model input side,
    0 for classic), ``device`` (``"cpu"`` or ``"cuda"``), ``parallel_steps``
    (True when ``propagate_step`` is a pure function of its arguments and
    ``encode`` may run in several threads at once, so propagation may encode
    and step the up and down runs' next slices at once).
    ``encoder_backend`` is the requested backend (see :meth:`run_encoder`),
    ``last_encoder_backend`` the one the latest encode really ran (None
    before the first; ``"auto"`` resolved).
    """

    family: str = ""
    needs_prompt: bool = True
    supports_points: bool = True
    supports_boxes: bool = True
    supports_mask_input: bool = False
    parallel_steps: bool = False
    num_classes: int = 1
    image_size: int = 0
    device: str = "cpu"
    # "torch" (upstream arithmetic, the default) or an accelerated backend of
    # models/accel.py; set by load_model(encoder_backend=...)
    encoder_backend: str = "torch"
    last_encoder_backend: Optional[str] = None

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Stable hash of the weights and configuration (cache key part)."""

    def auto_window(self, image: np.ndarray, modality: Optional[str] = None):
        """The family's own intensity preprocessing for ``window="auto"``.

        Returns a :class:`napari_samlab.base.windowing.Window` computed from
        ``image`` (a slice or a whole volume), or None for "use as is": the
        family's declared ``auto_window`` (``models/families/``), else the
        shared default.
        """
        from ..base.windowing import default_auto_window
        from .families import family_of

        fam = family_of(self)
        if fam is not None and fam.auto_window is not None:
            return fam.auto_window(image, modality)
        return default_auto_window(image, modality=modality)

    def run_encoder(self, encoder, x):
        """Run the family's image encoder on a ready input tensor.

        ``encoder_backend`` picks how:

        * ``"torch"``: ``encoder(x)``, bit for bit the upstream computation;
        * ``"auto"``, ``"openvino"``, ``"onnxruntime"`` (and their ``-int8``
          forms): on the CPU, the encoder exported once per weights and input
          shape, cached on disk (models/accel.py); ``"auto"`` takes the
          fastest export whose output, checked against PyTorch fp32 when it
          is exported, is within a relative error of 1e-3 (about 1e-6
          measured: benchmarks/bench_encoder_fidelity.py), else torch.  Exports run on the CPU only: on a GPU these all mean
          PyTorch fp32;
        * ``"torch-autocast"`` (approximate, opt-in): PyTorch under autocast,
          float16 on CUDA, bfloat16 on the CPU, float32 out.

        Inside a :func:`cancellable` block the encode raises
        :class:`~napari_samlab.errors.Cancelled` when its event is set before
        or during it (see there).

        Parameters
        ----------
        encoder : torch.nn.Module
            The family's image encoder.
        x : torch.Tensor
            Its input, ``(1, 3, S, S)`` float32 on the model's device.

        Returns
        -------
        torch.Tensor
            The embedding (float32).

        Examples
        --------
        >>> emb = model.run_encoder(model.net.image_encoder, x)   # doctest: +SKIP
        >>> model.last_encoder_backend                           # doctest: +SKIP
        'openvino'
        """
        cancel = current_cancel_event()
        raise_if_cancelled(cancel)
        backend = self._effective_backend()
        if backend == "torch":
            out = encoder(x)  # cannot stop mid-forward: checked before and after
            self.last_encoder_backend = "torch"
            raise_if_cancelled(cancel)
            return out
        accel = self._accelerator(encoder, tuple(x.shape), backend)
        out = accel(x, cancel=cancel)
        self.last_encoder_backend = accel.backend
        return out

    def _effective_backend(self) -> str:
        if self.device != "cpu" and self.encoder_backend != "torch-autocast":
            return "torch"  # exported encoders are CPU-only; fp32 PyTorch is the fast path on a GPU
        return self.encoder_backend

    def _accelerator(self, encoder, shape: tuple, backend: str):
        """The :class:`~napari_samlab.models.accel.AcceleratedEncoder` for ``encoder`` (made once per backend and shape)."""
        accel = getattr(self, "_accelerated", None)
        want = (backend, tuple(shape), id(encoder))
        if accel is None or getattr(self, "_accelerated_for", None) != want:
            from .accel import accelerated_encoder, spill_weights

            accel = accelerated_encoder(encoder, tuple(shape), backend=backend, weights_key=self.fingerprint())
            self._accelerated, self._accelerated_for = accel, want
            if accel.cache_path is not None and not getattr(encoder, "_samlab_spilled", False):
                # an export runs: PyTorch's copy of the weights can leave the resident set
                encoder._samlab_spilled = spill_weights(encoder)
        return accel

    def image_encoder_module(self):
        """The family's image encoder (``torch.nn.Module``), or None for engines without one.

        Found as ``self.net.image_encoder``, ``self.sam.image_encoder`` or
        ``self.encoder``; families laid out otherwise override this.
        """
        for holder in ("net", "sam"):
            enc = getattr(getattr(self, holder, None), "image_encoder", None)
            if enc is not None:
                return enc
        return getattr(self, "encoder", None)

    def encoder_in_use(self) -> Optional[str]:
        """The backend the next encode runs on (``"auto"`` resolved), or None without an image encoder.

        Resolving ``"auto"`` loads (or, the first time for these weights,
        exports and verifies) the exported encoder, as the first encode
        would; it does not run the encoder.  Embedding cache keys include
        this, so an embedding made with one backend is never served to
        another.

        Examples
        --------
        >>> load_model("medsam.pth", family="medsam").encoder_in_use()   # doctest: +SKIP
        'openvino'
        """
        encoder = self.image_encoder_module()
        if encoder is None:
            return None
        backend = self._effective_backend()
        if backend in ("torch", "torch-autocast") or not self.image_size:
            return backend
        return self._accelerator(encoder, (1, 3, int(self.image_size), int(self.image_size)), backend).backend

    @abc.abstractmethod
    def encode(self, image: np.ndarray) -> dict:
        """Embed one windowed slice.

        ``image`` is (H, W) or (H, W, 3) as the windowing step produced it.
        Returns a dict of numpy arrays (at least what ``decode`` needs plus
        ``"original_size": np.array([H, W])``).  Must be deterministic.
        """

    @abc.abstractmethod
    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        """Answer a prompt against an embedding from :meth:`encode`."""

    def check_prompt(self, prompt: Prompt, shape: tuple) -> None:
        """Raise :class:`~napari_samlab.errors.PromptError` if this engine cannot use ``prompt``.

        The same check :class:`~napari_samlab.predict.predictor.SlicePredictor`,
        the CLI and propagation run (:func:`napari_samlab.base.prompts.validate_prompt`).
        """
        validate_prompt(prompt, shape, self)


def encoder_report(model) -> dict:
    """What computes ``model``'s embeddings: backend, precision, device, and how it was checked.

    Parameters
    ----------
    model : SegmentationModel

    Returns
    -------
    dict
        ``backend`` (resolved; ``"none"`` for engines without an image
        encoder), ``requested``, ``precision`` (``fp32``, ``int8``,
        ``fp16``/``bf16``, ``none``), ``device``, ``exported`` (bool),
        ``verify_error`` (max relative error against PyTorch fp32 measured
        when the export was made, or None), ``tolerance`` (what an exact
        export must meet) and ``summary`` (one line).

    Examples
    --------
    >>> encoder_report(load_model(family="classic"))["summary"]   # doctest: +SKIP
    'encoder: none (classic engine, no image encoder)'
    """
    from .backends import EXACT_RTOL, backend_precision

    device = getattr(model, "device", "cpu")
    used = getattr(model, "last_encoder_backend", None)
    if used is None and hasattr(model, "encoder_in_use"):
        used = model.encoder_in_use()
    if used is None:
        fam = getattr(model, "family", "") or "this"
        return {"backend": "none", "requested": None, "precision": "none", "device": device, "exported": False,
                "verify_error": None, "tolerance": None,
                "summary": f"encoder: none ({fam} engine, no image encoder)"}
    accel = getattr(model, "_accelerated", None)
    exported = accel is not None and accel.cache_path is not None and accel.backend == used
    err = accel.verify_error if exported else None
    precision = backend_precision(used, device)
    if exported:
        how = ("exported, checked against PyTorch fp32 at relative tolerance "
               f"{EXACT_RTOL:g}" + (f": measured {err:.1e}" if err is not None else ""))
    elif used == "torch":
        how = "upstream PyTorch"
    else:
        how = "approximate"
    return {"backend": used, "requested": getattr(model, "encoder_backend", None), "precision": precision,
            "device": device, "exported": exported, "verify_error": err, "tolerance": EXACT_RTOL if exported else None,
            "summary": f"encoder: {used} {precision} on {device} ({how})"}


def embedding_tensor(arr, device: str = "cpu"):
    """A cached or fresh embedding array as a torch tensor that torch owns.

    ``torch.from_numpy`` shares numpy's buffer, whose alignment differs
    between an encoder's output and an array read back from the cache; CPU
    BLAS kernels (oneDNN, MKL) may sum in another order for another
    alignment, so the decoder's scores could differ in the last bits for the
    same embedding.  A copy into torch's own (64-byte aligned) memory makes
    a cache hit decode exactly as a fresh encode does.

    Examples
    --------
    >>> t = embedding_tensor(np.ones((1, 4), np.float32))   # doctest: +SKIP
    >>> t.data_ptr() % 64                                   # doctest: +SKIP
    0
    """
    import torch

    src = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    out = torch.empty(src.shape, dtype=torch.float32, device=device)
    out.copy_(src)
    return out
