"""What every segmentation engine provides to the predictor.

A *family* (classic, sam, medsam, litemedsam, samed, msa) turns one 2D
slice into an embedding once (``encode``) and then answers prompts against
that embedding cheaply (``decode``).  ``SlicePredictor`` owns caching and
windowing; families only implement their upstream pipeline exactly.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


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

        With ``encoder_backend="torch"`` (the default) this is
        ``encoder(x)``, bit for bit the upstream computation.  Other backends
        (ONNX Runtime, OpenVINO) export the encoder once per weights and input
        shape, cache it on disk and run that instead: faster on CPU, but only
        equal to fp32 PyTorch within rounding, hence opt-in.
        """
        if self.encoder_backend == "torch" or self.device != "cpu":
            return encoder(x)
        accel = getattr(self, "_accelerated", None)
        if accel is None or accel.input_shape != tuple(x.shape):
            from .accel import accelerated_encoder

            accel = accelerated_encoder(encoder, tuple(x.shape), backend=self.encoder_backend,
                                        weights_key=self.fingerprint())
            self._accelerated = accel
        return accel(x)

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
