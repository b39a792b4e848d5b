"""An oracle 2D segmenter for evaluating propagation logic (tests, benchmarks).

:class:`OracleModel` is a :class:`SegmentationModel` that knows the true
mask volume: asked about a slice, it answers with the true connected
component(s) that the prompt names.  With it, any loss of 3D Dice comes from
the propagation logic alone (prompting, stopping), not from a 2D model.  It
is not a model family and is never offered to users.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from ..models.base import Prediction, Prompt, SegmentationModel

__all__ = ["OracleModel"]


class OracleModel(SegmentationModel):
    """Answers every prompt with the truth's component(s) the prompt names.

    A box selects the components that overlap it, clipped to the box (as a
    real box-prompted model cannot see past its box); positive points select
    the components containing them; a ``mask_input`` (> 0 = object, full
    slice size, e.g. its own ``low_res_logits``) selects the components it
    overlaps.  Several prompts together must all agree (intersection of the
    selections; a box still clips).

    Parameters
    ----------
    volume : ndarray (Z, Y, X)
        The raw image volume (the oracle finds the slice by its content).
    truth : ndarray (Z, Y, X)
        True mask (> 0 = object).
    score : float
        The score it reports for a non-empty answer.
    family : str
        Reported family, so family defaults can be tested.

    Examples
    --------
    >>> vol = np.arange(2 * 8 * 8).reshape(2, 8, 8); truth = np.zeros((2, 8, 8), bool)
    >>> truth[1, 2:5, 2:5] = True
    >>> m = OracleModel(vol, truth)
    >>> e = m.encode(vol[1])
    >>> int(m.decode(e, Prompt(box=(0, 0, 3, 3))).mask.sum())
    4
    """

    needs_prompt = True
    supports_points = True
    supports_boxes = True
    supports_mask_input = True

    def __init__(self, volume: np.ndarray, truth: np.ndarray, score: float = 0.95, family: str = "oracle"):
        self.family = family
        self.truth = np.asarray(truth) > 0
        self.score = float(score)
        self._by_hash = {}
        for z in range(volume.shape[0]):
            self._by_hash.setdefault(self._hash(np.asarray(volume[z])), z)
        self.encoded = []  # z of every encode, to check caching

    @staticmethod
    def _hash(img: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()

    def fingerprint(self) -> str:
        return "oracle-" + hashlib.sha1(self.truth.tobytes()).hexdigest()[:8]

    def auto_window(self, image, modality: Optional[str] = None):
        # the oracle looks slices up by their raw values
        return None

    def encode(self, image: np.ndarray) -> dict:
        z = self._by_hash.get(self._hash(np.asarray(image)))
        if z is None:
            raise ValueError("the oracle was given a slice that is not in its volume (was a window applied?)")
        self.encoded.append(z)
        lab, n = ndi.label(self.truth[z])
        return {"labels": lab, "z": np.array(z), "original_size": np.array(lab.shape)}

    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        lab = embedding["labels"]
        H, W = lab.shape
        sel = None
        clip = np.ones((H, W), bool)

        def meet(ids):
            nonlocal sel
            sel = set(ids) if sel is None else sel & set(ids)

        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
            clip = np.zeros((H, W), bool)
            clip[y0:y1 + 1, x0:x1 + 1] = True
            meet(np.unique(lab[clip]))
        if prompt.points:
            labels = prompt.point_labels if prompt.point_labels is not None else [1] * len(prompt.points)
            ids = [lab[int(round(y)), int(round(x))] for (x, y), lb in zip(prompt.points, labels) if int(lb) == 1]
            if ids:
                meet(ids)
        if prompt.mask_input is not None:
            mi = np.asarray(prompt.mask_input) > 0
            if mi.shape == (H, W):
                meet(np.unique(lab[mi]))
        ids = [i for i in (sel or ()) if i > 0]
        mask = np.isin(lab, ids) & clip if ids else np.zeros((H, W), bool)
        logits = np.where(mask, 4.0, -4.0).astype(np.float32)
        return Prediction(mask=mask, score=self.score if mask.any() else 0.0, low_res_logits=logits)
