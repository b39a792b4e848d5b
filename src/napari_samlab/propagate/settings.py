"""What propagation is asked to do (:class:`PropagationSettings`) and what it gives back (:class:`PropagationResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional

import numpy as np

from ..base.windowing import Window
from .quality import SliceRecord

@dataclass
class PropagationSettings:
    """How propagation prompts the next slice, when it stops and what it flags.

    The defaults were chosen by measurement with ``benchmarks/eval_propagation.py``
    (one box on the middle slice; oracle segmenter and classic engine) on
    Colin27 (T1 MRI, 1 mm slices, brain mask, z=4..155) and lung2 (chest
    CT, 5 mm slices, tumour, z=15..25):

    * true neighbour slices: brain IoU >= 0.51 and area ratio <= 1.96 away
      from the last 3 slices at each end (the ends shrink to a few pixels);
      tumour IoU >= 0.34 and area ratio <= 2.85 at 5 mm.  ``stop_min_iou=0.2``
      and ``stop_area_factor=3.0`` therefore never stop inside a real
      object, and a mask that shrinks inside its previous outline (the
      object ending) is never stopped by them at all;
    * with the "box"/"box+mask" strategies the classic engine, where it
      loses the object, either flips to the surrounding tissue (lung2 above
      the tumour: the box fills with air, mean windowed intensity 0.5 ->
      0.05) or spreads into neighbours (IoU < 0.2, area x2-3):
      ``stop_intensity_change=0.2`` and the IoU / area rules end the run
      there; with the oracle (which never leaks) none of them fires before
      the object's true end.  The classic default "track" returns an empty
      mask where the object ends (``max_empty`` ends the run); above the
      lung2 tumour ``stop_min_iou`` ends it one slice after the truth;
    * ``max_empty=1``: on both volumes the object never vanishes for a slice
      and comes back; a 2nd try with MedSAM's anchor-box fallback only
      re-found neighbouring tissue;
    * ``box_margin=5`` pixels: MedSAM's script adds a few pixels at 256 px
      (about 5 at 512); the oracle needs >= 2 to follow growth;
    * the flag thresholds (looser than the stop thresholds) flag slices
      where the neighbour IoU or area change is outside what the true masks
      do, plus every run end (``stopped_here``/``edge``).

    Parameters
    ----------
    strategy : str, optional
        ``"box"``, ``"points"``, ``"mask"`` or a ``+`` combination such as
        ``"box+mask"``; or ``"track"``, the model's own step
        (``model.propagate_step(embedding, prev_mask, prev_stats)``, the
        classic engine); None uses the family default
        (the family's ``propagation_strategy``, ``models/families/``).  A mask prompt is always sent with one
        point at the mask's deepest pixel unless a box or points go with it,
        because SAM-style decoders need a sparse prompt.
    box_margin : int
        Pixels added around the previous mask's bounding box (then clipped
        to the slice).
    n_points : int
        Positive points per slice for the "points" strategy (one per large
        component, at the maximum of the distance transform).
    z_min, z_max : int, optional
        Slices outside ``[z_min, z_max]`` are never visited.
    stop_slices : set of int
        Slices marked "stop": no run enters them.
    max_empty : int
        A run ends when the object is absent on this many consecutive slices.
        While fewer, the next slice is prompted with the anchor's own box
        (MedSAM's fallback).
    min_area : int
        Masks with fewer pixels count as empty (specks).
    stop_min_iou : float
        End a run when IoU with the previous kept slice falls below this.
    stop_area_factor : float
        End a run when the area grows or shrinks by more than this factor.
    stop_min_score : float
        End a run when the model's score falls below this (scores are on the
        family's own scale; 0 disables the rule).
    stop_intensity_change : float
        End a run when the mean intensity inside the mask (windowed, as a
        fraction of the window's range) moves by more than this from the
        previous kept slice: the model jumped to another tissue (e.g. from
        a tumour into the air around it).  0 disables the rule.
    stop_growth_factor : float
        End a run when the area exceeds the largest area the run has seen
        (anchor included) by this factor; 0 disables it (experimental: meant
        for engines that spread into neighbours slowly).
    flag_min_iou, flag_area_factor, flag_min_score, flag_intensity_change : float
        Looser thresholds that only flag a kept slice for review.
    spacing : tuple of 3 floats, optional
        Voxel size along (slice, row, column) of the volume as propagated, in
        mm (``Image.spacing`` is (x, y, z): reverse it for a (Z, Y, X)
        array).  On thick slices (slice spacing several times the pixel
        size) an object moves and grows more from one slice to the next, so
        the classic engine's step lets it move further (the generic IoU /
        area rules stay as they are: loosened by the ratio, they let the
        lung2 tumour run 4 slices past its end).  None: unknown, treated as
        isotropic.

    Examples
    --------
    >>> s = PropagationSettings(z_min=10, z_max=40, stop_slices={25})
    >>> s.with_(max_empty=3).max_empty
    3
    """

    strategy: Optional[str] = None
    box_margin: int = 5
    n_points: int = 1
    z_min: Optional[int] = None
    z_max: Optional[int] = None
    stop_slices: set = field(default_factory=set)
    max_empty: int = 1
    min_area: int = 0
    stop_min_iou: float = 0.2
    stop_area_factor: float = 3.0
    stop_min_score: float = 0.0
    stop_intensity_change: float = 0.2
    stop_growth_factor: float = 0.0
    flag_min_iou: float = 0.6
    flag_area_factor: float = 1.6
    flag_min_score: float = 0.0
    flag_intensity_change: float = 0.1
    spacing: Optional[tuple] = None

    def slice_ratio(self) -> float:
        """Slice spacing over the mean pixel size (1.0 when unknown).

        Examples
        --------
        >>> PropagationSettings(spacing=(6.5, 0.78125, 0.78125)).slice_ratio()
        8.32
        """
        if not self.spacing:
            return 1.0
        dz, dy, dx = (float(v) for v in self.spacing)
        if not all(v > 0 and np.isfinite(v) for v in (dz, dy, dx)):
            return 1.0
        return dz / (0.5 * (dy + dx))

    def with_(self, **changes) -> "PropagationSettings":
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class PropagationResult:
    """The mask volume and what propagation learned on the way.

    Attributes
    ----------
    mask : ndarray of bool, (Z, Y, X)
    records : dict int -> SliceRecord
        One per visited slice that was kept.
    stops : list of StopInfo
        Why each run ended.
    anchors : dict int -> Prompt or ndarray
        Prompts and painted/corrected masks used as anchors.
    settings : PropagationSettings
    window : Window or None
        The window resolved once on the volume (reused by re-propagation).
    strategy : str
        The strategy used.
    labels : ndarray of uint8 or None
        Class map for prompt-free families (SAMed).
    cancelled : bool
        True when ``cancel()`` ended propagation early.
    encoder_calls : int
        Slices encoded during this call (the rest came from the cache).
    memory : MemorySession or None
        For families with SAM 2's memory (``strategy == "memory"``): the
        session that tracked the object; re-propagation continues with it.

    Examples
    --------
    >>> res = propagate_from_prompt(predictor, vol, 30, Prompt(box=(40, 50, 90, 120)))  # doctest: +SKIP
    >>> res.flagged_slices(), res.next_flagged(30)                                      # doctest: +SKIP
    ([18, 41], 41)
    """

    mask: np.ndarray
    records: Dict[int, SliceRecord]
    stops: list
    anchors: dict
    settings: PropagationSettings
    window: Optional[Window] = None
    strategy: str = ""
    labels: Optional[np.ndarray] = None
    cancelled: bool = False
    encoder_calls: int = 0
    memory: Optional[object] = field(default=None, repr=False, compare=False)

    def flagged_slices(self) -> list:
        """Sorted slices whose record carries any flag."""
        return sorted(z for z, r in self.records.items() if r.flags)

    def next_flagged(self, z: int, step: int = 1, wrap: bool = True) -> Optional[int]:
        """The next flagged slice after ``z`` (``step=-1``: before), or None.

        With ``wrap`` the search continues from the other end.
        """
        flagged = self.flagged_slices()
        if not flagged:
            return None
        if step >= 0:
            after = [f for f in flagged if f > z]
            return after[0] if after else (flagged[0] if wrap else None)
        before = [f for f in flagged if f < z]
        return before[-1] if before else (flagged[-1] if wrap else None)

    def _outer_stops(self) -> dict:
        """``{"down": StopInfo, "up": StopInfo}`` of the two outermost runs."""
        out = {}
        if self.anchors:
            lo, hi = min(self.anchors), max(self.anchors)
            for s in self.stops:
                if s.direction == "down" and s.start == lo:
                    out["down"] = s
                if s.direction == "up" and s.start == hi:
                    out["up"] = s
        return out

    @property
    def stop_reasons(self) -> dict:
        """``{"down": reason, "up": reason}`` of the two outermost runs."""
        return {k: s.reason for k, s in self._outer_stops().items()}

    @property
    def stop_details(self) -> dict:
        """The model's own reasons (``StopInfo.detail``) where the outermost
        runs have one, e.g. ``{"down": "depth limit"}``."""
        return {k: s.detail for k, s in self._outer_stops().items() if s.detail}

    def z_extent(self) -> Optional[tuple]:
        """``(first, last)`` slice holding any object voxel, or None."""
        zs = np.flatnonzero(self.mask.reshape(self.mask.shape[0], -1).any(1))
        return (int(zs[0]), int(zs[-1])) if zs.size else None
