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
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

_cancel = threading.local()  # .event: the Event of the innermost cancellable() of this thread


@contextmanager
def cancellable(event: threading.Event) -> Iterator[threading.Event]:
    """Make the encodes started in this thread stoppable through ``event``.

    Inside the block, :meth:`SegmentationModel.run_encoder` raises
    :class:`~napari_samlab.errors.Cancelled` if ``event`` is set before the
    encode starts, stops an OpenVINO or ONNX Runtime inference within about
    50 ms of it being set, and checks it again after a PyTorch forward pass
    (PyTorch cannot stop in the middle of one).  The setting is per thread
    (another thread's encodes are not affected) and nests: the previous
    event is restored on exit.  Outside any block nothing changes.

    Parameters
    ----------
    event : threading.Event
        Set it from any thread (e.g. the GUI thread) to stop.

    Yields
    ------
    threading.Event
        ``event``.

    Examples
    --------
    >>> stop = threading.Event()
    >>> with cancellable(stop):                            # doctest: +SKIP
    ...     emb = model.encode(slice_)   # another thread may call stop.set()
    """
    previous = getattr(_cancel, "event", None)
    _cancel.event = event
    try:
        yield event
    finally:
        _cancel.event = previous


def current_cancel_event() -> Optional[threading.Event]:
    """The event of this thread's innermost :func:`cancellable` block, or None.

    Returns
    -------
    threading.Event or None

    Examples
    --------
    >>> current_cancel_event() is None
    True
    """
    return getattr(_cancel, "event", None)


def raise_if_cancelled(event: Optional[threading.Event] = None) -> None:
    """Raise :class:`~napari_samlab.errors.Cancelled` if the work was asked to stop.

    Parameters
    ----------
    event : threading.Event, optional
        Default: this thread's :func:`cancellable` event (no-op outside one).

    Raises
    ------
    Cancelled
        The event is set.

    Examples
    --------
    >>> stop = threading.Event()
    >>> with cancellable(stop):
    ...     raise_if_cancelled()          # not set: returns
    ...     stop.set()
    ...     raise_if_cancelled()
    Traceback (most recent call last):
    ...
    napari_samlab.errors.Cancelled: stopped on request
    """
    event = current_cancel_event() if event is None else event
    if event is not None and event.is_set():
        from ..errors import Cancelled

        raise Cancelled("stopped on request")


@dataclass
class Prompt:
    """Prompts in array indices of the slice: x = column, y = row.

    ``box`` is ``(x0, y0, x1, y1)``, corners inclusive.  ``points`` is a
    sequence of ``(x, y)`` with ``point_labels`` 1 (object) or 0
    (background).  ``mask_input`` is a previous low-res logit mask returned
    by the same family's ``decode`` (``Prediction.low_res_logits``).
    """

    box: Optional[tuple] = None
    points: Optional[Sequence[tuple]] = None
    point_labels: Optional[Sequence[int]] = None
    mask_input: Optional[np.ndarray] = None
    multimask: bool = False


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
    0 for classic), ``device`` (``"cpu"`` or ``"cuda"``).
    ``encoder_backend`` is the requested backend (see :meth:`run_encoder`),
    ``last_encoder_backend`` the one the latest encode really ran (None
    before the first; ``"auto"`` resolved).
    """

    family: str = ""
    needs_prompt: bool = True
    supports_points: bool = True
    supports_boxes: bool = True
    supports_mask_input: bool = False
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

        Returns a :class:`napari_samlab.predict.windowing.Window` computed from
        ``image`` (a slice or a whole volume), or None for "use as is".
        """
        from ..predict.windowing import default_auto_window

        return default_auto_window(image, self.family, modality)

    def run_encoder(self, encoder, x):
        """Run the family's image encoder on a ready input tensor.

        ``encoder_backend`` picks how:

        * ``"torch"``: ``encoder(x)``, bit for bit the upstream computation;
        * ``"auto"``, ``"openvino"``, ``"onnxruntime"`` (and their ``-int8``
          forms): on the CPU, the encoder exported once per weights and input
          shape, cached on disk (models/accel.py); ``"auto"`` takes the
          fastest export whose output matches PyTorch fp32 within rounding,
          else torch.  Exports run on the CPU only: on a GPU these all mean
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
        backend = self.encoder_backend
        if self.device != "cpu" and backend != "torch-autocast":
            backend = "torch"  # exported encoders are CPU-only; fp32 PyTorch is the fast path on a GPU
        if backend == "torch":
            out = encoder(x)  # cannot stop mid-forward: checked before and after
            self.last_encoder_backend = "torch"
            raise_if_cancelled(cancel)
            return out
        accel = getattr(self, "_accelerated", None)
        want = (backend, tuple(x.shape), id(encoder))
        if accel is None or getattr(self, "_accelerated_for", None) != want:
            from .accel import accelerated_encoder

            accel = accelerated_encoder(encoder, tuple(x.shape), backend=backend, weights_key=self.fingerprint())
            self._accelerated, self._accelerated_for = accel, want
            if accel.cache_path is not None and not getattr(encoder, "_samlab_spilled", False):
                # an export runs: PyTorch's copy of the weights can leave the resident set
                from .accel import spill_weights

                encoder._samlab_spilled = spill_weights(encoder)
        out = accel(x, cancel=cancel)
        self.last_encoder_backend = accel.backend
        return out

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
        """Raise SamlabError if this family cannot use ``prompt``."""
        from ..errors import SamlabError

        if not self.needs_prompt:
            return
        if prompt.box is None and not prompt.points:
            raise SamlabError(f"{self.family} needs a prompt: give a box (--box X0 Y0 X1 Y1) or a point (--point X Y)")
        if prompt.points and not self.supports_points:
            raise SamlabError(
                f"{self.family} was trained with boxes only and does not take points: "
                "draw a box around the object instead (--box X0 Y0 X1 Y1)"
            )
        if prompt.box is not None and not self.supports_boxes:
            raise SamlabError(f"{self.family} does not take boxes: click inside the object instead (--point X Y)")
