"""Intensity windowing: what the model sees and what the user sees.

A :class:`Window` is computed once per volume (so every slice of a CT gets
the same mapping, as the upstream volume pipelines do) and applied per
slice.  ``"auto"`` means the model family's own preprocessing
(CHECKPOINTS.md); named presets are the usual radiology level/width pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..errors import SamlabError

# level, width in HU
CT_PRESETS = {
    "ct-abdomen": (40.0, 400.0),
    "ct-lung": (-600.0, 1500.0),
    "ct-bone": (400.0, 1800.0),
    "ct-brain": (40.0, 80.0),
}
PRESET_NAMES = ("auto", "none", *CT_PRESETS, "mr")


@dataclass(frozen=True)
class Window:
    """Clip to [lo, hi] and map onto an output range.

    ``out="uint8"``: ``(x - lo) / (hi - lo) * 255`` truncated to uint8 (the
    MedSAM pipelines).  ``out="unit"``: the same in [0, 1] as float32 (SAMed's
    ``(x + 125) / 400``).  ``keep_zero``: voxels that were exactly 0 stay 0
    (MedSAM's MR pipeline).  ``name`` is for display only.
    """

    lo: float
    hi: float
    out: str = "uint8"
    keep_zero: bool = False
    name: str = ""

    @property
    def level_width(self) -> tuple:
        return ((self.lo + self.hi) / 2.0, self.hi - self.lo)

    def key(self) -> str:
        """Stable text for cache keys."""
        return f"{float(self.lo)!r}:{float(self.hi)!r}:{self.out}:{int(self.keep_zero)}"


def apply_window(image: np.ndarray, window: Optional[Window]) -> np.ndarray:
    """Apply ``window`` to a slice (or volume); ``None`` returns it unchanged.

    Examples
    --------
    >>> apply_window(np.array([-1000, 40, 1000]), Window(-160, 240))
    array([  0, 127, 255], dtype=uint8)
    """
    if window is None:
        return image
    x = np.clip(image.astype(np.float64, copy=False), window.lo, window.hi)
    span = window.hi - window.lo
    x = (x - window.lo) / span if span > 0 else np.zeros_like(x)
    if window.out == "uint8":
        x = x * 255.0
    if window.keep_zero:
        x[image == 0] = 0
    if window.out == "uint8":
        return x.astype(np.uint8)
    return x.astype(np.float32)


def guess_modality(image: np.ndarray, modality: Optional[str] = None) -> str:
    """``"CT"``, ``"MR"`` or ``"natural"`` (photos, histology, microscopy).

    Uses the DICOM modality when known, else the values: CT stores HU with
    air near -1000; a 3D non-negative volume is taken as MR.
    """
    if modality:
        m = modality.upper()
        if m in ("CT", "MR"):
            return m
    if image.size and np.issubdtype(image.dtype, np.number):
        if not np.issubdtype(image.dtype, np.uint8) and float(np.min(image)) < -500:
            return "CT"
        if image.ndim == 3 and image.shape[-1] not in (3, 4):
            return "MR"
    return "natural"


def percentile_window(image: np.ndarray, lo_pct=0.5, hi_pct=99.5, out="uint8", keep_zero=True) -> Window:
    """Percentiles of the non-zero voxels (MedSAM's MR recipe)."""
    vals = image[image > 0] if keep_zero else image
    if vals.size == 0:
        vals = image.ravel()
    lo, hi = np.percentile(vals, [lo_pct, hi_pct]) if vals.size else (0.0, 1.0)
    # upstream min-max of the clipped data: equal to the percentiles unless
    # the data never reaches them
    lo = max(float(lo), float(np.min(image))) if image.size else float(lo)
    hi = min(float(hi), float(np.max(image))) if image.size else float(hi)
    return Window(lo, hi, out, keep_zero, "mr")


def ct_window(image: np.ndarray, level: float, width: float, out="uint8", name="") -> Window:
    """Clip to level ± width/2, then min-max of the clipped data (pre_CT_MR.py)."""
    lo, hi = level - width / 2.0, level + width / 2.0
    if image.size:
        lo = max(lo, float(np.min(image)))
        hi = min(hi, float(np.max(image)))
    return Window(lo, hi, out, False, name)


def default_auto_window(image: np.ndarray, modality: Optional[str] = None) -> Optional[Window]:
    """The shared ``window="auto"`` preprocessing (families may declare their own).

    CT level 40 width 400 and MR 0.5–99.5 percentiles, to uint8 (MedSAM's
    recipe).  Natural 8-bit images pass through unchanged; other natural
    images (16-bit microscopy) get a percentile window.

    Examples
    --------
    >>> default_auto_window(np.array([[-1000, 40], [400, 1000]], np.int16)).name
    'ct-abdomen'
    """
    kind = guess_modality(image, modality)
    if kind == "CT":
        return ct_window(image, 40.0, 400.0, "uint8", "ct-abdomen")
    if kind == "MR":
        return percentile_window(image)
    if image.dtype == np.uint8:
        return None
    return percentile_window(image, 0.5, 99.5, "uint8", keep_zero=False)


def resolve_window(window: Union[str, tuple, Window, None], image: np.ndarray, model=None,
                   modality: Optional[str] = None) -> Optional[Window]:
    """Turn what the user asked for into a :class:`Window` (or None).

    ``window`` may be ``"auto"``, ``"none"``, a preset name, a
    ``(level, width)`` pair or a ready :class:`Window`.  ``image`` is the
    whole volume where there is one, so every slice gets the same mapping.
    """
    if window is None or isinstance(window, Window):
        return window
    if isinstance(window, (tuple, list)):
        if len(window) != 2 or float(window[1]) <= 0:
            raise SamlabError(f"window level/width {window!r} is not valid: give a level and a positive width, e.g. --window-level 40 400")
        level, width = float(window[0]), float(window[1])
        return Window(level - width / 2, level + width / 2, "uint8", False, f"L{level:g}/W{width:g}")
    name = str(window).lower()
    if name == "none":
        return None
    if name == "auto":
        if model is not None:
            return model.auto_window(image, modality)
        return default_auto_window(image, modality=modality)
    if name in CT_PRESETS:
        level, width = CT_PRESETS[name]
        return Window(level - width / 2, level + width / 2, "uint8", False, name)
    if name == "mr":
        return percentile_window(image)
    raise SamlabError(f"unknown window {window!r}: use one of {', '.join(PRESET_NAMES)} or --window-level L W")
