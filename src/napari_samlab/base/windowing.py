"""Intensity windowing: what the model sees and what the user sees.

A :class:`Window` is computed once per volume (so every slice of a CT gets
the same mapping, as the upstream volume pipelines do) and applied per
slice.  ``"auto"`` means the model family's own preprocessing
(CHECKPOINTS.md); named presets are the usual radiology level/width pairs.
"""
from __future__ import annotations

import re
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
    if image.dtype.kind in "fc":
        np.copyto(x, window.lo, where=np.isnan(x))  # no data (NaN outside the brain, the FOV): the window's bottom
    span = window.hi - window.lo
    x = (x - window.lo) / span if span > 0 else np.zeros_like(x)
    if window.out == "uint8":
        x = x * 255.0
    if window.keep_zero:
        x[image == 0] = 0
    if window.out == "uint8":
        return x.astype(np.uint8)
    return x.astype(np.float32)


@dataclass(frozen=True)
class ModalityGuess:
    """What the image is and how that was decided (shown to the user).

    ``kind``: ``"CT"``, ``"MR"`` or ``"natural"``.  ``source``: where that
    came from, e.g. ``"DICOM Modality"``, ``"header description"`` or
    ``"intensities: ..."``.  ``hu_offset``: what stored values add to
    Hounsfield units (1024 for CT stored unsigned as HU + 1024, else 0).
    """

    kind: str
    source: str
    hu_offset: float = 0.0


_CT_WORDS = re.compile(r"(\bCT\b|\bCTA\b|computed tomograph|\bHU\b|hounsfield|\bPET[/-]CT\b)", re.I)
_MR_WORDS = re.compile(r"(\bMRI?\b|\bT1w?\b|\bT2w?\b|\bFLAIR\b|\bDWI\b|magnetic reson|\bMPRAGE\b)", re.I)


def modality_from_metadata(metadata: Optional[dict]) -> tuple:
    """``(kind, source)`` from what the file says about itself, or ``(None, "")``.

    DICOM's Modality tag first; then header descriptions (NIfTI
    ``descrip``/``intent_name``, NRRD ``content``, series descriptions) that
    name CT or MR.

    Examples
    --------
    >>> modality_from_metadata({"modality": "CT"})
    ('CT', 'DICOM Modality')
    >>> modality_from_metadata({"header_text": "descrip: abdomen CT 5mm"})
    ('CT', 'header description')
    >>> modality_from_metadata({})
    (None, '')
    """
    meta = metadata or {}
    m = str(meta.get("modality") or "").strip().upper()
    if m in ("CT", "MR"):
        return m, "DICOM Modality"
    text = " ".join(str(meta.get(k) or "") for k in ("header_text", "series_description", "description"))
    ct, mr = bool(_CT_WORDS.search(text)), bool(_MR_WORDS.search(text))
    if ct != mr:  # both or neither: the text does not decide
        return ("CT" if ct else "MR"), "header description"
    return None, ""


def finite_values(image: np.ndarray) -> np.ndarray:
    """``image`` itself, or its finite values (1D) when it holds NaN or infinite ones.

    Float volumes mark voxels without data as NaN (SPM, FSL: outside the
    brain or the field of view); statistics of the intensities skip them.

    Examples
    --------
    >>> finite_values(np.array([np.nan, 2.0, np.inf, 3.0]))
    array([2., 3.])
    """
    a = np.asarray(image)
    if a.dtype.kind in "fc":
        ok = np.isfinite(a)
        if not ok.all():
            return a[ok]
    return a


def _sample(image: np.ndarray, n: int = 1_000_000) -> np.ndarray:
    flat = np.asarray(image).ravel()
    return finite_values(flat[:: max(1, flat.size // n)].astype(np.float64, copy=False))


def _ct_offset(v: np.ndarray) -> float:
    """1024 when CT values are stored unsigned as HU + 1024 (no negatives, tissue above 1024), else 0."""
    if v.size and float(v.min()) >= 0 and float(v.max()) > 1024:
        return 1024.0
    return 0.0


def detect_modality(image: np.ndarray, modality: Optional[str] = None,
                    metadata: Optional[dict] = None) -> ModalityGuess:
    """CT, MR or natural image: from metadata first, the intensities only as a fallback.

    The intensity fallback tolerates cropped CT (no air in view: fat and soft
    tissue still give values below -50 HU over a range of hundreds of HU)
    and shifted CT (stored as HU + 1024: air near 0, soft tissue near 1024,
    bone above).  A 3D non-negative volume that fits neither is taken as MR.

    Parameters
    ----------
    image : ndarray
        The whole volume (or slice).
    modality : str, optional
        A modality already known (``"CT"``/``"MR"``), e.g. DICOM's.
    metadata : dict, optional
        ``Image.metadata`` (``modality``, ``header_text``...).

    Returns
    -------
    ModalityGuess

    Examples
    --------
    >>> detect_modality(np.array([[-1000, 40], [60, 1200]], np.int16)).kind
    'CT'
    >>> detect_modality(np.array([[[-120, 40], [60, 1200]]], np.int16)).source   # cropped volume: no air
    'intensities: fat/soft tissue values below -50 over a wide range (CT, cropped)'
    """
    kind, source = (str(modality).upper(), "given") if str(modality or "").upper() in ("CT", "MR") else (None, "")
    if kind is None:
        kind, source = modality_from_metadata(metadata)
    numeric = image.size and np.issubdtype(image.dtype, np.number) and not np.issubdtype(image.dtype, np.bool_)
    v = _sample(image) if numeric else np.zeros(0)
    if kind is not None:
        return ModalityGuess(kind, source, _ct_offset(v) if kind == "CT" else 0.0)
    if not v.size:
        return ModalityGuess("natural", "not numeric")
    lo, hi = float(v.min()), float(v.max())
    if lo < -500:
        return ModalityGuess("CT", "intensities: air near -1000 (CT in HU)")
    volume = image.ndim == 3 and image.shape[-1] not in (3, 4)
    if volume and lo < -50 and hi - lo > 400:  # volumes only: 2D float images may be background-subtracted
        return ModalityGuess("CT", "intensities: fat/soft tissue values below -50 over a wide range (CT, cropped)")
    if volume and lo >= 0 and hi > 1024 and np.all(v == np.round(v)):
        air = np.mean(v < 100)
        tissue = np.mean((v > 900) & (v < 1150))
        if air > 0.02 and tissue > 0.15:
            return ModalityGuess("CT", "intensities: air near 0 and soft tissue near 1024 (CT stored as HU + 1024)", 1024.0)
    if volume:
        return ModalityGuess("MR", "intensities: non-negative volume without CT values")
    return ModalityGuess("natural", "intensities: 2D image")


def guess_modality(image: np.ndarray, modality: Optional[str] = None) -> str:
    """``"CT"``, ``"MR"`` or ``"natural"`` (photos, histology, microscopy): :func:`detect_modality`'s kind."""
    return detect_modality(image, modality).kind


def describe_window(window: Optional["Window"], guess: Optional[ModalityGuess] = None) -> str:
    """One line for the user: the window applied and why (CLI stderr, widget status).

    Examples
    --------
    >>> describe_window(Window(-160.0, 240.0, name="ct-abdomen"), ModalityGuess("CT", "DICOM Modality"))
    'window ct-abdomen: level 40, width 400 (values clipped to [-160, 240]); image taken as CT (DICOM Modality)'
    >>> describe_window(None)
    'window none: pixel values as they are'
    """
    why = f"; image taken as {guess.kind} ({guess.source})" if guess is not None else ""
    if window is None:
        return "window none: pixel values as they are" + why
    level, width = window.level_width
    name = window.name or "manual"
    return (f"window {name}: level {level:g}, width {width:g} (values clipped to [{window.lo:g}, {window.hi:g}])"
            + why)


def percentile_window(image: np.ndarray, lo_pct=0.5, hi_pct=99.5, out="uint8", keep_zero=True,
                      signed: bool = False) -> Window:
    """Percentiles of the non-zero voxels (MedSAM's MR recipe).

    ``signed``: the tissue may be negative (MRI normalised to zero mean and
    unit variance, or stored with an offset): the percentiles are taken over
    the voxels that are neither 0 nor the volume's minimum (its background)
    instead of the positive ones, which would clip half the tissue to black.
    On non-negative images with a 0 background both are the same voxels.

    Examples
    --------
    >>> z = np.array([-3.0, -3.0, -1.0, 0.5, 2.0])   # background -3, tissue -1..2
    >>> percentile_window(z, 0, 100, "unit").lo, percentile_window(z, 0, 100, "unit", signed=True).lo
    (0.5, -1.0)
    """
    finite = finite_values(image)
    no_data = finite.size < np.size(image)  # NaN marks the background: the minimum is tissue
    image = finite
    if keep_zero and signed:
        vals = image[(image != 0) & ((image > np.min(image)) | no_data)] if image.size else image
    else:
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
    image = finite_values(image)
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
    guess = detect_modality(image, modality)
    kind, off = guess.kind, guess.hu_offset  # off: CT stored as HU + 1024
    if kind == "CT":
        return ct_window(image, 40.0 + off, 400.0, "uint8", "ct-abdomen")
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
        # presets are in HU: CT stored as HU + 1024 gets them shifted
        level, width = CT_PRESETS[name]
        level += detect_modality(image, modality).hu_offset
        return Window(level - width / 2, level + width / 2, "uint8", False, name)
    if name == "mr":
        return percentile_window(image)
    raise SamlabError(f"unknown window {window!r}: use one of {', '.join(PRESET_NAMES)} or --window-level L W")
